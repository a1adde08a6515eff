"""File descriptors passed over UNIX sockets (``SCM_RIGHTS``).

Theory of operation
-------------------
QEMU hands the vhost-user back end its memory and eventfds this way, and
passt hands ``passt-repair`` the sockets to put in repair mode.  Either
receiver reads them the same way: every ``SCM_RIGHTS`` control message of a
``recvmsg``, whole ``int``s only (a truncated one is not a descriptor).
"""

from __future__ import annotations

import array
import socket

FD_SIZE = array.array("i").itemsize


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """File descriptors of ``SCM_RIGHTS`` control messages."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % FD_SIZE])
    return list(fds)
