"""The two ways our TCP reads what a socket received for the guest: with
``SO_PEEK_OFF``, and without it, as on the kernels most users run.

Theory of operation: Linux has TCP ``SO_PEEK_OFF`` from 6.9 only; Debian
12 (6.1), RHEL 9 and Ubuntu 22.04/24.04 lack it, and there our TCP peeks
from the first unacknowledged byte instead (passt/tcp/tap.py).  This machine's
kernel has it, so the fallback is forced with ``PASST_NO_PEEK_OFF=1`` in
the program's environment.  A ``PeekMode`` names one of the two and
carries the environment that selects it.  A module runs its tests in both
with ``both_modes`` (conftest.py's ``peek_mode`` fixture hands the mode to
the module's deployments); the summary gives each mode a row of its own
(``label``).  Upstream's programs ignore the variable: both modes run the
same upstream code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass(frozen=True)
class PeekMode:
    name: str  # pytest id and summary label suffix
    env: dict[str, str] = field(default_factory=dict)

    def label(self, cell_label: str) -> str:
        """The summary's label of a cell run in this mode."""
        return f"{cell_label} {self.name}" if self.env else cell_label


PEEK_OFF = PeekMode("peek-off")
NO_PEEK_OFF = PeekMode("no-peek-off", {"PASST_NO_PEEK_OFF": "1"})
MODES = (PEEK_OFF, NO_PEEK_OFF)


def both_modes(modes: tuple[PeekMode, ...] = MODES) -> pytest.MarkDecorator:
    """Run the test once per mode, grouped by mode (module scope): one
    deployment per mode at a time."""
    return pytest.mark.parametrize("peek_mode", modes, indirect=True, scope="module",
                                   ids=[mode.name for mode in modes])
