"""A throw-away copy of a root file system, in private mount and PID namespaces.

Theory of operation
-------------------
Packages must be installed with apt, for real, without changing this
machine, whose Debian ``passt`` other engineers' comparison tests may be
running at this very moment.  So each package test works in an overlay
mount whose lower layer is a root file system (this machine's ``/``, or the
stock Debian 12 root ``make debian12-root`` keeps under build/) and whose
upper layer is a tmpfs, in a private mount and PID namespace (``unshare``),
made the root there with ``pivot_root`` and entered with ``nsenter``.  The
network namespace is the machine's: apt may download, where a test allows
it.  Directories and files of the machine can be bound into the copy first
(apt's download cache, kept under build/; the machine's trusted
certificates, for a network whose HTTPS proxy has its own authority).

The overlay becomes the root of the mount namespace (``pivot_root``, not
``chroot``: the kernel refuses new user namespaces to a chrooted process,
and pasta creates them).  The old root is detached; the overlay keeps its
layers alive by itself.  When the test ends, or dies, the holder process
reads end-of-file on its standard input and exits: as the PID namespace's
init it takes every process started inside with it, and the mounts
disappear with the namespace.
"""

from __future__ import annotations

import os
import select
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

HOLDER_SCRIPT = """
mount -t tmpfs -o size=3g,mode=755 passt-py-overlay "$W"
mkdir "$W/upper" "$W/work" "$W/root"
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$W/upper,workdir=$W/work" "$W/root"
mount -t proc proc "$W/root/proc"
mount --rbind /sys "$W/root/sys"
mount --rbind /dev "$W/root/dev"
eval "$BINDS"
cd "$W/root"
mkdir -p .old-root
pivot_root . .old-root
cd /
umount -l /.old-root
rmdir /.old-root
echo ready
exec cat >/dev/null
"""


def run(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def tail(result: subprocess.CompletedProcess[str], size: int = 4000) -> str:
    return f"exit {result.returncode}\n{result.stdout[-size:]}\n{result.stderr[-size:]}"


def _bind_target(outside: Path, inside: str) -> str:
    """Shell command making the mount point for ``outside``: a directory or a file."""
    if outside.is_dir():
        return f'mkdir -p "$W/root{inside}"'
    return f'mkdir -p "$(dirname "$W/root{inside}")"; touch "$W/root{inside}"'


class Overlay:
    """A copy-on-write copy of ``lower`` (default ``/``), as root of private namespaces.

    ``binds`` maps directories of this machine to paths inside the copy.
    """

    def __init__(self, workdir: Path, lower: Path = Path("/"),
                 binds: Mapping[Path, str] | None = None) -> None:
        bind_lines = "".join(
            f'{_bind_target(outside, inside)}; mount --bind {shlex.quote(str(outside))} '
            f'"$W/root{inside}"\n' for outside, inside in (binds or {}).items())
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
             "sh", "-euc", HOLDER_SCRIPT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=dict(os.environ, W=str(workdir), LOWER=str(lower), BINDS=bind_lines))
        ready, _, _ = select.select([self.holder.stdout], [], [], 60)
        if not ready or self.holder.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"overlay set-up failed: {self.holder.stderr.read()}")
        self.init_pid = self._namespace_init()

    def _namespace_init(self) -> int:
        """Host PID of the holder's child, the init of the new PID namespace."""
        pid = self.holder.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0])

    def _enter(self, argv: list[str], cwd: str) -> list[str]:
        return ["nsenter", f"--target={self.init_pid}", "--mount", "--pid", "--root",
                "sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]

    def run(self, argv: list[str], timeout: float = 600, cwd: str = "/",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside, as root, in ``cwd`` (a path inside)."""
        return run(self._enter(argv, cwd), timeout=timeout, env=env)

    def put(self, source: Path, files: list[str], inside: str) -> None:
        """Copy ``files`` (relative to ``source``) to the directory ``inside``."""
        archive = subprocess.run(["tar", "-C", str(source), "--null", "-T", "-", "-cf", "-"],
                                 input="\0".join(files).encode(), capture_output=True,
                                 check=True, timeout=120).stdout
        subprocess.run(self._enter(["sh", "-c", 'mkdir -p "$0" && tar -xf - -C "$0"', inside],
                                   "/"), input=archive, capture_output=True, check=True,
                       timeout=120)

    def close(self) -> None:
        if self.holder.stdin:
            self.holder.stdin.close()
        try:
            self.holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait(timeout=30)
