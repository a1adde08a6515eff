"""Spliced TCP between two real namespaces' loopbacks, both directions, both families.

The world (a "host" namespace with a veth to a "remote" one, and pasta's
target namespace) and the program under test come from
``bench/bench_splice.py``: its ``serve`` mode runs our forwarding and
splice modules as pasta would (``-t`` host → namespace, ``-T`` namespace →
host).  The test's own sockets are made inside each namespace by helper
threads that joined it, and moved to the test's thread: a socket stays in
the namespace it was created in.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .test_splice_world import (
    SpliceWorld,
    deliver_then_close,
    expect_reset,
    fill_until_blocked,
    read_to_eof,
    reset,
)

pytestmark = pytest.mark.e2e

MIB = 1 << 20
BIG = 256 * MIB
T_PORT, T_NS_PORT = 16001, 16002
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
FAMILIES = [pytest.param(socket.AF_INET, id="v4"), pytest.param(socket.AF_INET6, id="v6")]
DIRECTIONS = [pytest.param("host->ns", id="host-ns"), pytest.param("ns->host", id="ns-host")]


@pytest.fixture(scope="module")
def world() -> Iterator[SpliceWorld]:
    w = SpliceWorld("t", "-t", str(T_PORT), "-T", str(T_NS_PORT), "-u", "none", "-U", "none")
    try:
        yield w
    finally:
        w.close()


def pair(world: SpliceWorld, direction: str, family: int) -> tuple[socket.socket, socket.socket]:
    """(client, server) connected through the splice in ``direction``."""
    if direction == "host->ns":
        return world.connect(world.host, world.target, family, T_PORT)
    return world.connect(world.target, world.host, family, T_NS_PORT)


def send_stream(sock: socket.socket, size: int, digest: list[bytes]) -> None:
    """Send ``size`` pseudo-random bytes, then FIN; record their SHA-256."""
    block = os.urandom(MIB)
    h = hashlib.sha256()
    left = size
    while left:
        chunk = block[:left] if left < MIB else block
        sock.sendall(chunk)
        h.update(chunk)
        left -= len(chunk)
    sock.shutdown(socket.SHUT_WR)
    digest.append(h.digest())


def receive_stream(sock: socket.socket) -> tuple[int, bytes]:
    h = hashlib.sha256()
    buf = bytearray(4 * MIB)
    view = memoryview(buf)
    total = 0
    while True:
        n = sock.recv_into(buf)
        if not n:
            return total, h.digest()
        h.update(view[:n])
        total += n


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_256mib_sha256_then_reply_over_half_closed(world: SpliceWorld, direction: str,
                                                   family: int) -> None:
    client, server = pair(world, direction, family)
    sent: list[bytes] = []
    sender = threading.Thread(target=send_stream, args=(client, BIG, sent), daemon=True)
    start = time.monotonic()
    sender.start()
    total, digest = receive_stream(server)
    elapsed = time.monotonic() - start
    sender.join(30)
    print(f"spliced {direction} {family.name}: {total / MIB:.0f} MiB "
          f"in {elapsed:.2f} s = {total * 8 / elapsed / 1e9:.2f} Gbit/s")
    assert total == BIG
    assert sent and digest == sent[0]
    # the client half-closed: the other direction still works
    deliver_then_close(server, client, b"after half-close")
    assert world.wait_idle() == 0


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_server_half_closes_first(world: SpliceWorld, direction: str) -> None:
    client, server = pair(world, direction, socket.AF_INET)
    server.sendall(b"hello")
    server.shutdown(socket.SHUT_WR)
    assert read_to_eof(client) == b"hello"
    deliver_then_close(client, server, b"request after FIN")
    assert world.wait_idle() == 0


@pytest.mark.parametrize("victim", ["client", "server"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_reset_reaches_the_other_side(world: SpliceWorld, direction: str, victim: str) -> None:
    client, server = pair(world, direction, socket.AF_INET6)
    client.sendall(b"ping")
    assert server.recv(4) == b"ping"
    gone, survivor = (client, server) if victim == "client" else (server, client)
    reset(gone)
    expect_reset(survivor)
    assert world.wait_idle() == 0


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_stalled_reader_uses_no_cpu(world: SpliceWorld, direction: str) -> None:
    client, server = pair(world, direction, socket.AF_INET)
    sent = fill_until_blocked(client)
    cpu0 = world.cpu_seconds()
    time.sleep(3.0)
    cpu = world.cpu_seconds() - cpu0
    print(f"stalled {direction}: {sent / MIB:.1f} MiB in flight, pasta CPU over 3 s: "
          f"{cpu * 1000:.0f} ms")
    assert cpu <= 0.06
    client.shutdown(socket.SHUT_WR)
    assert len(read_to_eof(server)) == sent
    client.close()
    server.close()
    assert world.wait_idle() == 0


def test_no_descriptor_pipe_or_flow_left_after_every_way_of_closing(world: SpliceWorld) -> None:
    assert world.wait_idle() == 0
    fds_before = world.fds()
    for i in range(50):
        direction = "host->ns" if i % 2 else "ns->host"
        client, server = pair(world, direction, socket.AF_INET if i % 3 else socket.AF_INET6)
        client.sendall(b"x" * 1000)
        (reset if i % 5 == 0 else socket.socket.close)(client)
        (reset if i % 2 else socket.socket.close)(server)
    assert world.wait_idle() == 0
    assert world.fds() == fds_before
