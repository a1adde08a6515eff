"""Entry points for the ``passt`` and ``pasta`` programs.

One core, two modes: the mode is fixed by the entry point (``main_passt`` or
``main_pasta``), or, for ``python -m passt``, by the program name.  This
module owns the contract with callers: bad options are one line on stderr
and exit status 1 before anything starts; a start-up failure is one logged
line and exit status 1; otherwise the exit status is the run's (pasta: its
command's).
"""

from __future__ import annotations

import os
import sys

from . import log, runtime
from .conf import ConfError, parse


def main_passt() -> None:
    sys.exit(run("passt", sys.argv[1:]))


def main_pasta() -> None:
    sys.exit(run("pasta", sys.argv[1:]))


def main() -> None:
    mode = "pasta" if os.path.basename(sys.argv[0]).startswith("pasta") else "passt"
    sys.exit(run(mode, sys.argv[1:]))


def run(mode: str, argv: list[str]) -> int:
    try:
        conf = parse(mode, argv)
    except ConfError as exc:
        print(exc, file=sys.stderr)
        return 1
    log.setup(conf, ident=mode)
    return start(mode, conf)


def start(mode: str, conf: object) -> int:
    try:
        if mode == "pasta":
            return runtime.run_pasta(conf)
        return runtime.run_passt(conf)
    except runtime.STARTUP_ERRORS as exc:
        log.err("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
