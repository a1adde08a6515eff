"""passt's end of the ``passt-repair`` channel: sockets in and out of TCP_REPAIR.

Theory of operation
-------------------
Dumping and restoring a TCP socket (sequence numbers, queues, windows) needs
the socket in repair mode (``TCP_REPAIR``), and setting that needs
``CAP_NET_ADMIN``, which passt gives up at start.  ``passt-repair``
(``passt.repair_helper``), a separate process with that capability and
nothing else to do, connects to the UNIX socket passt listens on for it
(``--repair-path``, by default the vhost-user socket's path with ``.repair``
appended; ``none``: no helper).  The protocol is upstream's: passt sends one
byte, the command (``REPAIR_ON`` 1, ``REPAIR_OFF`` 0, ``REPAIR_OFF_NO_WP``
-1, as ``TCP_REPAIR``'s values), with up to ``SCM_MAX_FD`` descriptors as
``SCM_RIGHTS``; the helper sets the option on each and echoes the byte.

One helper at a time: a second one is accepted and closed at once.  The
helper may connect at any time before a migration; when one starts, passt
waits ``ACCEPT_TIMEOUT`` for it if it is not there yet, as upstream does.
The channel is used only during a migration, which is a blocking
interruption of the event loop anyway, so it is blocking and not watched.
The socket file is removed at exit, as passt's own (``fsref``).
"""

from __future__ import annotations

import array
import os
import socket

from passt import log
from passt.fsref import FileRef

REPAIR_ON, REPAIR_OFF, REPAIR_OFF_NO_WP = 1, 0, -1
SCM_MAX_FD = 253  # the kernel's limit of descriptors per message (include/net/scm.h)
ACCEPT_TIMEOUT = 0.01
REPLY_TIMEOUT = 10.0  # a helper that does not answer in this time is gone
SUFFIX = ".repair"


class RepairError(OSError):
    """The helper is missing, or did not do what it was told; one line."""


def default_path(socket_path: str) -> str:
    return socket_path + SUFFIX


class RepairChannel:
    """The listening socket for the helper, and the helper once connected."""

    def __init__(self, listener: socket.socket | None, bound: FileRef | None = None) -> None:
        self._listener = listener
        self._bound = bound  # the socket file, removed at exit (after isolation too)
        self._helper: socket.socket | None = None

    @classmethod
    def listen(cls, path: str | None) -> RepairChannel:
        """Listen on ``path`` (None or "none": no helper, TCP connections won't migrate)."""
        if path in (None, "none"):
            return cls(None)
        assert path is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        try:
            sock.bind(path)
            sock.listen(1)
            bound = FileRef(path)
        except OSError as e:
            sock.close()
            log.warn("passt-repair socket %s: %s, won't migrate TCP connections", path,
                     e.strerror)
            return cls(None)
        return cls(sock, bound)

    @property
    def connected(self) -> bool:
        return self._helper is not None

    def wait(self, timeout: float = ACCEPT_TIMEOUT) -> bool:
        """Take the helper's connection if it came (waiting ``timeout``); whether we have one."""
        listener = self._listener
        if self._helper is not None or listener is None:
            return self._helper is not None
        listener.settimeout(timeout)
        try:
            helper, _ = listener.accept()
        except (TimeoutError, BlockingIOError):
            return False
        finally:
            listener.setblocking(False)
        helper.setblocking(True)
        helper.settimeout(REPLY_TIMEOUT)
        self._helper = helper
        log.info("Accepted TCP_REPAIR helper")
        return True

    def set(self, fds: list[int], command: int) -> None:
        """Have the helper set ``TCP_REPAIR`` to ``command`` on ``fds``; ``RepairError``."""
        helper = self._helper
        if helper is None:
            raise RepairError(0, "no passt-repair helper connected")
        for start in range(0, len(fds), SCM_MAX_FD):
            batch = array.array("i", fds[start:start + SCM_MAX_FD])
            byte = command.to_bytes(1, "little", signed=True)
            try:
                helper.sendmsg([byte], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, batch)])
                reply = helper.recv(1)
            except OSError as e:
                self.close_helper()
                raise RepairError(e.errno or 0, f"passt-repair: {e.strerror or e}") from None
            if reply != byte:
                self.close_helper()
                raise RepairError(0, f"unexpected reply {reply!r} from passt-repair")

    def close_helper(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None

    def close(self) -> None:
        self.close_helper()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._bound is not None:
            self._bound.remove()
            self._bound = None
