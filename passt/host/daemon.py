"""PID file and daemonizing: the parent exits only once the child is ready.

Theory of operation
-------------------
libvirt starts passt, waits for the command to exit, and then starts QEMU
against the socket: exit status 0 must mean "the socket listens".  So we do
not fork after setting up (where an error would have nowhere to go) nor
before without care: ``daemonize`` forks *early*, before any thread exists,
and the parent blocks on a pipe until the child reports.

* The child calls ``setsid`` at once and carries on initialising, still
  writing to the caller's stderr: if it fails, its error line is seen there
  and it exits non-zero.  The parent sees end-of-file on the pipe without the
  ready byte, reaps the child and exits with its status (1 at least).
* When the child is ready (socket listening, namespace configured), it calls
  ``Readiness.ready()``: the PID file gets the child's PID, stdio is
  redirected to ``/dev/null`` (opened in advance: after isolation there is no
  ``/dev`` to open), logging switches to syslog, and one byte goes down the
  pipe.  The parent then exits 0 with ``os._exit``, so that nothing of the
  shared Python state (atexit handlers, finalizers removing the socket file)
  runs twice.

In the foreground, the same ``Readiness`` object only writes the PID file:
callers have one code path, ``readiness.ready()``, for both modes.

The PID file is opened before anything starts (``PidFile.open``), so that an
unwritable path is refused with one clear line at once, and written when
ready, after which the descriptor is closed: upstream's behaviour, and the
only one that works once the filesystem is out of reach.
"""

from __future__ import annotations

import os
import sys

from passt import log
from passt.errors import StartupError
from passt.fsref import FileRef

READY = b"R"


class DaemonError(StartupError):
    """A PID file or daemonizing problem, with a one-line message."""


class PidFile:
    """A PID file opened early and written once, when the process is ready."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd: int | None = fd
        self.path = path
        self._ref = FileRef(path)

    @classmethod
    def open(cls, path: str) -> PidFile:
        flags = os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC
        try:
            return cls(os.open(path, flags, 0o600), path)
        except OSError as e:
            raise DaemonError(f"Couldn't open PID file {path}: {e.strerror}") from None

    def write(self, pid: int) -> None:
        """Write ``pid`` and close the file; later calls do nothing."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, f"{pid}\n".encode())
        except OSError as e:
            raise DaemonError(f"Couldn't write PID file {self.path}: {e.strerror}") from None
        finally:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """At exit: close, and remove the file if it is still ours."""
        self.close()
        self._ref.remove()


class Readiness:
    """What the (possibly daemonized) process does once it is ready to serve."""

    def __init__(self, pidfile: PidFile | None, parent: tuple[int, int] | None = None) -> None:
        """``parent``: (pipe to the waiting parent, /dev/null) when daemonized."""
        self._pidfile = pidfile
        self._parent = parent

    def ready(self) -> None:
        """Write the PID file and, if daemonized, detach and release the parent."""
        if self._pidfile is not None:
            self._pidfile.write(os.getpid())
            self._pidfile = None
        if self._parent is None:
            return
        pipe_fd, devnull_fd = self._parent
        self._parent = None
        _redirect_stdio(devnull_fd)
        log.set_detached()
        try:
            os.write(pipe_fd, READY)
        finally:
            os.close(pipe_fd)


def foreground(pidfile: PidFile | None = None) -> Readiness:
    """No fork: ``ready()`` only writes our own PID to ``pidfile``."""
    return Readiness(pidfile)


def daemonize(pidfile: PidFile | None = None) -> Readiness:
    """Fork; return in the child only.  Call before starting any thread.

    The parent waits for the child's ``ready()`` and exits 0, or exits with
    the child's status (at least 1) if the child ends before being ready.
    """
    devnull_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        status = 1
        try:
            os.close(write_fd)
            status = _wait_for_child(read_fd, pid)
        finally:
            os._exit(status)
    os.close(read_fd)
    os.setsid()
    return Readiness(pidfile, (write_fd, devnull_fd))


def _wait_for_child(read_fd: int, pid: int) -> int:
    """Parent side: 0 once the child says it's ready, else its failure status."""
    if os.read(read_fd, 1) == READY:
        return 0
    _, status = os.waitpid(pid, 0)
    return max(os.waitstatus_to_exitcode(status), 1)


def _redirect_stdio(devnull_fd: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (0, 1, 2):
        os.dup2(devnull_fd, fd)
    os.close(devnull_fd)
