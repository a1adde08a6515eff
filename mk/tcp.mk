# TCP translation (tcp_core, tcp): tap-path throughput next to upstream pasta.
# iperf3 and Debian's passt package are already test dependencies (APT_TEST_DEPS).
.PHONY: bench-tcp
bench: bench-tcp
bench-tcp: deps
	$(PYTHON) bench/bench_tcp_tap.py --time 5 --rounds 3
	$(PYTHON) bench/bench_tcp_tap.py --time 5 --rounds 3 --ipv6
