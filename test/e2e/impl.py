"""Which passt and pasta the end-to-end suite drives.

Theory of operation: the suite proves behaviour, not an implementation, so
the programs under test are chosen in exactly one place, by the environment
variable ``PASST_IMPL``:

- ``ours`` (default): this repository's Python package, run with the
  interpreter running the tests (never whatever ``passt`` is on ``PATH``:
  Debian's C programs are there too);
- ``upstream``: Debian's C ``passt``/``pasta`` in ``/usr/bin``, the
  behavioural reference;
- ``upstream2026``: upstream's release 2026_07_16, built into
  ``build/upstream-2026`` by ``make deps`` (mk/upstream.mk); it has
  ``--vhost-user``, which Debian's 2023 build lacks;
- ``installed``: programs installed by a package, from ``PASST_BIN_DIR``
  (default ``/usr/bin``), for the packaging tests.

Adding a kind of installation is one entry in ``_IMPLS``.  Every kind gets
the same start-up options: ``--runas 0`` (started as root, upstream would
drop to ``nobody`` and then fail to set up its namespaces), ``-f`` (stay in
the foreground, so the harness owns the process) and ``-e`` (log to
stderr, which the harness saves: there is no syslog here).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

COMMON_OPTIONS = ["-f", "-e", "--runas", "0"]


@dataclass(frozen=True)
class Impl:
    """The argv prefixes that start passt and pasta of one implementation."""

    name: str
    passt: tuple[str, ...]
    pasta: tuple[str, ...]

    def argv(self, program: str, options: list[str]) -> list[str]:
        """Full argv for ``program`` ("passt" or "pasta") with ``options``."""
        prefix = self.passt if program == "passt" else self.pasta
        return [*prefix, *COMMON_OPTIONS, *options]


def _python_entry(function: str) -> tuple[str, ...]:
    return (sys.executable, "-c", f"from passt.cli import {function}; {function}()")


def _ours() -> Impl:
    return Impl("ours", _python_entry("main_passt"), _python_entry("main_pasta"))


def _upstream() -> Impl:
    return Impl("upstream", ("/usr/bin/passt",), ("/usr/bin/pasta",))


UPSTREAM_2026 = os.path.join(os.path.dirname(__file__), "..", "..", "build", "upstream-2026")


def _upstream2026() -> Impl:
    bin_dir = os.path.abspath(UPSTREAM_2026)
    return Impl("upstream2026", (os.path.join(bin_dir, "passt"),),
                (os.path.join(bin_dir, "pasta"),))


def _installed() -> Impl:
    bin_dir = os.environ.get("PASST_BIN_DIR", "/usr/bin")
    return Impl(
        "installed", (os.path.join(bin_dir, "passt"),), (os.path.join(bin_dir, "pasta"),)
    )


_IMPLS: dict[str, Callable[[], Impl]] = {
    "ours": _ours,
    "upstream": _upstream,
    "upstream2026": _upstream2026,
    "installed": _installed,
}


def current() -> Impl:
    """The implementation selected by ``PASST_IMPL`` (default ``ours``)."""
    return named(os.environ.get("PASST_IMPL", "ours"))


def named(name: str) -> Impl:
    """The implementation called ``name`` (``ours``, ``upstream2026``...)."""
    try:
        return _IMPLS[name]()
    except KeyError:
        known = ", ".join(sorted(_IMPLS))
        raise ValueError(f"PASST_IMPL={name!r} is not one of: {known}") from None
