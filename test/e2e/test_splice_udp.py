"""Loopback UDP forwarding between real namespaces (``-u`` and ``-U``), both families.

A client on one side sends datagrams to a forwarded port on its loopback; a
server on the other side's loopback must receive exactly them, from the
loopback address, and its replies must come back to the client from the
forwarded port.  Flows expire after the (shortened) idle timeout.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from .test_splice_world import LOOPBACK, SpliceWorld

pytestmark = pytest.mark.e2e

U_PORT, U_NS_PORT = 16003, 16004
TIMEOUT = 2.0
FAMILIES = [pytest.param(socket.AF_INET, id="v4"), pytest.param(socket.AF_INET6, id="v6")]
DIRECTIONS = [pytest.param("host->ns", id="host-ns"), pytest.param("ns->host", id="ns-host")]


@pytest.fixture(scope="module")
def world() -> Iterator[SpliceWorld]:
    w = SpliceWorld("u", "-u", str(U_PORT), "-U", str(U_NS_PORT), "-t", "none", "-T", "none",
                    "--udp-timeout", str(TIMEOUT))
    try:
        yield w
    finally:
        w.close()


def endpoints(world: SpliceWorld, direction: str, family: int
              ) -> tuple[socket.socket, socket.socket, int]:
    """(client, server, port) for ``direction``; the client is unbound."""
    client_side, server_side, port = ((world.host, world.target, U_PORT)
                                      if direction == "host->ns"
                                      else (world.target, world.host, U_NS_PORT))
    server = world.server(server_side, family, port, socket.SOCK_DGRAM)
    client = client_side.call(socket.socket, family, socket.SOCK_DGRAM)
    client.settimeout(5)
    return client, server, port


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_echo_with_content_check(world: SpliceWorld, direction: str, family: int) -> None:
    client, server, port = endpoints(world, direction, family)
    sizes = [1, 100, 1400, 9000, 65000]
    payloads = [os.urandom(n) for n in sizes]
    for payload in payloads:
        client.sendto(payload, (LOOPBACK[family], port))
        data, source = server.recvfrom(65536)
        assert data == payload
        assert source[0] == LOOPBACK[family]
        assert source[1] == client.getsockname()[1]  # the sender's port is kept when free
        server.sendto(data[::-1], source)
        reply, origin = client.recvfrom(65536)
        assert reply == payload[::-1]
        assert origin[:2] == (LOOPBACK[family], port)
    client.close()


def test_senders_get_their_own_flows_and_flows_expire(world: SpliceWorld) -> None:
    family = socket.AF_INET
    clients = [endpoints(world, "host->ns", family)[0] for _ in range(3)]
    server = world.server(world.target, family, U_PORT, socket.SOCK_DGRAM)
    for i, c in enumerate(clients):
        c.sendto(b"client %d" % i, (LOOPBACK[family], U_PORT))
    seen = {}
    for _ in clients:
        data, source = server.recvfrom(100)
        seen[data] = source
    assert len(set(seen.values())) == 3
    for data, source in seen.items():
        server.sendto(b"re: " + data, source)
    for i, c in enumerate(clients):
        assert c.recvfrom(100)[0] == b"re: client %d" % i
    assert world.flows().get("udp_splice", 0) >= 3
    time.sleep(TIMEOUT + 0.5)
    assert world.wait_idle(TIMEOUT) == 0
    for c in clients:
        c.close()


def test_nobody_listening_on_target_drops_quietly(world: SpliceWorld) -> None:
    family = socket.AF_INET6
    client = world.host.call(socket.socket, family, socket.SOCK_DGRAM)
    client.settimeout(0.5)
    world.drop_server(world.target, family, U_PORT, socket.SOCK_DGRAM)
    for _ in range(3):
        client.sendto(b"anyone?", (LOOPBACK[family], U_PORT))
    with pytest.raises(TimeoutError):
        client.recvfrom(100)
    client.close()
    assert world.proc.poll() is None
