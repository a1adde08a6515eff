#!/usr/bin/env python3
"""Run our passt or pasta under cProfile: ``cprofiled.py OUT passt|pasta ARGS...``.

Theory of operation
-------------------
``python -m cProfile`` writes its statistics by path when the program
ends, but our programs isolate themselves once ready (an empty root: no
path leads anywhere), so this wrapper opens the statistics file first and
writes to the open file at exit, in the format ``Profile.dump_stats``
writes (a marshalled statistics dictionary, which ``pstats`` reads).  It
stays small and imports nothing of the benchmark, so that the profiled
process is our program and little else.
"""

from __future__ import annotations

import cProfile
import marshal
import sys


def run_profiled(out_path: str, mode: str, argv: list[str]) -> int:
    """``passt.cli.run(mode, argv)`` under cProfile; statistics to ``out_path`` at exit."""
    from passt import cli

    with open(out_path, "wb") as out:
        profiler = cProfile.Profile()
        try:
            return profiler.runcall(cli.run, mode, argv)
        finally:
            profiler.create_stats()
            marshal.dump(profiler.stats, out)  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(run_profiled(sys.argv[1], sys.argv[2], sys.argv[3:]))
