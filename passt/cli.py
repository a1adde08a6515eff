"""Entry points for the ``passt`` and ``pasta`` programs.

One core, two modes: the mode is fixed by the entry point (``main_passt`` or
``main_pasta``), or, for ``python -m passt``, by the program name.
"""

from __future__ import annotations

import os
import sys


def main_passt() -> None:
    sys.exit(run("passt", sys.argv[1:]))


def main_pasta() -> None:
    sys.exit(run("pasta", sys.argv[1:]))


def main() -> None:
    mode = "pasta" if os.path.basename(sys.argv[0]).startswith("pasta") else "passt"
    sys.exit(run(mode, sys.argv[1:]))


def run(mode: str, argv: list[str]) -> int:
    raise NotImplementedError("filled in as the foundation lands")
