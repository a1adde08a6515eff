#!/usr/bin/env python3
"""``make bench-ab``: our pasta at another commit against the working tree, alternately.

Theory of operation
-------------------
A change worth a few per cent cannot be told from this machine's drift by
comparing two ``make bench`` runs taken minutes apart: on an idle machine
our round-trip figure alone moved from 5,300 to 9,600 exchanges per second
within minutes (doc/performance.md).  So this tool measures two versions of
our pasta *alternately*: the working tree (B) and a commit (A, checked out
as a git worktree under ``build/abtest``), each round on freshly started
programs, in the order A B in even rounds and B A in odd ones, so that drift
and warm-up fall on both alike.  The cells are the side-by-side benchmark's
own (``sidebyside.CELLS``, pasta's that need no fresh instances), measured
the same way, with our CPU time per unit of work.

For each cell it prints the medians of the figure and of the CPU time per
unit for A and B, their ratio, and in how many rounds B did better than A
on each: with 8 rounds, a change that wins 8 of 8 (or loses 8 of 8) is
unlikely to be noise (1 chance in 128 either way), 5 of 8 says nothing.
Calibrate before believing a median: an A/A run (``--base HEAD`` with no
change in ``passt/``) on the two-core machine of doc/performance.md had
the connection rate's medians 13 % apart, with B better in 1 round of 8,
so differences below about 15 % are out of its reach there.

Usage (as root): ``abtest.py [--base REV] [--only KEY,...] [--rounds N]
[--time S]``; the defaults compare ``HEAD`` with the working tree on the
round trips and the connection rate through the tap.  ``--mypyc DIR``
compares the working tree with itself instead: pure Python (A) against the
mypyc build of its hot modules in DIR (B, ``PASST_MYPYC``; ``make mypyc``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

import harness
from sidebyside import CELLS, Cell, Settings, with_cpu
from workloads import Sample

DEFAULT_CELLS = "tcp_rr_tap,tcp_crr_tap"
WORKTREES = os.path.join(harness.ROOT, "build", "abtest")


@dataclass
class Version:
    """One version of our code: where its source is, and its samples per cell."""

    name: str
    tree: str
    mypyc: str | None = None  # PASST_MYPYC for this version's programs
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def _first_on_path(self) -> str:
        env = "" if self.mypyc is None else f"import os; os.environ['PASST_MYPYC'] = {self.mypyc!r}; "
        return env + f"import sys; sys.path.insert(0, {self.tree!r})"

    def impl(self) -> harness.Impl:
        """Our programs, importing ``passt`` from this version's tree."""
        def entry(function: str) -> tuple[str, ...]:
            return (sys.executable, "-c", f"{self._first_on_path()}; "
                                          f"from passt.cli import {function}; {function}()")
        return harness.Impl(f"ours@{self.name}", entry("main_passt"), entry("main_pasta"))

    def check_imports_itself(self) -> None:
        """Fail early if ``passt`` would come from anywhere but this tree."""
        found = subprocess.run(
            [sys.executable, "-c", f"{self._first_on_path()}; import passt; print(passt.__file__)"],
            capture_output=True, text=True, check=True).stdout.strip()
        if not found.startswith(os.path.join(self.tree, "")):
            raise SystemExit(f"abtest: {self.name} imports passt from {found}, not {self.tree}")
        if self.mypyc is not None:
            core = subprocess.run(
                [sys.executable, "-c", f"{self._first_on_path()}; import passt.tcp.core as m; "
                                       "print(m.__file__)"],
                capture_output=True, text=True, check=True).stdout.strip()
            if not core.endswith(".so"):
                raise SystemExit(f"abtest: no mypyc build for this tree in {self.mypyc}")


def worktree(rev: str) -> Version:
    """``rev`` checked out (detached) under build/abtest."""
    sha = subprocess.run(["git", "-C", harness.ROOT, "rev-parse", "--short", rev],
                         capture_output=True, text=True, check=True).stdout.strip()
    path = os.path.join(WORKTREES, sha)
    if not os.path.isdir(path):
        os.makedirs(WORKTREES, exist_ok=True)
        subprocess.run(["git", "-C", harness.ROOT, "worktree", "add", "--detach", path, sha],
                       capture_output=True, check=True)
    return Version(f"{rev} ({sha})", path)


def remove_worktree(version: Version) -> None:
    subprocess.run(["git", "-C", harness.ROOT, "worktree", "remove", "--force", version.tree],
                   capture_output=True)
    shutil.rmtree(version.tree, ignore_errors=True)


class Settled:
    """What a cell's ``measure`` reads of the benchmark: its settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


def measure_round(version: Version, cells: list[Cell], bench: Settled, workdir: str) -> None:
    """Start this version's pasta, measure every cell once, stop it."""
    subject = harness.start_pasta("ours", workdir, version.impl())
    try:
        for cell in cells:
            before = subject.cpu_seconds()
            sample = cell.measure(subject, bench)  # type: ignore[arg-type]
            sample = with_cpu(cell, sample, bench.settings.seconds, before,
                              subject.cpu_seconds())
            version.samples.setdefault(cell.info.key, []).append(sample)
            cpu = "" if sample.cpu is None else f"  cpu/unit {sample.cpu:.3g}"
            print(f"   {cell.info.key:20} {version.name:24} {sample.value:10.3f} "
                  f"{cell.info.unit}{cpu}", flush=True)
    finally:
        subject.stop()


def wins(a: list[float], b: list[float], higher_is_better: bool) -> int:
    """Rounds (paired by index) in which B did better than A."""
    return sum((y > x) == higher_is_better and y != x for x, y in zip(a, b, strict=True))


def report(a: Version, b: Version, cells: list[Cell]) -> None:
    print(f"\nA = {a.name}, B = {b.name}; medians over {len(a.samples[cells[0].info.key])} "
          "rounds; 'B better' counts rounds")
    print(f"{'cell':22} {'A':>10} {'B':>10} {'B/A':>6} {'B better':>9}   "
          f"{'CPU/unit A':>10} {'B':>10} {'B/A':>6} {'B better':>9}")
    for cell in cells:
        key = cell.info.key
        va = [s.value for s in a.samples[key]]
        vb = [s.value for s in b.samples[key]]
        ca = [s.cpu for s in a.samples[key] if s.cpu is not None]
        cb = [s.cpu for s in b.samples[key] if s.cpu is not None]
        line = (f"{key:22} {statistics.median(va):10.4g} {statistics.median(vb):10.4g} "
                f"{statistics.median(vb) / statistics.median(va):6.3f} "
                f"{wins(va, vb, cell.info.higher_is_better):4}/{len(va):<4}")
        if ca and cb and len(ca) == len(cb):
            line += (f"   {statistics.median(ca):10.4g} {statistics.median(cb):10.4g} "
                     f"{statistics.median(cb) / statistics.median(ca):6.3f} "
                     f"{wins(ca, cb, False):4}/{len(ca):<4}")
        print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="HEAD", help="the commit to compare with (A)")
    ap.add_argument("--only", default=DEFAULT_CELLS, help="cells (sidebyside.py keys)")
    ap.add_argument("--mypyc", metavar="DIR",
                    help="A: the working tree in pure Python, B: with the mypyc build in DIR")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--time", type=float, default=Settings.seconds,
                    help="seconds per measurement")
    args = ap.parse_args()
    wanted = args.only.split(",")
    cells = [c for c in CELLS if c.info.key in wanted and c.program == "pasta" and not c.fresh]
    unknown = set(wanted) - {c.info.key for c in cells}
    if unknown:
        print(f"abtest: not a pasta cell of sidebyside.py: {', '.join(sorted(unknown))}",
              file=sys.stderr)
        return 1
    if args.mypyc:
        a = Version("pure Python", harness.ROOT)
        b = Version("mypyc", harness.ROOT, os.path.abspath(args.mypyc))
    else:
        a, b = worktree(args.base), Version("working tree", harness.ROOT)
    bench = Settled(Settings(seconds=args.time))
    workdir = os.path.join(WORKTREES, "work")
    try:
        for version in (a, b):
            version.check_imports_itself()
        for index in range(args.rounds):
            print(f"-- round {index + 1}/{args.rounds}", flush=True)
            for version in ((a, b) if index % 2 == 0 else (b, a)):
                measure_round(version, cells, bench, workdir)
        report(a, b, cells)
    finally:
        if a.tree != harness.ROOT:
            remove_worktree(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
