#!/usr/bin/env python3
"""Where our time goes: py-spy and cProfile of our programs on the benchmark's workloads.

Theory of operation
-------------------
The side-by-side table says how fast we are; this says why.  Each scenario
is one cell of ``sidebyside.py`` (the same world, the same workload) run on
our program alone, twice, each time on a freshly started instance:

1. under **py-spy** (sampling from outside, ``--nonblocking``: the program
   runs at full speed; idle samples, i.e. waiting in ``epoll_wait``, are
   left out), which gives the share of busy time per function ("self":
   the innermost Python frame, so time spent in a system call is charged
   to the Python line that made it) and per module;
2. under **cProfile** (``cprofiled.py``), which is slower but counts
   calls: the built-in calls (``send``, ``recv_into``, ``os.write`` to the
   tap, ``os.splice``, ``epoll.poll``...) are nearly all system calls, so
   their counts per GiB moved, or per round trip, say how well a path
   batches.

Output: a text report per scenario on standard output and in
``build/bench/profile/profile.txt``, and the raw data beside it (``*.pyspy``:
collapsed stacks, ``*.prof``: pstats files for ``python -m pstats``).

Usage (as root): ``hotspots.py [--time S] [--only KEY,...] [--top N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import re
import signal
import subprocess
import sys
from collections.abc import Callable

import harness
import report
from sidebyside import CELLS, Bench, Cell, Settings
from workloads import Sample

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = ("tcp_tap_ns_host", "tcp_tap_host_ns", "tcp_splice_host_ns", "tcp_splice_ns_host",
             "udp_tap_ns_host", "tcp_rr_tap", "tcp_crr_tap", "passt_guest_host",
             "passt_host_guest")
PYSPY_RATE = 250
LOOP_RUN = ("EventLoop.run", "run")  # py-spy's name of the event loop's main function
# Built-in calls that are system calls (or nearly always make one).
SYSCALLS = re.compile(
    r"\b(send|sendall|sendmsg|sendto|recv|recv_into|recvmsg|recvmsg_into|recvfrom|"
    r"recvfrom_into|read|readv|write|writev|splice|poll|setsockopt|getsockopt|ioctl|"
    r"accept|_accept|connect|connect_ex|close|shutdown|bind|listen|fcntl|pipe2|setns|"
    r"socket\.__init__|dup)\b")


def profiled_impl(out_path: str) -> harness.Impl:
    """Our programs, run under cProfile by ``cprofiled.py``."""
    prefix = (sys.executable, os.path.join(HERE, "cprofiled.py"), out_path)
    return harness.Impl("ours-cprofile", (*prefix, "passt"), (*prefix, "pasta"))


# -- py-spy -------------------------------------------------------------------------


def sampled_impl(out_path: str) -> harness.Impl:
    """Our programs as children of py-spy.

    py-spy must find the interpreter's binary through the process's root
    directory, which our programs empty when they isolate themselves: so it
    starts them and reads the binary before that.  It writes its file when
    its child exits (``stop_sampled``).
    """
    ours = harness.implementation("ours")
    spy = ("py-spy", "record", "--format", "raw", "--nonblocking", "--rate", str(PYSPY_RATE),
           "--output", out_path, "--")
    return harness.Impl("ours-py-spy", (*spy, *ours.passt), (*spy, *ours.pasta))


def stop_sampled(subject: harness.Subject, timeout: float = 30.0) -> None:
    """End py-spy's child, so that py-spy writes its file and exits."""
    assert subject.daemon is not None and subject.daemon.proc is not None
    proc = subject.daemon.proc
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        for child in f.read().split():
            os.kill(int(child), signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def read_stacks(path: str) -> list[tuple[list[str], int]]:
    """Collapsed stacks: (frames outermost first, sample count)."""
    stacks = []
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
    return stacks


def in_loop(stacks: list[tuple[list[str], int]]) -> list[tuple[list[str], int]]:
    """Only the samples taken in the event loop: start-up and tear-down left out."""
    return [(frames, n) for frames, n in stacks
            if any(f.split(" (")[0] in LOOP_RUN and "loop.py:" in f for f in frames)]


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` → ``file.py:name``."""
    name, _, where = frame.partition(" (")
    return f"{os.path.basename(where.rsplit(':', 1)[0])}:{name}"


def _line(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{os.path.basename(where.rstrip(')'))} {name}"


def spy_summary(stacks: list[tuple[list[str], int]], top: int) -> list[str]:
    total = sum(count for _, count in stacks)
    if not total:
        return ["  py-spy: no busy samples"]
    self_fn: collections.Counter[str] = collections.Counter()
    self_line: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        leaf = frames[-1]
        self_fn[_function(leaf)] += count
        self_line[_line(leaf)] += count
        modules[_function(leaf).split(":")[0]] += count
        for fn in {_function(f) for f in frames}:
            inclusive[fn] += count

    def block(title: str, counter: collections.Counter[str]) -> list[str]:
        return [f"  {title}:"] + [f"    {100 * n / total:5.1f}%  {name}"
                                  for name, n in counter.most_common(top)]

    return [f"  py-spy: {total} busy samples at {PYSPY_RATE}/s"
            f" (= {total / PYSPY_RATE:.1f} CPU-seconds of Python busy time)",
            *block("self time by module", modules),
            *block("self time by function", self_fn),
            *block("self time by line (a system call is charged to its line)", self_line),
            *block("inclusive time by function", inclusive)]


# -- cProfile -----------------------------------------------------------------------


def cprofile_summary(path: str, per: float, per_unit: str, top: int) -> list[str]:
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    rows = [(func, nc, tt) for func, (_cc, nc, tt, _ct, _callers) in stats.items()]
    syscalls = sorted((r for r in rows if r[0][0] == "~" and SYSCALLS.search(r[0][2])),
                      key=lambda r: -r[1])
    by_time = sorted(rows, key=lambda r: -r[2])
    lines = [f"  cProfile: system calls per {per_unit} (built-ins that make one):"]
    lines += [f"    {nc / per:10.2f}  {name}" for (_file, _line, name), nc, _tt in syscalls[:top]]
    lines.append(f"  cProfile: own time (wall clock: epoll.poll is waiting), calls per {per_unit}:")
    lines += [f"    {tt:7.3f} s  {nc / per:10.2f}  {os.path.basename(file)}:{name}"
              for (file, _line, name), nc, tt in by_time[:top]]
    return lines


# -- scenarios ------------------------------------------------------------------------


def measure_as(bench: Bench, cell: Cell, impl: harness.Impl,
               before_stop: Callable[[harness.Subject], None] | None = None) -> Sample:
    """One measurement of ``cell`` on a fresh instance of ours started as ``impl``."""
    subject = bench.start(cell.program, "ours", impl)
    if subject is None:
        raise RuntimeError(f"ours did not start as {impl.name} (see the note above)")
    try:
        sample = cell.measure(subject, bench)
        if before_stop is not None:
            before_stop(subject)
        return sample
    finally:
        bench.stop_subject(subject)


def profile_cell(bench: Bench, cell: Cell, out: str, top: int) -> list[str]:
    lines = [f"== {cell.info.key}: {cell.info.title}"]
    spy_path = os.path.join(out, f"{cell.info.key}.pyspy")
    sample = measure_as(bench, cell, sampled_impl(spy_path), stop_sampled)
    lines.append(f"  under py-spy: {sample.value:.3f} {cell.info.unit}")
    lines += spy_summary(in_loop(read_stacks(spy_path)), top)

    prof_path = os.path.join(out, f"{cell.info.key}.prof")
    sample = measure_as(bench, cell, profiled_impl(prof_path))
    per, unit = report.work(cell.info.unit, sample.value, bench.settings.seconds)
    lines.append(f"  under cProfile: {sample.value:.3f} {cell.info.unit} ({per:.0f} {unit})")
    lines += cprofile_summary(prof_path, per, unit, top)
    return lines


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time", type=float, default=5.0, help="seconds per workload")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated cell keys")
    ap.add_argument("--top", type=int, default=12, help="rows per list")
    ap.add_argument("--out", default=os.path.join(harness.ROOT, "build", "bench", "profile"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("profile: needs root (builds network namespaces)", file=sys.stderr)
        return 1
    keys = [k for k in args.only.split(",") if k]
    cells = {c.info.key: c for c in CELLS}
    unknown = [k for k in keys if k not in cells]
    if unknown:
        ap.error(f"unknown cells: {', '.join(unknown)}")
    os.makedirs(args.out, exist_ok=True)
    harness.exit_on_sigterm()
    bench = Bench(Settings(runs=1, seconds=args.time, only=frozenset(keys), out=args.out))
    report = []
    for key in keys:
        try:
            lines = profile_cell(bench, cells[key], args.out, args.top)
        except Exception as e:  # noqa: BLE001 - one scenario failed; the others still run
            lines = [f"== {key}: FAILED: {type(e).__name__}: {e}"]
        print("\n".join(lines), flush=True)
        report += [*lines, ""]
    with open(os.path.join(args.out, "profile.txt"), "w") as f:
        f.write("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
