# Spliced path (fwd, tcp_splice, udp_splice): throughput next to upstream pasta.
# iperf3 and Debian's passt package are already test dependencies (APT_TEST_DEPS).
.PHONY: bench-splice
bench-splice: deps
	$(PYTHON) bench/bench_splice.py --time 5 --rounds 3
