# QEMU and libvirt integration (passt/backends/qemu.py, contrib/, test/e2e/test_libvirt.py).
#
# The libvirt test uses libvirt's own passt backend, which Debian 12's
# libvirt 9.0.0 refuses (<backend type='passt'/> fails to parse): the
# libvirt of bookworm-backports (11.x) has it.  Only the libvirt packages
# are taken from there (backports have priority 100: nothing else moves),
# and only the daemon, its QEMU driver and virsh: the test runs its own
# libvirtd, in the test's network namespace and a private mount namespace,
# with its own configuration, so nothing of the system's libvirt is used.
#
# libvirt runs passt as the QEMU user (libvirt-qemu), who cannot reach the
# pyenv interpreter under /root: the test runs ours with Debian's python3,
# hence its numpy and pyroute2.

BACKPORTS_SOURCES := /etc/apt/sources.list.d/bookworm-backports.sources

APT_EXTRA_DEPS += libvirt-daemon/bookworm-backports \
	libvirt-daemon-driver-qemu/bookworm-backports \
	libvirt-clients/bookworm-backports \
	python3-numpy python3-pyroute2

$(BUILD)/.deps-stamp: $(BACKPORTS_SOURCES)

$(BACKPORTS_SOURCES):
	printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
		'Suites: bookworm-backports' 'Components: main' \
		'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > $@

.PHONY: check-libvirt
# The libvirt test alone (PASST_IMPL=upstream to run it against Debian's passt).
check-libvirt: deps
	$(PYTEST) -q -p no:cacheprovider test/e2e/test_libvirt.py
