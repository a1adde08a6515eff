"""The kernel matrix: pasta's direction cells on Debian 12's own 6.1 kernel.

Theory of operation: one boot of the kernel (kernels.py) runs every cell
(kernel_guest.py) for the module; each cell is then one test here, passing
or failing on what the guest reported for it, so a failure names the cell
and says why (a SHA-256 mismatch says how many bytes arrived).  A kernel
that cannot be fetched or booted fails the tests, never skips them.  With
``PASST_IMPL=upstream`` the guest drives Debian's C pasta, and the cells
upstream is known to get wrong (features.py) are expected to fail, as in
test_pasta.py.
"""

from __future__ import annotations

import pytest

from . import features, impl, kernels
from .cells import Cell, cell_id
from .kernel_guest import CELLS

pytestmark = pytest.mark.e2e


def _param(cell: Cell) -> object:
    reason = features.upstream_failure(cell) if impl.current().name == "upstream" else None
    marks = [pytest.mark.xfail(reason=f"upstream: {reason}", strict=True)] if reason else []
    return pytest.param(cell_id(cell), marks=marks, id=cell_id(cell))


@pytest.fixture(scope="module")
def debian12(tmp_path_factory: pytest.TempPathFactory) -> kernels.GuestRun:
    """Debian 12's kernel booted once, every cell run in it."""
    vmlinuz = kernels.fetch_kernel()
    return kernels.run_in_guest(vmlinuz, str(tmp_path_factory.mktemp("kernel") / "console.log"))


def test_guest_kernel(debian12: kernels.GuestRun, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nkernel matrix: guest kernel {debian12.kernel or '(none reported)'}, "
              f"{len(debian12.cells)} cells in {debian12.seconds:.0f} s (boot included)")
    assert debian12.kernel.startswith("6.1."), f"not Debian 12's kernel:\n{debian12.tail()}"
    assert debian12.ended, f"the guest did not finish its cells:\n{debian12.tail()}"


@pytest.mark.parametrize("label", [_param(cell) for cell in CELLS])
def test_cell(debian12: kernels.GuestRun, label: str) -> None:
    result = debian12.cells.get(label)
    assert result is not None, f"the guest reported nothing for {label}:\n{debian12.tail()}"
    assert result.passed, f"{label} on {debian12.kernel}: {result.detail}"
