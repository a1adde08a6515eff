"""``-t auto`` / ``-T auto``: forwarded ports follow what is bound on the other side.

A server started on one side after the forwarder started must become
reachable from the other side within a few scans, and unreachable again
once it stops; our own listeners (which show up in the same ``/proc/net``
tables) must never be mirrored back; and, as upstream, UDP follows the TCP
ports when no UDP option was given.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from passt.flow import fwd

from .test_splice_world import LOOPBACK, SpliceWorld, bench, read_to_eof

pytestmark = pytest.mark.e2e

WAIT = 5.0


@pytest.fixture(scope="module")
def world() -> Iterator[SpliceWorld]:
    w = SpliceWorld("a", "-t", "auto", "-T", "auto")
    try:
        yield w
    finally:
        w.close()


def bound(side: bench.NsThread, proto: str, port: int) -> bool:
    """Whether anyone (us included) has ``port`` bound on ``side``, either family."""
    state = fwd.TCP_LISTEN if proto == fwd.TCP else fwd.UDP_UNCONNECTED
    for name in (proto, proto + "6"):
        fds = side.call(fwd.open_proc_net, [name])
        try:
            if port in fwd.bound_ports(fwd.read_proc_file(fds[name]), state, set()):
                return True
        finally:
            for fd in fds.values():
                os.close(fd)
    return False


def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def try_connect(side: bench.NsThread, family: int, port: int) -> socket.socket | None:
    s = side.call(socket.socket, family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((LOOPBACK[family], port))
    except OSError:
        s.close()
        return None
    return s


@pytest.mark.parametrize("direction,port", [("host->ns", 16201), ("ns->host", 16202)])
def test_server_started_later_becomes_reachable_then_goes_away(world: SpliceWorld,
                                                               direction: str,
                                                               port: int) -> None:
    client_side, server_side = ((world.host, world.target) if direction == "host->ns"
                                else (world.target, world.host))
    assert not bound(client_side, fwd.TCP, port)
    server = world.server(server_side, socket.AF_INET6, port)
    assert eventually(lambda: bound(client_side, fwd.TCP, port)), "no listener appeared"
    client = try_connect(client_side, socket.AF_INET6, port)
    assert client is not None
    conn, _ = server.accept()
    client.sendall(b"auto")
    client.shutdown(socket.SHUT_WR)
    assert read_to_eof(conn) == b"auto"
    conn.close()
    client.close()
    world.drop_server(server_side, socket.AF_INET6, port)
    assert eventually(lambda: not bound(client_side, fwd.TCP, port)), "listener stayed"
    # our own listener, gone from one side, was never mirrored back onto the other
    time.sleep(2.5)
    assert not bound(client_side, fwd.TCP, port)
    assert not bound(server_side, fwd.TCP, port)
    assert world.wait_idle() == 0


def test_udp_follows_tcp_ports_without_udp_option(world: SpliceWorld) -> None:
    port = 16203
    server = world.server(world.target, socket.AF_INET, port)
    assert eventually(lambda: bound(world.host, fwd.UDP, port)), "UDP did not follow TCP"
    udp_server = world.server(world.target, socket.AF_INET, port, socket.SOCK_DGRAM)
    client = world.host.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.sendto(b"dgram", (LOOPBACK[socket.AF_INET], port))
    data, source = udp_server.recvfrom(100)
    assert data == b"dgram"
    udp_server.sendto(b"back", source)
    assert client.recvfrom(100)[0] == b"back"
    client.close()
    server.close()
    world.drop_server(world.target, socket.AF_INET, port, socket.SOCK_DGRAM)
    world.drop_server(world.target, socket.AF_INET, port)
    assert eventually(lambda: not bound(world.host, fwd.UDP, port))
