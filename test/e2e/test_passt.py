"""passt with a QEMU guest: boot, L2 services, the direction matrix, shutdown.

One guest serves the whole module (conftest.py's ``passt_env``); the tests
run in file order: the boot checks first, then the direction matrix (its
inbound cells first, so that they reach a guest that has not yet sent
anything from its global address), the L2 checks, the clean shutdown last.
"""

from __future__ import annotations

import pytest

from . import l2, traffic
from .cells import Cell, cell_id, l2_cells, matrix
from .deploy import Deployment
from .guest import GUEST_MAC

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("cell", [Cell("passt", "boot")], ids=cell_id)
def test_guest_boots_on_passt_socket(cell: Cell, passt_env: Deployment) -> None:
    guest = passt_env.guest
    assert guest is not None
    report = guest.report
    print(f"guest booted in {report.boot_seconds:.1f} s")
    assert report.initial_status == "prelaunch", f"QEMU started {report.initial_status}"
    assert "type=stream" in report.netdev_info, report.netdev_info
    assert guest.socket_path in report.netdev_info, report.netdev_info
    rx_filter = guest.qmp_command("query-rx-filter")
    assert [f["main-mac"] for f in rx_filter] == [GUEST_MAC]


@pytest.mark.parametrize("cell", matrix("passt"), ids=cell_id)
def test_direction(cell: Cell, passt_env: Deployment, record_property) -> None:
    throughput = traffic.run_cell(cell, passt_env.world, passt_env.inner)
    print(f"{cell.label}: {throughput.text}")
    record_property("throughput", throughput.text)


@pytest.mark.parametrize("cell", l2_cells("passt", l2.CHECKS), ids=cell_id)
def test_l2(cell: Cell, passt_env: Deployment) -> None:
    print(l2.check(cell.name, cell.version, passt_env.inner))


@pytest.mark.parametrize("cell", [Cell("passt", "shutdown")], ids=cell_id)
def test_qemu_quits_and_one_off_passt_follows(cell: Cell, passt_env: Deployment) -> None:
    assert passt_env.guest is not None
    assert passt_env.guest.shutdown(), "QEMU did not exit after QMP quit"
    status = passt_env.daemon.proc.wait(10) if passt_env.daemon.proc else None
    assert status == 0, f"passt --one-off exited {status} after its guest left"
