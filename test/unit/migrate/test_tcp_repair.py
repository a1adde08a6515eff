"""migrate/tcp.py against the kernel: a loopback connection dumped, closed in repair
mode, restored on a new socket, and still carrying data both ways, queues included.

Needs CAP_NET_ADMIN (TCP_REPAIR): skipped without it.  The repair channel is
replaced by direct ``setsockopt`` calls (passt-repair's own test covers it)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest

from passt.migrate import tcp as mtcp
from passt.migrate import wire

TCP_REPAIR = 19


class DirectRepair:
    """A RepairChannel that sets the option itself (we are root here)."""

    def set(self, fds: list[int], command: int) -> None:
        for fd in fds:
            with socket.socket(fileno=os.dup(fd)) as s:
                s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, command)


def _can_repair() -> bool:
    with socket.socket() as s:
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        except PermissionError:
            return False
    return True


pytestmark = pytest.mark.skipif(not _can_repair(), reason="needs CAP_NET_ADMIN")


def _pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    ours = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    return listener, ours, peer


def _moved(ours: socket.socket, edit: Callable[[wire.TcpSocketRecord], None] | None = None,
           ) -> socket.socket:
    """``ours`` dumped in repair mode, closed (silently), restored on a new socket."""
    local, remote = ours.getsockname(), ours.getpeername()
    repair = DirectRepair()
    repair.set([ours.fileno()], 1)
    state = mtcp.dump_socket(ours)
    ours.close()
    if edit is not None:
        edit(state)
    side = wire.FlowSide(wire.inany(socket.inet_aton(local[0])),
                         wire.inany(socket.inet_aton(remote[0])), local[1], remote[1])
    new = socket.socket()
    new.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    new.setblocking(False)
    repair.set([new.fileno()], 1)
    mtcp.restore_socket(new, side, state, repair)  # type: ignore[arg-type]
    new.setblocking(True)
    new.settimeout(5)
    return new


def test_dump_close_restore_keeps_the_connection_and_its_queues() -> None:
    listener, ours, peer = _pair()
    with listener, peer:
        peer.sendall(b"unread by us")  # sits in our receive queue
        ours.sendall(b"sent before")
        assert peer.recv(100) == b"sent before"

        def check(state: wire.TcpSocketRecord) -> None:
            assert state.recv_queue == b"unread by us"
            assert state.tcpi_state == 1  # TCP_ESTABLISHED

        with _moved(ours, check) as new:
            peer.settimeout(5)
            assert new.recv(100) == b"unread by us"
            new.sendall(b"after")
            assert peer.recv(100) == b"after"
            peer.sendall(b"back")
            assert new.recv(100) == b"back"


def test_unsent_data_goes_out_after_restore() -> None:
    listener, ours, peer = _pair()
    with listener, peer:

        def unsent(state: wire.TcpSocketRecord) -> None:
            state.send_queue, state.notsent = b"queued", 6  # as if the kernel had not sent it

        with _moved(ours, unsent):
            peer.settimeout(5)
            assert peer.recv(100) == b"queued"


def test_megabytes_of_unsent_data_fit_a_default_socket() -> None:
    """A send queue far beyond a new socket's default buffer (the peer's window
    closed): restored whole, then delivered whole once the peer reads."""
    listener, ours, peer = _pair()
    with listener, peer:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        ours.setblocking(False)
        data = os.urandom(3 << 20)
        queued = 0
        try:
            while queued < len(data):
                queued += ours.send(data[queued:])
        except BlockingIOError:
            pass

        def large(state: wire.TcpSocketRecord) -> None:
            assert len(state.send_queue) > 1 << 20

        with _moved(ours, large):
            peer.settimeout(10)
            got = bytearray()
            while len(got) < queued:
                chunk = peer.recv(1 << 20)
                assert chunk
                got += chunk
            assert bytes(got) == data[:queued]
