# The side-by-side benchmark (bench/sidebyside.py; doc/performance.md).
#
#   make bench           our pasta and passt next to upstream's 2026 release
#                        (the reference of the ratios, issue 23's targets),
#                        Debian's 2023 package (history) and slirp4netns, same
#                        run, same workloads: 5 rounds of 3 s per cell, about
#                        20 minutes on a loaded machine (3 rounds: 12.5); the
#                        table with ratios, $(BENCH_OUT)/results.json and
#                        results.png
#   make bench-smoke     one 1-second round of every cell, without Debian's
#                        2023 programs, to prove the benchmark still runs
#                        (part of `make check`, 2-3 minutes: prints figures,
#                        fails only if the harness breaks)
#   make bench-profile   where our time goes: py-spy and cProfile of our
#                        programs on the same workloads, $(BENCH_OUT)/profile/
#   make bench-ab        did a change help?  Our pasta at AB_BASE (default
#                        HEAD) and the working tree, measured alternately
#                        round after round on the same cells (AB_ARGS:
#                        '--only tcp_rr_tap --rounds 8', see --help)
#   make bench-inproc    our own work (Python and system calls) per 1-byte
#                        round trip and per connection, in one process with
#                        no other program to wake: steady to a few per
#                        cent, where bench-ab cannot see 10 %
#                        (INPROC_ARGS: '--only rr --profile', see --help)
#   bench/core_prediction.py  the TCP core alone per guest segment, header
#                        prediction on against off (passt/tcp/core.py)
#
# The passt vhost-user rows (passt_vu_guest_host, passt_vu_host_guest) put ours
# over --vhost-user next to upstream 2026's vhost-user (make upstream-2026; left
# out, with a note, when it is not built) and ours over the stream socket, all
# three in the same rounds, on QEMU 10 (mk/qemu10.mk).
#
# BENCH_ARGS passes options through (e.g. BENCH_ARGS='--runs 7 --time 5',
# '--only tcp_tap_ns_host,tcp_rr_tap', '--no-guest'; see --help).
#
# matplotlib (the plot) and py-spy (the profiles) serve these targets only,
# so they get their own install step rather than PIP_EXTRA_DEPS: `make check`
# does not need them (without matplotlib the smoke run just skips the plot).
# slirp4netns, iperf3, QEMU and Debian's passt are test dependencies already
# (APT_TEST_DEPS); the passt cells boot the e2e guest image (mk/guest.mk).

BENCH_OUT      ?= $(BUILD)/bench
BENCH_ARGS     ?=
AB_BASE        ?= HEAD
AB_ARGS        ?=
BENCH_PIP_DEPS := matplotlib py-spy
# GNU time: the peak RSS of `pasta --config-net -- /bin/true` (bench/harness.py)
APT_EXTRA_DEPS += time

.PHONY: bench-deps bench-sidebyside bench-smoke bench-profile bench-ab bench-inproc

bench: bench-sidebyside

bench-deps: $(BUILD)/.bench-deps-stamp
$(BUILD)/.bench-deps-stamp: mk/bench.mk | deps
	command -v slirp4netns >/dev/null || DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends slirp4netns
	$(PYTHON) -m pip install -q $(BENCH_PIP_DEPS)
	touch $@

bench-sidebyside: deps bench-deps guest qemu10
	$(PYTHON) bench/sidebyside.py --out $(BENCH_OUT) $(BENCH_ARGS)

bench-smoke: deps guest qemu10
	timeout 400 $(PYTHON) bench/sidebyside.py --smoke --out $(BUILD)/bench-smoke
	timeout 60 $(PYTHON) bench/inproc_rr.py --exchanges 200 --connections 20 --repeat 1
	timeout 60 $(PYTHON) bench/core_prediction.py --repeat 1

bench-profile: deps bench-deps guest
	$(PYTHON) bench/hotspots.py --out $(BENCH_OUT)/profile $(BENCH_ARGS)

CHECK_PREREQS += bench-smoke

# Our own work per round trip and per connection, in one process: steady where
# bench-ab is noisy.
bench-inproc: deps
	$(PYTHON) bench/inproc_rr.py $(INPROC_ARGS)

bench-ab: deps bench-deps
	$(PYTHON) bench/abtest.py --base $(AB_BASE) $(AB_ARGS)
