# passt as a vhost-user back end (issue 22): passt/vhost_user.py (the protocol),
# passt/virtqueue.py (guest memory, split rings), passt/vhost_backend.py.
#   make check-vhost-user                            hostile rings, the session,
#                                                    a QEMU 10 guest's every cell
# test_passt_vhost_user_upstream.py runs the same cells against upstream 2026's
# vhost-user (mk/upstream.mk) in the same run.  `make check` runs them all, and
# test_libvirt.py's <interface type='vhostuser'>.

.PHONY: check-vhost-user
check-vhost-user: deps qemu10 guest upstream-2026
	$(PYTEST) -q -p no:cacheprovider test/unit/test_virtqueue.py test/unit/test_vhost_user.py \
		test/e2e/test_passt_vhost_user.py test/e2e/test_passt_vhost_user_upstream.py
