# Upstream passt 2026_07_16, built from the reference tarball into
# $(BUILD)/upstream-2026: the interface our clients are written against
# (test/unit/test_conf_2026.py, test/e2e/test_clients_2026.py compare with
# it).  gcc, make and the C library headers come with APT_EXTRA_DEPS.

# shared/ lies beside the checkout (CI's clone too); /work/shared otherwise.
UPSTREAM_2026_SHARED ?= $(firstword $(wildcard $(abspath $(CURDIR)/../shared)) /work/shared)
UPSTREAM_2026        := $(BUILD)/upstream-2026

APT_EXTRA_DEPS += gcc make libc6-dev

.PHONY: upstream-2026
upstream-2026: $(UPSTREAM_2026)/pasta
$(UPSTREAM_2026)/pasta: | $(BUILD)/.deps-stamp
	$(UPSTREAM_2026_SHARED)/tools/build-upstream.sh $(abspath $(UPSTREAM_2026))

deps: $(UPSTREAM_2026)/pasta

# pesto comes with the same build: test/e2e/test_pesto.py drives ours with it.
$(UPSTREAM_2026)/pesto: | $(UPSTREAM_2026)/pasta
	test -x $@ || $(UPSTREAM_2026_SHARED)/tools/build-upstream.sh $(abspath $(UPSTREAM_2026))

deps: $(UPSTREAM_2026)/pesto
