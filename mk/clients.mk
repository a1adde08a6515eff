# Real clients for test/e2e/test_clients_2026.py: rootlesskit 2 from Debian's
# next suite (trixie), fetched with apt-get download through a private apt
# configuration under $(BUILD)/clients (the system's sources are not
# touched) and unpacked with dpkg-deb -x.  rootlesskit 2.0.2 runs on
# bookworm's C library; podman 5 does not (trixie's needs libc6 >= 2.38,
# bookworm has 2.36), so podman's command line is run by a harness instead.
# uidmap (newuidmap) comes from bookworm: rootlesskit maps subordinate IDs.

CLIENTS      := $(BUILD)/clients
CLIENTS_APT  := -o Dir::Etc::SourceList=$(abspath $(CLIENTS))/apt/sources.list \
	-o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$(abspath $(CLIENTS))/apt/lists \
	-o Dir::Cache=$(abspath $(CLIENTS))/apt/cache -o APT::Sandbox::User=root

APT_EXTRA_DEPS += uidmap

$(CLIENTS)/rootlesskit: | $(BUILD)/.deps-stamp
	mkdir -p $(CLIENTS)/apt/lists/partial $(CLIENTS)/apt/cache/archives/partial
	echo 'deb http://deb.debian.org/debian trixie main' > $(CLIENTS)/apt/sources.list
	apt-get $(CLIENTS_APT) update -qq
	cd $(CLIENTS) && apt-get $(CLIENTS_APT) download rootlesskit
	dpkg-deb -x $(CLIENTS)/rootlesskit_*.deb $(CLIENTS)/root
	ln -sf root/usr/bin/rootlesskit $@

.PHONY: clients
clients: $(CLIENTS)/rootlesskit
deps: $(CLIENTS)/rootlesskit
