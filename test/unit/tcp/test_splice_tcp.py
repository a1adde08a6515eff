"""Spliced TCP within one namespace: the listener and the target both on loopback.

The "namespace" side is this process's own namespace (``ns_call`` runs the
function directly), which exercises everything but ``setns``: accepting,
connecting, moving data both ways, half-close, resets, back-pressure and
cleanup.  The event loop runs on a thread of its own; the test talks to it
through ordinary blocking sockets with timeouts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from e2e.test_splice_world import (
    deliver_then_close,
    expect_reset,
    fill_until_blocked,
    read_to_eof,
    reset,
)

from passt.flow import fwd as fwdmod
from passt.flow.table import FlowTable
from passt.loop import EventLoop
from passt.tcp.splice import TcpSplice

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
FAMILIES = [pytest.param(socket.AF_INET, id="v4"), pytest.param(socket.AF_INET6, id="v6")]


def call_here(fn: Callable, *args: object) -> object:
    return fn(*args)


class LoopThread:
    """An EventLoop driven on a thread until stopped; records its CPU time."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.cpu = 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.loop.run_once(0.05)
                self.cpu = time.thread_time()
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def call(self, fn: Callable[[], object], timeout: float = 5.0) -> object:
        """Run ``fn`` on the loop thread (between iterations) and return its result."""
        done = threading.Event()
        box: list[object] = []
        self.loop.call_later(0, lambda: (box.append(fn()), done.set()))
        assert done.wait(timeout), "loop thread did not answer"
        return box[0]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.error is not None:
            raise self.error


class Harness:
    """Listener → TcpSplice → target server, all on loopback of one family."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.loop = EventLoop()
        self.flows = FlowTable()
        self.splice = TcpSplice(self.loop, self.flows, call_here, families=(family,))
        self.fwd = fwdmod.Forwarder(self.loop, call_here)
        self.fwd.handlers.tcp_splice = self.splice.accept
        self.server = socket.socket(family, socket.SOCK_STREAM)
        self.server.bind((LOOPBACK[family], 0))
        self.server.listen(16)
        self.server.settimeout(10)
        self.target_port = self.server.getsockname()[1]
        listen = fwdmod.Listen(fwdmod.TCP, fwdmod.HOST, family, LOOPBACK[family], 0)
        self.listener = self.fwd.open(listen, self.target_port)
        self.port = self.listener.sock.getsockname()[1]
        self.runner = LoopThread(self.loop)

    def connect(self) -> tuple[socket.socket, socket.socket]:
        """A client connected through the splice, and the server's end of it."""
        client = socket.create_connection((LOOPBACK[self.family], self.port), timeout=10)
        conn, _ = self.server.accept()
        conn.settimeout(10)
        return client, conn

    def flow_count(self) -> int:
        return int(self.runner.call(lambda: self.flows.stats()["total"]))

    def wait_no_flows(self, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while (n := self.flow_count()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return n

    def close(self) -> None:
        self.runner.stop()
        self.splice.close()
        self.fwd.close()
        self.server.close()
        self.loop.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=FAMILIES)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(request.param)
    try:
        yield h
    finally:
        h.close()


def send_all_then_fin(sock: socket.socket, data: bytes) -> threading.Thread:
    def run() -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("size", [1, 100_000, 16 << 20])
def test_transfer_both_directions_with_half_close(harness: Harness, size: int) -> None:
    client, server = harness.connect()
    up = os.urandom(size)
    down = os.urandom(size // 2 + 1)
    sender = send_all_then_fin(client, up)
    got_up = read_to_eof(server)
    sender.join(10)
    # the client half-closed; the other direction keeps flowing
    server.sendall(down)
    server.close()
    got_down = read_to_eof(client)
    client.close()
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert harness.wait_no_flows() == 0


def test_server_half_close_first(harness: Harness) -> None:
    client, server = harness.connect()
    server.sendall(b"banner\n")
    server.shutdown(socket.SHUT_WR)
    assert read_to_eof(client) == b"banner\n"
    deliver_then_close(client, server, b"still talking")
    assert harness.wait_no_flows() == 0


@pytest.mark.parametrize("who", ["server", "client"])
def test_reset_propagates(harness: Harness, who: str) -> None:
    client, server = harness.connect()
    client.sendall(b"x")
    assert server.recv(1) == b"x"
    victim, survivor = (server, client) if who == "server" else (client, server)
    reset(victim)
    expect_reset(survivor)
    assert harness.wait_no_flows() == 0


def test_refused_target_resets_client(harness: Harness) -> None:
    harness.server.close()
    client = socket.socket(harness.family, socket.SOCK_STREAM)
    client.settimeout(10)
    with pytest.raises(ConnectionResetError):  # in connect() already, or at the first read
        client.connect((LOOPBACK[harness.family], harness.port))
        client.recv(1)
    client.close()
    assert harness.wait_no_flows() == 0


def test_stalled_reader_costs_no_cpu_and_nothing_grows(harness: Harness) -> None:
    client, server = harness.connect()
    # fill everything up to the stalled server: client send buffer, pipe, receive buffers
    sent = fill_until_blocked(client)
    cpu0 = harness.runner.cpu
    time.sleep(2.0)
    cpu = harness.runner.cpu - cpu0
    print(f"stalled: {sent} bytes in flight, loop CPU over 2 s: {cpu * 1000:.1f} ms")
    assert cpu < 0.05
    # now drain: every byte arrives
    client.shutdown(socket.SHUT_WR)
    assert len(read_to_eof(server)) == sent
    client.close()
    server.close()
    assert harness.wait_no_flows() == 0


def test_many_short_connections_leave_nothing_behind(harness: Harness) -> None:
    baseline = open_fds()
    for i in range(200):
        client, server = harness.connect()
        client.sendall(b"%d" % i)
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(server) == b"%d" % i
        server.close()
        assert read_to_eof(client) == b""
        client.close()
    assert harness.wait_no_flows() == 0
    # pools may have been refilled to their size again, nothing else remains
    pool_fds = int(harness.runner.call(harness.splice.pools.open_fds))
    assert open_fds() <= baseline + pool_fds


def test_interactive_after_bulk_is_not_held_by_rcvlowat(harness: Harness) -> None:
    client, server = harness.connect()
    bulk = os.urandom(8 << 20)
    sender = threading.Thread(target=client.sendall, args=(bulk,), daemon=True)
    sender.start()
    got = 0
    while got < len(bulk):
        got += len(server.recv(1 << 20))
    sender.join(10)
    rtts = []
    for i in range(20):
        start = time.monotonic()
        client.sendall(b"%02d" % i)
        assert server.recv(2) == b"%02d" % i
        server.sendall(b"ok")
        assert client.recv(2) == b"ok"
        rtts.append(time.monotonic() - start)
    print(f"round trips after bulk: first {rtts[0] * 1000:.1f} ms, "
          f"max {max(rtts) * 1000:.1f} ms, last {rtts[-1] * 1000:.2f} ms")
    assert max(rtts) < 2.0
    client.close()
    server.close()


def test_full_flow_table_resets_new_connections_only(harness: Harness) -> None:
    client, server = harness.connect()
    harness.runner.call(lambda: setattr(harness.flows, "max_flows", 1))
    refused = socket.socket(harness.family, socket.SOCK_STREAM)
    refused.settimeout(10)
    with pytest.raises(ConnectionResetError):
        refused.connect((LOOPBACK[harness.family], harness.port))
        refused.recv(1)
    refused.close()
    deliver_then_close(client, server, b"old one still works")
    assert harness.wait_no_flows() == 0


def test_pipe_sizes_probed_and_fallen_back_to(tmp_path) -> None:
    """The probe finds what F_SETPIPE_SZ grants (pipe-max-size, or more with
    CAP_SYS_RESOURCE); a pipe opened later takes the first size granted."""
    from passt.tcp import splice as tcp_splice

    probed = tcp_splice.probe_pipe_size()
    assert tcp_splice.MIN_PIPE_SIZE <= probed <= tcp_splice.MAX_PIPE_SIZE
    limit = tmp_path / "pipe-max-size"
    limit.write_text("262144\n")
    assert tcp_splice.unprivileged_pipe_size(str(limit)) == 262144
    limit.write_text("nonsense\n")
    assert tcp_splice.unprivileged_pipe_size(str(limit)) == tcp_splice.MIN_PIPE_SIZE
    r, w, capacity = tcp_splice.open_pipe(0x7FFFFFFF, 128 << 10)  # the first is refused
    try:
        assert capacity == fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
        # 128 KiB, or (root over its pipe quota, other tests' pipes open) the default
        assert capacity == 128 << 10 or capacity <= 64 << 10
    finally:
        os.close(r)
        os.close(w)
