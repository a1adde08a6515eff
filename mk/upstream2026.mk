# Upstream passt's release 2026_07_16, built from the reference tarball
# (/work/shared/tools/build-upstream.sh: gcc and make), for what Debian's 2023
# build lacks: its vhost-user back end is the reference of issue 22.
#   make upstream-2026                              build it into $(BUILD)/upstream-2026
#   PASST_IMPL=upstream2026 make check-vhost-user   our vhost-user cells against it
# `make bench` compares ours over vhost-user with it when it is built (and says
# so when it is not).

UPSTREAM_BUILD_SCRIPT ?= /work/shared/tools/build-upstream.sh

.PHONY: upstream-2026 check-vhost-user

upstream-2026: $(BUILD)/upstream-2026/passt

# build-essential only here: `make check` does not need it.
$(BUILD)/upstream-2026/passt: | deps
	command -v gcc >/dev/null || DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends build-essential
	$(UPSTREAM_BUILD_SCRIPT) $(abspath $(BUILD))/upstream-2026

# The vhost-user cells alone: hostile rings, the session, then a guest and libvirt.
check-vhost-user: deps qemu10 guest
	$(PYTEST) -q -p no:cacheprovider test/unit/test_virtqueue.py test/unit/test_vhost_user.py \
		test/e2e/test_passt_vhost_user.py
