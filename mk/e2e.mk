# The end-to-end suite (test/e2e): real QEMU guests and namespaces driven
# with pexpect and QMP.  `make e2e` runs it against ours; `make e2e-upstream`
# runs the same suite against Debian's C passt/pasta, to show that the
# cells test real behaviour.  PASST_IMPL selects the programs (see
# test/e2e/impl.py); the guest image comes from mk/guest.mk.

.PHONY: e2e-upstream
e2e-upstream: deps $(E2E_PREREQS)
	PASST_IMPL=upstream $(PYTEST) -q -m e2e test/e2e
