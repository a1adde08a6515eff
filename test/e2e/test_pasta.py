"""pasta with a network namespace: L2 services and the direction matrix.

Two configurations, each shared by the tests that need it: pasta without
``--config-net`` (the namespace configures itself by DHCP and SLAAC, for
the L2 checks) and pasta with ``--config-net`` and forwarded ports (the
direction matrix).
"""

from __future__ import annotations

import pytest

from . import l2, traffic
from .cells import Cell, cell_id, l2_cells, matrix
from .deploy import Deployment

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("cell", l2_cells("pasta", l2.CHECKS), ids=cell_id)
def test_l2(cell: Cell, pasta_l2_env: Deployment) -> None:
    print(l2.check(cell.name, cell.version, pasta_l2_env.inner))


@pytest.mark.parametrize("cell", matrix("pasta"), ids=cell_id)
def test_direction(cell: Cell, pasta_env: Deployment, record_property) -> None:
    throughput = traffic.run_cell(cell, pasta_env.world, pasta_env.inner)
    print(f"{cell.label}: {throughput.text}")
    record_property("throughput", throughput.text)
