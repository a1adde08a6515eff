"""passt with a QEMU guest: boot, L2 services, the direction matrix, shutdown.

One guest serves the whole module (conftest.py's ``passt_env``); the tests
run in file order: the boot checks first, then the direction matrix (its
inbound cells first, so that they reach a guest that has not yet sent
anything from its global address), the L2 checks, the clean shutdown last.

The same tests run over each of passt's back ends: ``passt_tests(variant)``
makes them, this module takes the stream socket's,
test_passt_vhost_user.py the vhost-user ones (cells ``passt vu_out tcp
v4``..., run as the plain cell ``passt out tcp v4``) and
test_passt_vhost_user_upstream.py the same against upstream 2026's
vhost-user (cells ``passt u26vu_out tcp v4``...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from . import l2, traffic
from .cells import Cell, cell_id, l2_cells, matrix
from .deploy import Deployment
from .guest import GUEST_MAC
from .test_passt_qrap import plain_cell, variant_params

pytestmark = pytest.mark.e2e

# variant → (back end, prefix of its cells' names)
VARIANTS = {"stream": ("stream", ""), "vhost-user": ("vhost-user", "vu"),
            "upstream2026 vhost-user": ("vhost-user", "u26vu")}
_PREFIXES = {prefix for _, prefix in VARIANTS.values() if prefix}


def _params(variant: str, plains: Iterable[Cell]) -> list[object]:
    prefix = VARIANTS[variant][1]
    if prefix:
        return variant_params(prefix, plains)
    return [pytest.param(cell, id=cell_id(cell)) for cell in plains]


def _plain(cell: Cell) -> Cell:
    return plain_cell(cell) if cell.name.split("_", 1)[0] in _PREFIXES else cell


def passt_tests(variant: str) -> dict[str, Callable[..., None]]:
    """The tests of this module for ``variant`` (``VARIANTS``), by name, to be put
    in a module that provides the ``passt_env`` fixture."""
    backend = VARIANTS[variant][0]

    @pytest.mark.parametrize("cell", _params(variant, [Cell("passt", "boot")]))
    def test_guest_boots_on_passt_socket(cell: Cell, passt_env: Deployment) -> None:
        guest = passt_env.guest
        assert guest is not None
        report = guest.report
        print(f"guest booted in {report.boot_seconds:.1f} s")
        assert report.initial_status == "prelaunch", f"QEMU started {report.initial_status}"
        assert f"type={backend}" in report.netdev_info, report.netdev_info
        if backend == "stream":
            assert guest.socket_path in report.netdev_info, report.netdev_info
        rx_filter = guest.qmp_command("query-rx-filter")
        assert [f["main-mac"] for f in rx_filter] == [GUEST_MAC]

    @pytest.mark.parametrize("cell", _params(variant, matrix("passt")))
    def test_direction(cell: Cell, passt_env: Deployment, record_property) -> None:
        throughput = traffic.run_cell(_plain(cell), passt_env.world, passt_env.inner)
        print(f"{cell.label}: {throughput.text}")
        record_property("throughput", throughput.text)

    @pytest.mark.parametrize("cell", _params(variant, l2_cells("passt", l2.CHECKS)))
    def test_l2(cell: Cell, passt_env: Deployment) -> None:
        plain = _plain(cell)
        print(l2.check(plain.name, plain.version, passt_env.inner))

    @pytest.mark.parametrize("cell", _params(variant, [Cell("passt", "shutdown")]))
    def test_qemu_quits_and_one_off_passt_follows(cell: Cell, passt_env: Deployment) -> None:
        assert passt_env.guest is not None
        assert passt_env.guest.shutdown(), "QEMU did not exit after QMP quit"
        status = passt_env.daemon.proc.wait(10) if passt_env.daemon.proc else None
        assert status == 0, f"passt --one-off exited {status} after its guest left"

    return {f.__name__: f for f in (test_guest_boots_on_passt_socket, test_direction, test_l2,
                                    test_qemu_quits_and_one_off_passt_follows)}


globals().update(passt_tests("stream"))
