# QEMU 10 from bookworm-backports, beside Debian 12's QEMU 7.2 (issue 22).
#
# passt's vhost-user back end needs a front end that survives it: Debian 12's
# QEMU 7.2 dies with SIGSEGV as soon as the guest's virtio-net driver starts a
# vhost-user device under TCG (with upstream's passt as with ours), while
# QEMU 10 (the one libvirt 11 is tested with) runs it.  The system's QEMU stays
# 7.2 (other tests use it, and `-netdev stream` there is what Debian 12 users
# have): QEMU 10's packages are downloaded with `apt-get download` and
# unpacked into $(QEMU10_DIR), which test/e2e/guest.py uses for vhost-user
# guests (and test_libvirt.py as the domain's emulator) when it exists,
# through a wrapper, $(QEMU10), that points QEMU_MODULE_DIR at its own modules
# (all of them: the OpenGL ones are a package of their own): a module it does
# not find there it takes from /usr/lib/x86_64-linux-gnu/qemu, QEMU 7.2's,
# and aborts on it when it loads them all, as libvirt's capability probe does.  Its
# shared libraries are those of QEMU 7.2, which APT_TEST_DEPS installs; the
# rule fails if one is missing.  The backports source comes from libvirt.mk.
#
# Installing QEMU 10 system-wide instead is one line, and the suite keeps
# working with it (stream guests run on the system's QEMU, whichever it is):
#   APT_EXTRA_DEPS += qemu-system-x86/bookworm-backports

QEMU10_DIR  := $(BUILD)/qemu10
QEMU10_PKGS := qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
	qemu-system-data/bookworm-backports qemu-system-modules-opengl/bookworm-backports
QEMU10_REAL := $(QEMU10_DIR)/root/usr/bin/qemu-system-x86_64
QEMU10      := $(QEMU10_DIR)/qemu-system-x86_64

.PHONY: qemu10
qemu10: $(QEMU10_DIR)/.stamp

$(QEMU10_DIR)/.stamp: mk/qemu10.mk | deps
	rm -rf $(QEMU10_DIR) && mkdir -p $(QEMU10_DIR)/debs
	cd $(QEMU10_DIR)/debs && apt-get download -q $(QEMU10_PKGS)
	for deb in $(QEMU10_DIR)/debs/*.deb; do dpkg-deb -x "$$deb" $(QEMU10_DIR)/root; done
	! ldd $(QEMU10_REAL) | grep 'not found'
	printf '%s\n' '#!/bin/sh' \
		'export QEMU_MODULE_DIR=$(abspath $(QEMU10_DIR))/root/usr/lib/x86_64-linux-gnu/qemu' \
		'exec $(abspath $(QEMU10_REAL)) "$$@"' >$(QEMU10)
	chmod 755 $(QEMU10)
	$(QEMU10) --version
	touch $@

E2E_PREREQS += qemu10
