"""Readers that stop reading for a minute or two in the middle of a 64 MiB download.

Theory of operation: issue 19.  A reader in the namespace or guest that
stops reading lets its receive buffer fill, and its kernel then advertises
a zero window for as long as the pause lasts.  Our TCP must keep the data
it holds for that reader (in the host socket's receive buffer) and keep
probing the window; probes that go unanswered by new window are not lost
segments, and must never count toward the retransmission limit that ends a
connection with a reset (upstream's limit is reached after some 40-60 s).

Each test downloads ``SIZE`` bytes from the remote namespace (``out``
path, IPv4) on two connections at once, whose readers pause ``PAUSES``
seconds after their first MiB (bulk.py), and checks that both get every
byte (count and SHA-256): one test waits about as long as the longest
pause.  pasta runs in both peek modes (the fallback is what Debian 12's
kernel gets), passt's guest (TCG, slow) with ``SO_PEEK_OFF`` only.
"""

from __future__ import annotations

import pytest

from . import bulk
from .cells import Cell, cell_id, path
from .deploy import Deployment
from .peek import PEEK_OFF, PeekMode, both_modes

pytestmark = pytest.mark.e2e

SIZE = 64 * bulk.MIB
PAUSES = (60, 130)
VERSION = 4


def cells_of(program: str) -> list:
    """The summary's cell of ``program``'s test."""
    name = "out " + "s+".join(map(str, PAUSES)) + "s pauses"
    c = Cell(program, name, "tcp", VERSION)
    return [pytest.param(c, id=cell_id(c))]


def paused_downloads(cell: Cell, deployment: Deployment) -> None:
    p = path(Cell(cell.program, "out", "tcp", VERSION), deployment.world, deployment.inner)
    bulk.paused_downloads(p, SIZE, PAUSES)


@both_modes()
@pytest.mark.parametrize("cell", cells_of("pasta"))
def test_pasta_readers_pausing(peek_mode: PeekMode, cell: Cell, pasta_env: Deployment) -> None:
    paused_downloads(cell, pasta_env)


@both_modes((PEEK_OFF,))
@pytest.mark.parametrize("cell", cells_of("passt"))
def test_passt_readers_pausing(peek_mode: PeekMode, cell: Cell, passt_env: Deployment) -> None:
    paused_downloads(cell, passt_env)
