# TCP translation (tcp_core, tcp): tap-path throughput next to upstream pasta.
# iperf3 and Debian's passt package are already test dependencies (APT_TEST_DEPS).
.PHONY: bench-tcp
# `make bench` covers the tap path side by side (bench-sidebyside); this is the
# TCP engineer's focused IPv4/IPv6 comparison, run on its own.
bench-tcp: deps
	$(PYTHON) bench/bench_tcp_tap.py --time 5 --rounds 3
	$(PYTHON) bench/bench_tcp_tap.py --time 5 --rounds 3 --ipv6

# TCP that never loses a byte (issue 19), end to end: concurrent 16 MiB
# exchanges and readers that pause for minutes, through pasta's tap and
# passt's guest, each with SO_PEEK_OFF and with the fallback of kernels
# before 6.9 forced (PASST_NO_PEEK_OFF=1); closed flows releasing
# everything; memory under 300 connections nobody reads.  `make check`
# runs these with the rest of test/e2e; this target runs them alone (about
# 12 minutes, most of it the paused readers), `e2e-tcp-upstream` against
# Debian's C pasta and passt for comparison.
TCP_E2E := $(addprefix test/e2e/,test_tcp_bulk.py test_tcp_zero_window.py \
	test_tcp_reclaim.py test_tcp_memory.py)

.PHONY: e2e-tcp e2e-tcp-upstream
e2e-tcp: deps $(E2E_PREREQS)
	$(PYTEST) -q -m e2e $(TCP_E2E)

e2e-tcp-upstream: deps $(E2E_PREREQS)
	PASST_IMPL=upstream $(PYTEST) -q -m e2e $(TCP_E2E)
