#!/usr/bin/env python3
"""Spliced-path throughput: our pasta next to upstream pasta, in one run.

Theory of operation
-------------------
The benchmark builds its own world (no traffic leaves it): a "host"
namespace joined by a veth pair to a "remote" one (upstream pasta insists
on a routable template interface), and a target namespace per
implementation.  Each implementation forwards one ``-t`` port (host
loopback → namespace loopback) and one ``-T`` port (the other way); iperf3
then runs through each direction, implementations alternating round by
round so that both see the same machine load, and the script prints
Gbit/s per direction and the ratio ours/upstream.

"ours" is our pasta's command line, started the same way as upstream's.
The ``serve`` mode runs only the forwarding modules (``fwd``,
``tcp_splice``, ``udp_splice``) on an event loop, with a helper thread
inside the target namespace for ``ns_call``, and answers SIGUSR1 with its
flow and pool counts: the end-to-end splice tests use it to look inside.

Usage: ``bench_splice.py [--time S] [--rounds N]`` (as root), or
``bench_splice.py serve [--udp-timeout S] --netns PATH [-t SPEC] [-u SPEC] [-T SPEC] [-U SPEC]``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

UPSTREAM = "/usr/bin/pasta"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T_PORT, T_NS_PORT = 15301, 15302


# -- serve mode: our splice modules as a stand-in pasta ---------------------


def setns(fd: int, nstype: int) -> None:
    """``setns(2)`` for the calling thread (``os.setns`` only exists from Python 3.12)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class NsThread:
    """``ns_call`` for tests and benchmarks: a thread that joined a namespace."""

    def __init__(self, netns_path: str) -> None:
        self._calls: queue.Queue[tuple[Callable[..., Any], tuple, queue.Queue]] = queue.Queue()
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        ready: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, args=(fd, ready), daemon=True).start()
        error = ready.get()
        if error is not None:
            raise error

    def _serve(self, fd: int, ready: queue.Queue) -> None:
        try:
            setns(fd, CLONE_NEWNET)
        except OSError as e:
            ready.put(e)
            return
        finally:
            os.close(fd)
        ready.put(None)
        while True:
            fn, args, reply = self._calls.get()
            try:
                reply.put((True, fn(*args)))
            except BaseException as e:
                reply.put((False, e))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        reply: queue.Queue = queue.Queue()
        self._calls.put((fn, args, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value


def serve(argv: list[str]) -> int:
    """Run fwd + tcp_splice + udp_splice until SIGTERM; print "ready" once listening.

    Takes pasta's options (``-t``, ``-u``, ``-T``, ``-U``: ``auto`` when not
    given, as pasta; ``--netns``), plus ``--udp-timeout SECONDS``.  SIGUSR1
    prints the flow table's statistics and the descriptors the pools hold,
    as one JSON line.
    """
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from passt import conf as confmod
    from passt import runtime
    from passt.context import Ctx
    from passt.flow import fwd
    from passt.loop import EventLoop

    ap = argparse.ArgumentParser(prog="bench_splice.py serve")
    ap.add_argument("--udp-timeout", type=float, default=180.0)
    args, pasta_argv = ap.parse_known_args(argv)
    conf = confmod.parse("pasta", pasta_argv)
    ns = NsThread(conf.netns)
    ctx = Ctx(loop=EventLoop(), conf=conf)
    runtime.setup_forwarding(ctx, ns.call)
    ctx.fwd.udp_splice.timeout = args.udp_timeout
    fwd.start(ctx)
    loop = ctx.loop
    loop.add_signal(signal.SIGTERM, lambda: loop.stop(0))
    loop.add_signal(signal.SIGINT, lambda: loop.stop(0))
    loop.add_signal(signal.SIGUSR1, lambda: print(json.dumps(
        {**ctx.flows.stats(), "pool_fds": ctx.tcp_splice.pools.open_fds()}), flush=True))
    print("ready", flush=True)
    status = loop.run()
    fwd.close(ctx)
    return status


# -- the benchmark world -----------------------------------------------------


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


@contextmanager
def world(tag: str) -> Iterator[dict[str, str]]:
    """Host, remote and target namespaces; always deleted on the way out."""
    names = {"host": f"bsp{tag}h", "remote": f"bsp{tag}r", "ours": f"bsp{tag}o",
             "upstream": f"bsp{tag}u"}
    try:
        for name in names.values():
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        h, r = names["host"], names["remote"]
        sh("ip", "link", "add", "veth0", "netns", h, "type", "veth", "peer", "name", "veth1",
           "netns", r)
        for ns, dev, v4, v6 in ((h, "veth0", "192.0.2.1/24", "2001:db8::1/64"),
                                (r, "veth1", "192.0.2.2/24", "2001:db8::2/64")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
            sh("ip", "-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad")
        sh("ip", "-n", h, "route", "add", "default", "via", "192.0.2.2")
        sh("ip", "-n", h, "-6", "route", "add", "default", "via", "2001:db8::2")
        yield names
    finally:
        for name in names.values():
            sh("ip", "netns", "del", name, check=False)


def netns_exec(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def start_serve(host_ns: str, target_ns: str, *opts: str) -> subprocess.Popen:
    """This script's ``serve`` mode (for tests that look inside the forwarder)."""
    cmd = netns_exec(host_ns, sys.executable, os.path.abspath(__file__), "serve",
                     "--netns", f"/run/netns/{target_ns}", *opts)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("our splice server did not start")
    return proc


OURS = [sys.executable, "-c", "from passt.cli import main_pasta; main_pasta()"]


def start_pasta(program: list[str], host_ns: str, target_ns: str, *opts: str
                ) -> subprocess.Popen:
    """A pasta attached to ``target_ns``; retried, as upstream's sometimes dies at start-up."""
    for _ in range(5):
        proc = subprocess.Popen(
            netns_exec(host_ns, *program, "-f", "-q", "--config-net",
                       *opts, "--netns", f"/run/netns/{target_ns}", "--netns-only"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait_listening(host_ns, T_PORT, proc):
            return proc
        stop(proc)
    raise RuntimeError(f"{program[0]} did not start")


def wait_listening(ns: str, port: int, proc: subprocess.Popen, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        out = sh("ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}").stdout
        if out.strip():
            return True
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf3(server_ns: str, client_ns: str, port: int, seconds: float) -> tuple[float, int]:
    """(Gbit/s, bytes) received by an iperf3 server in ``server_ns`` via 127.0.0.1."""
    server = subprocess.Popen(netns_exec(server_ns, "iperf3", "-s", "-1", "-p", str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(
            netns_exec(client_ns, "iperf3", "-J", "-c", "127.0.0.1", "-p", str(port),
                       "-t", str(seconds)),
            capture_output=True, text=True, timeout=seconds + 30).stdout
        received = json.loads(out)["end"]["sum_received"]
        return received["bits_per_second"] / 1e9, int(received["bytes"])
    finally:
        stop(server)


Results = dict[str, dict[str, list[tuple[float, float]]]]
"""impl → direction → [(Gbit/s, CPU seconds of the forwarder per GiB moved)]."""


def measure(proc: subprocess.Popen, server_ns: str, client_ns: str, port: int,
            seconds: float) -> tuple[float, float]:
    cpu0 = cpu_seconds(proc.pid)
    gbps, moved = iperf3(server_ns, client_ns, port, seconds)
    return gbps, (cpu_seconds(proc.pid) - cpu0) / (moved / (1 << 30))


def bench(seconds: float, rounds: int) -> Results:
    opts = ["-t", str(T_PORT), "-T", str(T_NS_PORT), "-u", "none", "-U", "none"]
    results: Results = {impl: {"host->ns": [], "ns->host": []} for impl in ("ours", "upstream")}
    with world(str(os.getpid() % 10000)) as ns:
        for _ in range(rounds):
            for impl in ("upstream", "ours"):
                target = ns[impl]
                program = OURS if impl == "ours" else [UPSTREAM, "--runas", "0"]
                proc = start_pasta(program, ns["host"], target, *opts)
                try:
                    results[impl]["host->ns"].append(
                        measure(proc, target, ns["host"], T_PORT, seconds))
                    results[impl]["ns->host"].append(
                        measure(proc, ns["host"], target, T_NS_PORT, seconds))
                finally:
                    stop(proc)
    return results


def report(results: Results) -> None:
    print("Gbit/s: best of runs; CPU: the forwarder's CPU seconds per GiB moved (median)")
    print(f"{'direction':10} {'upstream':>9} {'ours':>9} {'ratio':>6}"
          f" {'CPU up':>8} {'CPU ours':>9}")
    for direction in ("host->ns", "ns->host"):
        up = results["upstream"][direction]
        ours = results["ours"][direction]
        best_up = max(g for g, _ in up)
        best_ours = max(g for g, _ in ours)
        print(f"{direction:10} {best_up:9.2f} {best_ours:9.2f} {best_ours / best_up:6.2f}"
              f" {statistics.median(c for _, c in up):8.3f}"
              f" {statistics.median(c for _, c in ours):9.3f}")
    print(json.dumps(results))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time", type=float, default=5.0, help="seconds per iperf3 run")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    report(bench(args.time, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
