"""The two ways our TCP reads what a socket received for the guest: with
``SO_PEEK_OFF``, and without it, as on the kernels most users run.

Theory of operation: Linux has TCP ``SO_PEEK_OFF`` from 6.9 only; Debian
12 (6.1), RHEL 9 and Ubuntu 22.04/24.04 lack it, and there our TCP peeks
from the first unacknowledged byte instead (passt/tcp.py).  This machine's
kernel has it, so the fallback is forced with ``PASST_NO_PEEK_OFF=1`` in
the program's environment.  A ``PeekMode`` names one of the two, carries
the environment that selects it, and marks the cells it runs, so that the
summary table has one row per mode.  Upstream's programs ignore the
variable: both modes run the same upstream code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cells import Cell


@dataclass(frozen=True)
class PeekMode:
    name: str  # pytest id and summary label suffix
    env: dict[str, str] = field(default_factory=dict)

    def cell(self, program: str, name: str, version: int) -> Cell:
        """A TCP cell of ``program`` run in this mode."""
        suffix = f" {self.name}" if self.env else ""
        return Cell(program, f"{name}{suffix}", "tcp", version)


PEEK_OFF = PeekMode("peek-off")
NO_PEEK_OFF = PeekMode("no-peek-off", {"PASST_NO_PEEK_OFF": "1"})
MODES = (PEEK_OFF, NO_PEEK_OFF)


def mode_id(mode: PeekMode) -> str:
    return mode.name
