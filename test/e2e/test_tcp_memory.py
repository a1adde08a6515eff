"""Memory: 300 connections whose remote end never reads, while the namespace sends.

Theory of operation: issue 19.  What pasta accepts from the namespace and
cannot yet write to a socket, it holds; with many connections whose
remote side never reads, that adds up (it once grew pasta from 62 to
356 MiB, and 290 MiB stayed after every connection had closed).  Held
data must have a global bound, and closing must give it all back.

The remote namespace accepts ``CONNECTIONS`` connections and never reads
them (its receive buffers are kept small, ``REMOTE_RCVBUF``, so that the
data piles up on pasta's side, not in the remote kernel); the namespace
opens them through pasta's tap and sends on all of them until none takes
more for ``QUIET`` seconds (at most ``SEND_SECONDS``).  pasta's resident
memory (``VmRSS``) is read before, its peak (``VmHWM``) while sending, and
again once every connection is closed (the remote side first, with data
unread: a reset), for at most ``SETTLE`` seconds.  Bounds: peak growth
under ``PEAK_GROWTH_BOUND``, and back within ``RETURN_BOUND`` of the start;
pasta's descriptors back to their start too.  The figures are printed.
The namespace's sockets keep the kernel's default buffers (autotuned up
to ``net.ipv4.tcp_wmem``'s 4 MiB), as an application's would: smaller ones
feed pasta too slowly for anything to pile up.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator

import pytest

from passt.tcp.core import HOLD_BUDGET

from .deploy import Deployment
from .test_hostile_harness import TIMEOUT, TcpServer, Usage, in_netns, wait_for
from .world import V4

pytestmark = pytest.mark.e2e

MIB = 1 << 20
CONNECTIONS = 300
PORT = 7782
REMOTE_RCVBUF = 64 << 10
CHUNK = bytes(64 << 10)
SEND_SECONDS = 20.0
QUIET = 2.0
SETTLE = 10.0
# What the budget lets pasta hold, plus frame buffers, 300 flows and the
# interpreter's own arenas (about 35 MiB of growth in all, measured).
PEAK_GROWTH_BOUND = HOLD_BUDGET + 40 * MIB
RETURN_BOUND = 40 * MIB


class DeafServer(TcpServer):
    """Accepts connections and never reads them."""

    def __init__(self, netns: str, address: str, port: int) -> None:
        super().__init__(netns, address, port)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, REMOTE_RCVBUF)

    def serve(self) -> None:
        readable, _, _ = select.select([self.listener], [], [], 0.1)
        if readable:
            with contextlib.suppress(BlockingIOError):
                self.conns.append(self.listener.accept()[0])


def open_connections(netns: str) -> list[socket.socket]:
    def connect() -> socket.socket:
        s = socket.create_connection((V4.remote, PORT), timeout=TIMEOUT)
        s.setblocking(False)
        return s

    return in_netns(netns, lambda: [connect() for _ in range(CONNECTIONS)])


def send_until_stalled(conns: list[socket.socket], pid: int) -> tuple[int, Usage]:
    """Send on every connection until none takes more for QUIET s; bytes sent and
    the sample of pasta's usage with the highest peak."""
    sent = 0
    peak = Usage.of(pid)
    last_progress = began = time.monotonic()
    while time.monotonic() - last_progress < QUIET and time.monotonic() - began < SEND_SECONDS:
        _, writable, _ = select.select([], conns, [], 0.2)
        for s in writable:
            with contextlib.suppress(BlockingIOError):
                sent += s.send(CHUNK)
                last_progress = time.monotonic()
        now = Usage.of(pid)
        peak = now if now.peak_kib > peak.peak_kib else peak
    return sent, peak


@contextlib.contextmanager
def closing_all(server: DeafServer, conns: list[socket.socket]) -> Iterator[None]:
    """Close the remote ends (unread data: resets), then the namespace's, on the way out."""
    try:
        yield
    finally:
        server.close()
        for s in conns:
            s.close()


def released(pid: int, before: Usage) -> bool:
    """``pid`` holds the descriptors it held ``before``, and memory within RETURN_BOUND."""
    now = Usage.of(pid)
    return now.kinds == before.kinds and (now.rss_kib - before.rss_kib) << 10 < RETURN_BOUND


def test_pasta_memory_with_300_unread_connections(pasta_env: Deployment) -> None:
    world = pasta_env.world
    assert pasta_env.daemon.proc is not None
    pid = pasta_env.daemon.proc.pid
    server = DeafServer(world.remote_ns, V4.remote, PORT)
    before = Usage.of(pid)
    conns = open_connections(world.extra_ns[0])
    with closing_all(server, conns):
        sent, peak = send_until_stalled(conns, pid)
        assert pasta_env.daemon.alive(), pasta_env.daemon.describe()
    began = time.monotonic()
    try:
        wait_for(lambda: released(pid, before), SETTLE,
                 "pasta to release the connections and their data", 0.25)
    finally:
        after = Usage.of(pid)
        growth = (peak.peak_kib - before.rss_kib) << 10
        print(f"{CONNECTIONS} connections never read remotely: the namespace sent "
              f"{sent / MIB:.0f} MiB; pasta RSS {before.rss_kib >> 10} MiB before, "
              f"peak {peak.peak_kib >> 10} MiB (growth {growth / MIB:.0f} MiB, bound "
              f"{PEAK_GROWTH_BOUND // MIB}: hold budget {HOLD_BUDGET // MIB} + 40), "
              f"{after.rss_kib >> 10} MiB "
              f"{time.monotonic() - began:.1f} s after closing (bound: start + "
              f"{RETURN_BOUND // MIB}); descriptors {before.fds} -> {peak.fds} -> {after.fds}")
    assert growth < PEAK_GROWTH_BOUND
