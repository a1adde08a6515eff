"""passt with a QEMU started through contrib/qrap: ``-netdev socket,fd=5``.

Theory of operation: QEMU older than 7.2 reaches passt only through an
inherited socket descriptor, which qrap connects and hands over.  The
guest here is the harness's (deploy.deploy_passt), started exactly as for
test_passt.py, except that ``qemu-system-x86_64`` is, for the time of the
deployment, found first in a directory where it is a small script running
``qrap 5 /usr/bin/qemu-system-x86_64 ARGS``: qrap takes the socket path
from the ``-netdev stream`` of ARGS, connects, and swaps that netdev for
``-netdev socket,id=net0,fd=5``.  So the whole stack under test is the one
users of an old QEMU get; of the harness, only the guest's wait for its
stream netdev to connect is replaced (``QrapGuest``).

The traffic cells are the matrix's, on the socket netdev: each direction
and family moves bulk data both ways through the descriptor qrap passed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator

import pytest

from . import deploy, features, impl, traffic
from .cells import Cell, cell_id, matrix
from .deploy import Deployment, Stage
from .guest import Guest

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QRAP = os.path.join(REPO, "contrib", "qrap")
REAL_QEMU = "/usr/bin/qemu-system-x86_64"


def plain_cell(cell: Cell) -> Cell:
    """The matrix cell a variant runs: ``qrap_out_host`` runs ``out_host``."""
    return Cell(cell.program, cell.name.split("_", 1)[1], cell.proto, cell.version)


def variant_params(prefix: str, plains: Iterable[Cell]) -> list[object]:
    """Matrix cells run another way (through qrap, under libvirt), as test
    parameters: ``passt out tcp v4`` becomes ``passt qrap_out tcp v4``.  Where
    upstream fails the plain cell (features.UPSTREAM_FAILS), the variant
    inherits the expected failure and its reason."""
    params = []
    for plain in plains:
        cell = Cell(plain.program, f"{prefix}_{plain.name}", plain.proto, plain.version)
        reason = features.upstream_failure(plain)
        marks = []
        if reason and impl.current().name == "upstream":
            marks.append(pytest.mark.xfail(reason=f"upstream: {reason}", strict=True))
        params.append(pytest.param(cell, marks=marks, id=cell_id(cell)))
    return params


def write_qemu_through_qrap(bindir: str) -> None:
    """``qemu-system-x86_64`` in ``bindir``: the real one, started by qrap."""
    script = os.path.join(bindir, "qemu-system-x86_64")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nexec {sys.executable} {QRAP} 5 {REAL_QEMU} \"$@\"\n")
    os.chmod(script, 0o755)


class QrapGuest(Guest):
    """The harness's guest, whose netdev is the socket qrap connected before
    QEMU even started: there is no stream connection to wait for."""

    def _wait_netdev_connected(self, timeout: float = 15.0) -> str:
        return self.info_network()


def deploy_through_qrap(chosen: impl.Impl, workdir: str, bindir: str) -> Deployment:
    """deploy.deploy_passt, with QEMU found in ``bindir`` and ``QrapGuest`` as the guest."""
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{bindir}:{path}"
    deploy.Guest = QrapGuest  # type: ignore[misc]
    try:
        deploy.build_guest_image()
        return deploy.deploy_passt(chosen, workdir)
    finally:
        os.environ["PATH"] = path
        deploy.Guest = Guest  # type: ignore[misc]


@pytest.fixture(scope="module")
def qrap_stage(
    chosen_impl: impl.Impl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stage]:
    bindir = str(tmp_path_factory.mktemp("qrap-bin"))
    write_qemu_through_qrap(bindir)
    stage = Stage(
        lambda: deploy_through_qrap(chosen_impl, str(tmp_path_factory.mktemp("qrap")), bindir)
    )
    yield stage
    stage.close()


@pytest.fixture
def qrap_env(request: pytest.FixtureRequest, qrap_stage: Stage) -> Iterator[Deployment]:
    deployment = qrap_stage.get()
    request.node.e2e_deployment = deployment
    try:
        yield deployment
    finally:
        deployment.after_test()


@pytest.mark.parametrize("cell", [Cell("passt", "qrap_boot")], ids=cell_id)
def test_guest_boots_on_the_socket_qrap_passed(cell: Cell, qrap_env: Deployment) -> None:
    guest = qrap_env.guest
    assert guest is not None
    info = guest.report.netdev_info
    print(info)
    assert "socket" in info and "fd=5" in info, info
    assert "stream" not in info, info


@pytest.mark.parametrize("cell", variant_params("qrap", matrix("passt")))
def test_direction_through_qrap(cell: Cell, qrap_env: Deployment, record_property) -> None:
    throughput = traffic.run_cell(plain_cell(cell), qrap_env.world, qrap_env.inner)
    print(f"{cell.label}: {throughput.text}")
    record_property("throughput", throughput.text)


@pytest.mark.parametrize("cell", [Cell("passt", "qrap_shutdown")], ids=cell_id)
def test_one_off_passt_follows_qemu_started_by_qrap(cell: Cell, qrap_env: Deployment) -> None:
    assert qrap_env.guest is not None
    assert qrap_env.guest.shutdown(), "QEMU did not exit after QMP quit"
    status = qrap_env.daemon.proc.wait(10) if qrap_env.daemon.proc else None
    assert status == 0, f"passt --one-off exited {status} after its guest left"
