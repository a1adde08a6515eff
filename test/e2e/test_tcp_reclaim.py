"""Closed TCP flows release everything: thousands of resets and refusals.

Theory of operation: issue 19.  Every way out of a TCP flow must end in
the same place: its socket closed, its timer forgotten, its flow-table
entry gone, the flow object itself unreferenced.  Each test makes, from
the namespace (or the driver's guest namespace), through the tap, one
batch after the other:

- ``RESETS`` connections that end by reset, half of them reset by the
  remote side (``SO_LINGER`` zero close after reading a byte), half by the
  namespace (the same after an echoed byte);
- ``REFUSED`` connections to a port of the remote namespace where nothing
  listens.

After each batch, within ``SETTLE`` seconds of the last close:

- our pasta (the program): its descriptors, counted by kind in
  ``/proc/PID/fd`` (``Usage``), are back to their start values.  A flow
  owns exactly one descriptor (passt/tcp/tap.py), so this is the flow table
  as seen from outside: at rest, TCP descriptors are the listeners only.
- the TCP driver of test_tcp_tap.py (passt.tcp.tap in a process of its own,
  on a real tap): its descriptors likewise, its flow table is empty, and
  no flow object is alive any more (its ``stats`` counts them with the
  garbage collector), which a flow kept by a cancelled timer would fail.

Each connection waits at most ``TIMEOUT`` seconds, each batch at most
``BATCH_DEADLINE``.  The figures are printed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from .deploy import Deployment
from .test_hostile_harness import (
    ECHO_PORT,
    TIMEOUT,
    EchoServer,
    TcpServer,
    Usage,
    in_netns,
    wait_for,
)
from .test_tcp_tap import TapWorld, driven, needs_root
from .world import V4

pytestmark = pytest.mark.e2e

RESETS = 2000
REFUSED = 2000
SETTLE = 1.0
BATCH_DEADLINE = 300.0
RESET_PORT = 7780
CLOSED_PORT = 7781  # nothing listens there
LINGER_ZERO = struct.pack("ii", 1, 0)


class ResetServer(TcpServer):
    """Accepts, reads a byte, and aborts the connection with an RST."""

    def serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            time.sleep(0.001)
            return
        conn.settimeout(TIMEOUT)
        try:
            conn.recv(1)
        except OSError:
            pass
        abort(conn)


def abort(conn: socket.socket) -> None:
    """Close ``conn`` with an RST (``SO_LINGER`` zero)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    conn.close()


def reset_by_remote() -> str:
    with socket.create_connection((V4.remote, RESET_PORT), timeout=TIMEOUT) as conn:
        conn.sendall(b"x")
        try:
            return "eof" if conn.recv(1) == b"" else "data"
        except ConnectionResetError:
            return "reset"


def reset_by_namespace() -> str:
    conn = socket.create_connection((V4.remote, ECHO_PORT), timeout=TIMEOUT)
    conn.sendall(b"x")
    echoed = conn.recv(1)
    abort(conn)
    return "reset" if echoed == b"x" else "no echo"


def refused() -> str:
    try:
        socket.create_connection((V4.remote, CLOSED_PORT), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return "refused"
    return "connected"


def batch(netns: str, pid: int, count: int, connection: Callable[[], str]) -> Counter[str]:
    """``count`` connections from namespace ``netns``, one after the other; their
    outcomes, with pasta's peak descriptor count among them."""
    def run() -> Counter[str]:
        outcomes: Counter[str] = Counter()
        deadline = time.monotonic() + BATCH_DEADLINE
        for i in range(count):
            if time.monotonic() > deadline:
                raise AssertionError(f"{i} of {count} connections in {BATCH_DEADLINE} s")
            outcomes[connection()] += 1
            if i % 100 == 0:
                outcomes["peak descriptors"] = max(outcomes["peak descriptors"],
                                                   Usage.of(pid).fds)
        return outcomes

    return in_netns(netns, run)


def released(pid: int, before: Usage, what: str, outcomes: Counter[str],
             rest: Callable[[], bool] = lambda: True) -> None:
    """``pid``'s descriptors are back to ``before`` and ``rest()`` holds, within SETTLE s."""
    began = time.monotonic()
    try:
        wait_for(lambda: Usage.of(pid).kinds == before.kinds and rest(), SETTLE,
                 f"descriptors and flows to be released after {what}", 0.02)
    finally:
        after = Usage.of(pid)
        print(f"{what}: {dict(outcomes)}; descriptors {before.fds} before, "
              f"{outcomes['peak descriptors']} at most during, {after.fds} "
              f"{time.monotonic() - began:.2f} s after ({after})")


BATCHES = (
    ("connections reset by the remote side", RESETS // 2, reset_by_remote, "reset"),
    ("connections reset by the namespace", RESETS // 2, reset_by_namespace, "reset"),
    ("refused connections", REFUSED, refused, "refused"),
)


@contextlib.contextmanager
def remote_services(remote_ns: str) -> Iterator[None]:
    """The reset and echo services in the remote namespace."""
    resetter = ResetServer(remote_ns, V4.remote, RESET_PORT)
    echo = EchoServer(remote_ns, V4.remote, ECHO_PORT)
    try:
        yield
    finally:
        resetter.close()
        echo.close()


def run_batches(netns: str, pid: int, rest: Callable[[], bool] = lambda: True) -> None:
    before = Usage.of(pid)
    for what, count, connection, expected in BATCHES:
        outcomes = batch(netns, pid, count, connection)
        released(pid, before, f"{count} {what}", outcomes, rest)
        assert outcomes[expected] == count, outcomes


def test_pasta_releases_reset_and_refused_flows(pasta_env: Deployment) -> None:
    world = pasta_env.world
    assert pasta_env.daemon.proc is not None
    with remote_services(world.remote_ns):
        run_batches(world.extra_ns[0], pasta_env.daemon.proc.pid)


@needs_root
def test_driver_forgets_reset_and_refused_flows() -> None:
    with driven("c") as w, remote_services(w.remote):
        assert w.driver is not None

        def forgotten(world: TapWorld = w) -> bool:
            stats = world.stats()
            return stats["flows"].get("tcp", 0) == 0 and stats["live"] == 0

        run_batches(w.guest, w.driver.pid, forgotten)
        stats = w.stats()
        print(f"driver: flow table {stats['flows']}, live flow objects {stats['live']}")
