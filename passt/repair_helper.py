"""passt-repair: set or clear TCP_REPAIR on sockets passt sends, and nothing else.

Theory of operation
-------------------
``passt-repair PATH`` connects to the UNIX socket passt listens on for it
(``--repair-path``; if ``PATH`` is a directory, it takes the socket there
whose name ends in ``.repair``, waiting with inotify for one to appear),
then loops: one
message from passt is one command byte (``TCP_REPAIR``'s values: 1 on, 0
off, -1 off without window probes) and up to 253 socket descriptors
(``SCM_RIGHTS``); it sets the option on each, closes its copy, and echoes
the byte.  End of file from passt ends it with status 0; anything odd
(bad command, no descriptors, a refused ``setsockopt``) with status 1 and
one line; a usage error with status 2.  The protocol is upstream's, so
either passt can use either helper.

It needs ``CAP_NET_ADMIN`` (``TCP_REPAIR`` asks for it) and nothing else:
before reading anything from passt it sets ``no_new_privs`` and installs
its own seccomp allow-list (``SYSCALLS``: the socket calls above, the
interpreter's memory and signal calls, inotify for the directory case),
so a confused or hostile passt can make it do nothing but toggle the
option on sockets passt already owns.
"""

from __future__ import annotations

import ctypes
import os
import socket
import stat
import sys

from passt.host import inotify, seccomp
from passt.host.inotify import IN_CREATE
from passt.migrate.repair import REPAIR_OFF, REPAIR_OFF_NO_WP, REPAIR_ON, SCM_MAX_FD, SUFFIX
from passt.scm import FD_SIZE, received_fds

TCP_REPAIR = 19
COMMANDS = (REPAIR_ON, REPAIR_OFF, REPAIR_OFF_NO_WP)
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True)

SYSCALLS = tuple((
    "brk mmap munmap mremap madvise mprotect futex rt_sigaction rt_sigprocmask "
    "rt_sigreturn clock_gettime getrandom getpid close fcntl fstat newfstatat lseek ioctl "
    "read write exit exit_group socket connect setsockopt getsockopt sendto recvfrom "
    "sendmsg recvmsg inotify_init1 inotify_add_watch stat statx openat getdents64"
).split())


class Failure(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _confine() -> None:
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        raise Failure("Failed to set no_new_privs")
    if os.environ.get("PASST_NO_SECCOMP") == "1":
        return
    try:
        seccomp.install(SYSCALLS)
    except OSError as e:
        raise Failure(f"Failed to apply seccomp filter: {e}") from None


def wait_for_socket(directory: str) -> str:
    """The path of the first ``*.repair`` entry created in ``directory``."""
    fd = _inotify(directory)
    try:
        present = [entry.path for entry in os.scandir(directory)  # there before the watch
                   if entry.name.endswith(SUFFIX) and stat.S_ISSOCK(entry.stat().st_mode)]
        if present:
            return present[0]
        while True:
            for name in inotify.names(os.read(fd, 4096), IN_CREATE):
                if name.endswith(SUFFIX):
                    return os.path.join(directory, name)
    finally:
        os.close(fd)


def _inotify(directory: str) -> int:
    fd = _libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or _libc.inotify_add_watch(fd, os.fsencode(directory), IN_CREATE) < 0:
        raise Failure(f"inotify on {directory}: {os.strerror(ctypes.get_errno())}")
    return int(fd)


def connect(path: str) -> socket.socket:
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise Failure(f"Can't stat() {path}: {e.strerror}") from None
    waiting = stat.S_ISDIR(mode)
    if waiting:
        path = wait_for_socket(path)
        mode = os.stat(path).st_mode
    if not stat.S_ISSOCK(mode):
        raise Failure(f"{path} is not a socket", 2)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            sock.connect(path)
            return sock
        except ConnectionRefusedError:
            if not waiting:
                raise Failure(f"Failed to connect to {path}: connection refused") from None
        except OSError as e:
            raise Failure(f"Failed to connect to {path}: {e.strerror}") from None


def serve(sock: socket.socket) -> None:
    """Answer passt's commands until it closes the connection."""
    while True:
        try:
            data, ancillary, _flags, _ = sock.recvmsg(
                1, socket.CMSG_SPACE(SCM_MAX_FD * FD_SIZE))
        except ConnectionResetError:
            return
        if not data:
            return
        fds = _descriptors(ancillary)
        command = int.from_bytes(data, "little", signed=True)
        try:
            if command not in COMMANDS:
                raise Failure(f"Unsupported command {command:#04x}")
            for fd in fds:
                _set_repair(fd, command)
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(data)


def _set_repair(fd: int, command: int) -> None:
    value = ctypes.c_int(command)
    if _libc.setsockopt(fd, socket.IPPROTO_TCP, TCP_REPAIR, ctypes.byref(value), 4):
        raise Failure(f"Setting TCP_REPAIR to {command} on socket {fd}: "
                      f"{os.strerror(ctypes.get_errno())}")


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = received_fds(ancillary)
    if not fds:
        raise Failure("No/bad ancillary data from peer")
    return fds


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        _confine()
        if len(args) != 1:
            raise Failure(f"Usage: {os.path.basename(sys.argv[0])} PATH", 2)
        with connect(args[0]) as sock:
            serve(sock)
    except Failure as e:
        print(e, file=sys.stderr)
        return e.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
