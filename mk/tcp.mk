# TCP translation (tcp_core, tcp): tap-path throughput next to upstream pasta.
# iperf3 and Debian's passt package are already test dependencies (APT_TEST_DEPS).
.PHONY: bench-tcp
# `make bench` covers the tap path side by side (bench-sidebyside); this is the
# TCP engineer's focused IPv4/IPv6 comparison, run on its own.
bench-tcp: deps
	$(PYTHON) bench/bench_tcp_tap.py --time 5 --rounds 3
	$(PYTHON) bench/bench_tcp_tap.py --time 5 --rounds 3 --ipv6
