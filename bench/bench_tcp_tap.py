#!/usr/bin/env python3
"""Tap-path TCP throughput: our TCP translation next to upstream pasta, in one run.

Theory of operation
-------------------
Two identical worlds from ``test/e2e/test_tcp_tap.py`` (guest, host and
remote namespaces, documentation prefixes only, nothing leaves them): one
served by our pasta, one by upstream pasta (``/usr/bin/pasta``), both
started the same way (``--config-net`` on an existing guest namespace,
``-t`` forwarding, the tap named ``tap0``).  In each, an iperf3 server runs in the remote namespace
and the client in the guest namespace, so every byte crosses the tap and is
translated: "guest -> world" is iperf3's normal direction, "world -> guest"
its ``-R``.  Implementations alternate round by round, so both see the same
machine load, and the script prints the median Gbit/s per direction and the
ratio ours/upstream.  Figures are for reading, not asserting: the machine
is shared and noisy.

Usage (as root): ``bench_tcp_tap.py [--time S] [--rounds N] [--ipv6]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.join(HERE, "..", "test", "e2e", "test_tcp_tap.py")
IPERF_PORT = 15201


def load_harness():
    spec = importlib.util.spec_from_file_location("tcp_tap_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def iperf(guest: str, server: str, seconds: float, reverse: bool) -> float:
    """Gbit/s received, one iperf3 run from the guest namespace."""
    cmd = ["ip", "netns", "exec", guest, "iperf3", "-J", "-c", server, "-p", str(IPERF_PORT),
           "-t", str(seconds), "-O", "1"]
    if reverse:
        cmd.append("-R")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    report = json.loads(done.stdout or "{}")
    if "error" in report or done.returncode:
        raise RuntimeError(f"iperf3 failed: {report.get('error', done.stderr.strip())}")
    return report["end"]["sum_received"]["bits_per_second"] / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ipv6", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_tcp_tap: needs root (builds network namespaces)", file=sys.stderr)
        return 1
    harness = load_harness()
    family = harness.V6 if args.ipv6 else harness.V4
    worlds = {"ours": harness.TapWorld("bo"), "upstream": harness.TapWorld("bu")}
    servers = []
    try:
        for name, world in worlds.items():
            world.create()
            world.start_program("pasta") if name == "ours" else world.start_upstream()
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", world.remote, "iperf3", "-s", "-p", str(IPERF_PORT)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for direction, reverse in (("guest -> world", False), ("world -> guest", True)):
                for name, world in worlds.items():
                    rate = iperf(world.guest, family.remote, args.time, reverse)
                    results.setdefault((name, direction), []).append(rate)
        print(f"TCP tap path, IPv{family.version}, {args.rounds} rounds of {args.time:g} s "
              f"(median Gbit/s)")
        for direction in ("guest -> world", "world -> guest"):
            ours = statistics.median(results[("ours", direction)])
            upstream = statistics.median(results[("upstream", direction)])
            print(f"  {direction:15s} ours {ours:6.2f}   upstream pasta {upstream:6.2f}   "
                  f"ratio {ours / upstream if upstream else float('nan'):.2f}")
    finally:
        for server in servers:
            server.kill()
            server.wait()
        for world in worlds.values():
            world.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
