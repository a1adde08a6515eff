"""Shared world of the spliced-path tests (no tests here).

It reuses ``bench/bench_splice.py``: the namespaces (``world``), the
program under test (``serve`` mode, until pasta's command line runs the
same modules) and ``NsThread`` to make sockets inside a namespace.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import socket
import struct
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_splice.py"
_spec = importlib.util.spec_from_file_location("bench_splice", _BENCH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def read_to_eof(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    chunks = []
    total = 0
    while total <= limit:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def deliver_then_close(sender: socket.socket, receiver: socket.socket, data: bytes) -> None:
    """``data`` and a FIN from ``sender`` reach ``receiver`` intact; then close both."""
    sender.sendall(data)
    sender.shutdown(socket.SHUT_WR)
    assert read_to_eof(receiver) == data
    sender.close()
    receiver.close()


def reset(sock: socket.socket) -> None:
    """Close so that the peer sees a reset (SO_LINGER zero)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def expect_reset(sock: socket.socket) -> None:
    """Read until the reset our peer's reset should have caused; fail on a clean EOF."""
    with pytest.raises(ConnectionResetError):
        for _ in range(100):
            if not sock.recv(4096):
                break
    sock.close()


def fill_until_blocked(sock: socket.socket, limit_s: float = 20.0) -> int:
    """Send until nothing moves for half a second (the reader is stalled); bytes sent."""
    sock.setblocking(False)
    chunk = b"s" * 65536
    sent = 0
    blocked_since = None
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
            blocked_since = None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 0.5:
                sock.setblocking(True)
                return sent
            time.sleep(0.01)
    raise AssertionError("the stalled reader never pushed back")


class SpliceWorld:
    """Namespaces, our splicer running between them, and sockets on either side."""

    def __init__(self, tag: str, *serve_opts: str) -> None:
        self._stack = ExitStack()
        try:
            self.ns = self._stack.enter_context(bench.world(f"{tag}{os.getpid() % 1000}"))
            self.proc = bench.start_serve(self.ns["host"], self.ns["ours"], *serve_opts)
            self._stack.callback(bench.stop, self.proc)
            self.host = bench.NsThread(f"/run/netns/{self.ns['host']}")
            self.target = bench.NsThread(f"/run/netns/{self.ns['ours']}")
        except BaseException:
            self._stack.close()
            raise
        self._servers: dict[tuple, socket.socket] = {}

    def close(self) -> None:
        for s in self._servers.values():
            s.close()
        self._stack.close()

    def server(self, side: bench.NsThread, family: int, port: int,
               kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A (cached) server socket on ``side``'s loopback."""
        key = (id(side), family, port, kind)
        if key not in self._servers:
            s = side.call(socket.socket, family, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((LOOPBACK[family], port))
            if kind == socket.SOCK_STREAM:
                s.listen(64)
            s.settimeout(10)
            self._servers[key] = s
        return self._servers[key]

    def drop_server(self, side: bench.NsThread, family: int, port: int,
                    kind: int = socket.SOCK_STREAM) -> None:
        """Close the server socket there, if any: nobody listens on that port any more."""
        s = self._servers.pop((id(side), family, port, kind), None)
        if s is not None:
            s.close()

    def connect(self, client_side: bench.NsThread, server_side: bench.NsThread, family: int,
                port: int) -> tuple[socket.socket, socket.socket]:
        """A client on ``client_side`` connected to ``port`` through the splice, and the
        server's end of it on ``server_side`` (same port number: no mapping)."""
        server = self.server(server_side, family, port)
        client = client_side.call(socket.socket, family, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect((LOOPBACK[family], port))
        conn, _ = server.accept()
        conn.settimeout(10)
        return client, conn

    # -- observing the program under test ----------------------------------

    def cpu_seconds(self) -> float:
        """utime + stime of the splicer process."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fds(self) -> int:
        """Descriptors of the splicer process, except those its pools keep ready."""
        pool_fds = self.flows()["pool_fds"]
        return len(os.listdir(f"/proc/{self.proc.pid}/fd")) - pool_fds

    def flows(self) -> dict[str, int]:
        """The flow table's statistics, asked for with SIGUSR1."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGUSR1)
        ready, _, _ = select.select([self.proc.stdout], [], [], 5)
        assert ready, "no answer to SIGUSR1"
        return json.loads(self.proc.stdout.readline())

    def wait_idle(self, timeout: float = 5.0) -> int:
        """Wait until no flow is left; returns how many remain."""
        deadline = time.monotonic() + timeout
        while (n := self.flows()["total"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return n
