"""Concurrent 16 MiB TCP exchanges through pasta's tap and passt's guest, both peek modes.

Theory of operation: issue 19.  Without ``SO_PEEK_OFF`` (kernels before
6.9: most users') our TCP peeks from the first unacknowledged byte, and
with a megabyte or more in flight that path once cut downloads short with
a clean end of file.  So each cell here moves ``CONNECTIONS`` connections
of ``BULK_BYTES`` each way at once (bulk.py: upload, half-close, download,
every byte checked by SHA-256), once with ``SO_PEEK_OFF`` and once with
the fallback forced (``PASST_NO_PEEK_OFF=1``, peek.py).

pasta runs the tap paths in both directions of connection: ``in`` (the
remote namespace dials a port pasta forwards with ``-t``) and ``out`` (the
namespace dials the remote namespace), IPv4 and IPv6.  passt's guest
runs under TCG, which is slow, so it gets one cell per mode and family
(``out``).  One deployment per program and mode: tests are grouped by mode.
"""

from __future__ import annotations

import pytest

from . import bulk
from .cells import VERSIONS, Cell, cell_id, path
from .deploy import Deployment
from .peek import PeekMode, both_modes

pytestmark = pytest.mark.e2e

CONNECTIONS = 4
BULK_BYTES = 16 * bulk.MIB
# Inbound first, as in the matrix (cells.py): once the namespace has sent
# from its SLAAC address, inbound IPv6 goes to that address, not to the one
# the server binds.
DIRECTIONS = {"pasta": ("in", "out"), "passt": ("out",)}


def cases(program: str) -> list:
    """(the summary's cell, the matrix cell whose path it takes) per case."""
    pairs = [(Cell(program, f"{direction} x{CONNECTIONS}", "tcp", version),
              Cell(program, direction, "tcp", version))
             for direction in DIRECTIONS[program] for version in VERSIONS]
    return [pytest.param(cell, direction, id=cell_id(cell)) for cell, direction in pairs]


def exchange(cell: Cell, direction: Cell, deployment: Deployment) -> None:
    p = path(direction, deployment.world, deployment.inner)
    bulk.concurrent_exchanges(p, CONNECTIONS, BULK_BYTES)
    print(f"{cell.label}: {CONNECTIONS} connections, {BULK_BYTES} bytes each way each, intact")


@both_modes()
@pytest.mark.parametrize(("cell", "direction"), cases("pasta"))
def test_pasta_concurrent_exchanges(peek_mode: PeekMode, cell: Cell, direction: Cell,
                                    pasta_env: Deployment) -> None:
    exchange(cell, direction, pasta_env)


@both_modes()
@pytest.mark.parametrize(("cell", "direction"), cases("passt"))
def test_passt_concurrent_exchanges(peek_mode: PeekMode, cell: Cell, direction: Cell,
                                    passt_env: Deployment) -> None:
    exchange(cell, direction, passt_env)
