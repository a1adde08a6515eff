"""The kernel matrix's cells, run inside a guest booted on another kernel.

Theory of operation: ``test_kernels.py`` boots Debian 12's 6.1 kernel with
virtme-ng (``kernels.py``), the host's root shared read-only, and runs
``python3 -m e2e.kernel_guest`` in it.  Everything here then happens on the
guest's kernel: the suite's own world (``world.py``: "host" and "remote"
namespaces joined by veth), our pasta started in the host namespace with
``--config-net`` and the matrix's forwarded ports (``deploy.deploy_pasta``),
and the suite's own traffic checks (``traffic.py``): a TCP exchange of
``PAYLOAD_BYTES`` each way with a half-close, compared by SHA-256 on both
ends, and a UDP echo.  The cells are pasta's direction matrix (cells.py),
TCP and UDP, IPv4 and IPv6: through the tap both ways (``out``, ``out_host``,
``in``) and the spliced paths (``ns_to_host`` with ``-T``/``-U``, ``in_host``
from the host's loopback with ``-t``/``-u``).  iperf3 is left out: its
throughput under an emulated CPU means nothing, and the exchange already
moves several MiB each way.

The host reads the results from the console, one marked line each, so a
crash half-way leaves the missing cells visibly missing::

    KMATRIX-KERNEL <release> so_peek_off=<yes|no>
    KMATRIX-CELL <label> PASS|FAIL <seconds> [<why, on one line>]
    KMATRIX-END

Every check bounds its own waits (``traffic.py``); the host bounds the run.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
import traceback

from . import impl, traffic
from .cells import Cell, cell_id, matrix, path
from .deploy import Deployment, deploy_pasta

MARK = "KMATRIX"
CELLS = matrix("pasta")
MODULES = ("tun", "veth")
START_TIMEOUT = 240.0  # pasta's start under TCG: imports over 9p, on a busy host


def emit(*fields: str) -> None:
    """One marked line on the console, for the host to read."""
    print(MARK + "-" + " ".join(fields), flush=True)


def peek_off_supported() -> bool:
    """What passt.tcp.tap itself finds out about TCP SO_PEEK_OFF on this kernel."""
    from passt.tcp.tap import _peek_off_supported

    return _peek_off_supported()


def report_cell(cell: Cell, deployment: Deployment) -> bool:
    """Run ``cell`` and emit its line; whether it passed."""
    started = time.monotonic()
    try:
        traffic.data_check(path(cell, deployment.world, deployment.inner), cell.proto)
    except Exception as e:  # any failure is the cell's result, not the run's end
        seconds = f"{time.monotonic() - started:.1f}"
        why = " | ".join(f"{type(e).__name__}: {e}".splitlines())
        emit("CELL", cell_id(cell), "FAIL", seconds, why)
        deployment.after_test()
        return False
    emit("CELL", cell_id(cell), "PASS", f"{time.monotonic() - started:.1f}")
    return True


def main() -> int:
    subprocess.run(["modprobe", "-a", *MODULES], check=True, timeout=60)
    emit("KERNEL", platform.release(), f"so_peek_off={'yes' if peek_off_supported() else 'no'}")
    workdir = tempfile.mkdtemp(prefix="kmatrix-")
    try:
        deployment = deploy_pasta(impl.current(), workdir, start_timeout=START_TIMEOUT)
    except Exception:  # no END line: the host reports every cell as missing
        traceback.print_exc()
        return 1
    for note in deployment.notes:
        print(note, flush=True)
    passed = 0
    try:
        passed = sum(report_cell(cell, deployment) for cell in CELLS)
    finally:
        if passed < len(CELLS):
            print(deployment.daemon.describe()[-4000:], flush=True)
        deployment.teardown()
    emit("END")
    return 0 if passed == len(CELLS) else 1


if __name__ == "__main__":
    sys.exit(main())
