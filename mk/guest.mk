# The end-to-end test guest: a Debian cloud kernel and a busybox/iperf3/socat
# initramfs, built by test/guest/build.sh into $(BUILD)/guest and cached
# there, keyed on package versions (the script decides whether to rebuild,
# so this target always asks it).  Needs busybox-static, iperf3, socat,
# cpio (APT_TEST_DEPS) and the apt lists (`make deps` updates them).

.PHONY: guest
guest: deps
	test/guest/build.sh $(BUILD)/guest

E2E_PREREQS += guest
