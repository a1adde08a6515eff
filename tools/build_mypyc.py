#!/usr/bin/env python3
"""Compile the hot modules with mypyc into the build tree (``make mypyc``).

Theory of operation
-------------------
The build must never write into the source tree (mypyc puts its extensions
next to the sources it compiles), so it runs on a copy of the package in a
scratch directory, and keeps only the extensions: in ``OUT/<key>``, where
the key is ``passt.compiled.source_key`` of the sources copied, which is what
``import passt`` looks for at run time with ``PASST_MYPYC=OUT``.  A build
that is already there is not made again: the key is the cache.  The
directory appears whole or not at all (renamed into place), and only the
few most recent builds are kept, since several checkouts may share OUT.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from passt.compiled import HOT, SHARED_GLOB, build_files, source_key  # noqa: E402

KEEP = 3


def compile_copy(stage: Path) -> None:
    """Copy the package to ``stage`` and compile the hot modules there."""
    shutil.copytree(
        REPO / "passt", stage / "passt", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", stage)  # mypy's settings
    sources = [module.replace(".", "/") + ".py" for module in HOT]
    done = subprocess.run(
        [sys.executable, "-m", "mypyc", *sources],
        cwd=stage,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"mypyc failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")


def keep_extensions(stage: Path, top: Path) -> None:
    """Move the extensions built in ``stage`` to ``top``, as one rename."""
    partial = top.with_name(f"{top.name}.tmp{os.getpid()}")
    for shared in stage.glob(SHARED_GLOB):
        partial.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared, partial)
    for module in HOT:
        relative = Path(*module.split("."))
        built = next((stage / relative).parent.glob(relative.name + ".*.so"))
        (partial / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(built, partial / relative.parent)
    if build_files(partial) is None:
        sys.exit(f"mypyc left an incomplete build in {stage}")
    try:
        partial.rename(top)
    except OSError:  # another checkout built the same key meanwhile
        shutil.rmtree(partial)


def prune(out: Path) -> None:
    """Keep the ``KEEP`` most recent builds (several worktrees may share ``out``)."""
    builds = sorted(
        (path for path in out.iterdir() if path.is_dir()),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for old in builds[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "mypyc")
    args = parser.parse_args()
    top = args.out / source_key(REPO / "passt")
    if build_files(top) is None:
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="passt-mypyc-") as stage:
            compile_copy(Path(stage))
            keep_extensions(Path(stage), top)
        prune(args.out)
    print(top)


if __name__ == "__main__":
    main()
