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
from typing import NoReturn

from . import log, runtime
from .conf import ConfError, parse


def main_passt() -> NoReturn:
    exit_now(run("passt", sys.argv[1:]))


def main_pasta() -> NoReturn:
    exit_now(run("pasta", sys.argv[1:]))


def main() -> NoReturn:
    mode = "pasta" if os.path.basename(sys.argv[0]).startswith("pasta") else "passt"
    exit_now(run(mode, sys.argv[1:]))


def exit_now(status: int) -> NoReturn:
    """Exit without the interpreter's tear-down, once what Python buffers is written.

    The run closed what it opened; what is left is every object of the
    process, which the interpreter would free one by one (about 20 ms) and
    the kernel takes back at once.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader gone
            pass
    os._exit(status)


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
