"""Another kernel, the host's root: booting the kernel matrix's guest.

Theory of operation: "passes here" (this machine's kernel is new) is not
"works on Debian 12", whose 6.1 kernel lacks TCP SO_PEEK_OFF and splices
and answers netlink its own way.  So the kernel matrix runs our pasta on
Debian 12's own kernel: ``test/kernel/fetch.sh`` unpacks it (cached under
``build/kernels``), and virtme-ng (``vng``, from PyPI) boots it under QEMU
TCG with the host's root file system shared read-only over 9p, writable
overlays on /etc, /tmp and /var, the kernel's modules bound over
/lib/modules.  The guest therefore runs the host's interpreter, its
packages and this tree, unchanged, and ``kernel_guest.py`` runs the cells
there.  virtme-ng is used rather than an initramfs of our own because it
does exactly this, module loading included; its one quirk here is that
without udev on the host its guest cannot find its virtio-serial ports, so
the command's output and exit status are read from the serial console
(``--verbose``), and results are the marked lines ``kernel_guest.py``
prints, never vng's exit status.

One boot serves the whole matrix (booting under TCG costs tens of seconds),
and the whole run is bounded: a guest that hangs is killed with its
process group, and the cells it did not report count as failed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FETCH = os.path.join(ROOT, "test", "kernel", "fetch.sh")
KERNELS_DIR = os.path.join(ROOT, "build", "kernels")
RUN_TIMEOUT = 480.0  # boot, pasta's start and every cell, on a busy host
FORWARDED_ENV = ("PASST_IMPL", "PASST_BIN_DIR")  # which programs the guest drives (impl.py)
_LINE = re.compile(r"^KMATRIX-(KERNEL|CELL|END)\b ?(.*)$")


class KernelError(RuntimeError):
    """The kernel could not be fetched or booted."""


@dataclass(frozen=True)
class CellResult:
    passed: bool
    detail: str  # seconds, and why it failed


@dataclass
class GuestRun:
    """What the guest reported: its kernel, each cell's result, whether it ended."""

    console: str = field(repr=False)
    seconds: float
    kernel: str = ""  # e.g. "6.1.0-57-amd64 so_peek_off=no"
    cells: dict[str, CellResult] = field(default_factory=dict)
    ended: bool = False

    def tail(self, chars: int = 6000) -> str:
        """The end of the console, for a failure's message."""
        return self.console[-chars:]


def fetch_kernel(outdir: str = KERNELS_DIR) -> str:
    """Debian 12's kernel (fetched once, then cached): the image's path."""
    result = subprocess.run([FETCH, outdir], capture_output=True, text=True, timeout=600)
    lines = result.stdout.split()
    if result.returncode != 0 or not lines or not os.path.isfile(lines[-1]):
        raise KernelError(f"{FETCH} failed:\n{result.stdout}{result.stderr}")
    return lines[-1]


def guest_command() -> str:
    """The shell command the guest runs: the cells, with the host's interpreter."""
    env = [f"{name}={os.environ[name]}" for name in FORWARDED_ENV if name in os.environ]
    argv = [
        "env", f"PYTHONPATH={ROOT}:{ROOT}/test", "PYTHONDONTWRITEBYTECODE=1", *env,
        sys.executable, "-m", "e2e.kernel_guest",
    ]
    # Console log level 1: kernel messages must not cut the marked lines.
    return f"dmesg -n 1; cd {shlex.quote(ROOT)} && exec {shlex.join(argv)}"


def vng_argv(vmlinuz: str) -> list[str]:
    """virtme-ng booting ``vmlinuz`` under TCG on the host's read-only root."""
    # pip's vng script: beside the interpreter, or beside the base interpreter
    # of a virtual environment (make deps) that found virtme-ng installed there.
    scripts = (os.path.dirname(sys.executable), os.path.join(sys.base_prefix, "bin"))
    vng = shutil.which("vng", path=os.pathsep.join(scripts)) or "vng"
    return [
        vng, "--run", vmlinuz, "--disable-kvm", "--force-9p", "--verbose",
        "--cpus", "2", "--memory", "2G", "--exec", guest_command(),
    ]


def parse(console: str, seconds: float) -> GuestRun:
    """The marked lines of ``console`` (kernel_guest.py's format)."""
    run = GuestRun(console, seconds)
    for raw in console.splitlines():
        match = _LINE.match(raw.strip())
        if match is None:
            continue
        kind, rest = match.groups()
        if kind == "KERNEL":
            run.kernel = rest
        elif kind == "CELL":
            label, verdict, detail = (rest.split(" ", 2) + ["", ""])[:3]
            run.cells[label] = CellResult(verdict == "PASS", detail)
        else:
            run.ended = True
    return run


def run_in_guest(vmlinuz: str, log_path: str, timeout: float = RUN_TIMEOUT) -> GuestRun:
    """Boot ``vmlinuz``, run the cells, power off; the console, parsed."""
    argv = vng_argv(vmlinuz)
    if not os.access(argv[0], os.X_OK):
        raise KernelError(f"virtme-ng is not installed ({argv[0]}): make deps")
    # vng runs virtme-run, found on PATH next to it.
    env = {**os.environ, "PATH": f"{os.path.dirname(argv[0])}:{os.environ.get('PATH', '')}"}
    began = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=ROOT, start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    with open(log_path, encoding="utf-8", errors="replace") as log:
        console = log.read()
    return parse(console, time.monotonic() - began)
