# The kernel matrix (test/e2e/test_kernels.py): pasta's direction cells on
# Debian 12's own kernel, not only on this machine's newer one.
#
# Theory of operation: Debian 12 runs Linux 6.1, which lacks TCP SO_PEEK_OFF
# (6.9) and splices and answers netlink its own way, so "passes here" is not
# "works there".  `make kernel` fetches linux-image-6.1.*-amd64 (the generic
# flavour: the cloud one has no 9p) by package name with apt-get download and
# unpacks it under $(KERNELS_DIR), cached on the package's version
# (test/kernel/fetch.sh decides whether to fetch, so the target always asks
# it); it is never installed on the machine.  virtme-ng (PyPI) boots it under
# QEMU TCG with the host's root shared read-only, so the guest runs our code
# with the host's interpreter; one boot runs every cell (test/e2e/kernels.py,
# kernel_guest.py), 2 to 3 minutes.  It is part of `make check` and
# `make e2e`; `make check-kernels` runs it alone.  depmod (kmod) and QEMU are
# in APT_TEST_DEPS already.

KERNELS_DIR ?= $(BUILD)/kernels

PIP_EXTRA_DEPS += virtme-ng

.PHONY: kernel check-kernels

kernel: deps
	test/kernel/fetch.sh $(KERNELS_DIR)

E2E_PREREQS += kernel

check-kernels: deps kernel
	$(PYTEST) -q -p no:cacheprovider test/e2e/test_kernels.py
