"""Limits: floods of half-open connections and of UDP flows, and a guest that never reads.

Theory of operation: every flow costs descriptors, so the flow table's one
global limit comes from the descriptor limit (``runtime.max_flows``: half of
what ``RLIMIT_NOFILE`` leaves after ``RESERVED_FDS``).  The programs are
started under ``prlimit --nofile=NOFILE`` (an ordinary knob of the
system, not a test hook), which makes the table small enough to fill in
seconds: ``MAX_FLOWS`` entries.  Each test keeps a flow established before
the flood and checks that it still carries data during it; what is measured
is printed (frames sent, refusals seen, peak sockets and descriptors, peak
resident memory) and bounded:

- SYN flood: ``SYNS`` SYNs from the guest (passt) or the namespace (pasta)
  towards an address the remote namespace silently drops.  At most
  ``MAX_FLOWS`` become half-open connections; every other one is refused
  cleanly, with an RST to the guest; a new connection is refused as well
  while the table is full; the SYN timeout (10 s) reclaims them all, after
  which new connections work again.
- UDP flood: ``UDP_FLOWS`` datagrams from as many guest ports.  At most the
  table's room becomes flows (one socket each); the others are dropped;
  an existing UDP flow and the established TCP flow go on.  The 180 s idle
  timeout that reclaims UDP flows is not waited for here (see
  ``test_limits_reclaim.py``, which shortens it in-process).
- A guest that never reads (passt): it opens a connection from a source
  that sends without end, with a window of a gigabyte, then stops reading
  passt's socket.  passt's memory must stay bounded (its send queue is
  bounded, and TCP data waits in the kernel's socket buffers), its loop
  must stay responsive (a second client is turned away at once), and once
  the guest gives up, the next guest is served normally.
- A namespace application that never reads (pasta): the same source,
  through pasta's tap; pasta's memory stays bounded and another connection
  of the namespace keeps working.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from passt import runtime
from passt.packet import RST, SYN, build_frame_tcp, build_frame_udp, parse_frame, parse_tcp
from passt.packet import tcp_options as make_tcp_options

from .deploy import deploy_pasta
from .impl import Impl
from .test_hostile_harness import (
    ECHO_PORT,
    GATEWAY4,
    GUEST4,
    REMOTE4,
    TIMEOUT,
    EchoServer,
    FloodServer,
    Guest,
    QemuLink,
    Scene,
    Usage,
    at_eof,
    connected_guest,
    echo_check,
    in_netns,
    ns_connect,
    passt_scene,
    pasta_scene,
    recv_exactly,
    start_passt,
    wait_for,
    world_for,
)
from .world import V4

pytestmark = pytest.mark.e2e

NOFILE = 1024
MAX_FLOWS = (NOFILE - runtime.RESERVED_FDS) // 2
PRLIMIT = ("prlimit", f"--nofile={NOFILE}:{NOFILE}", "--")
SYNS = 5000
UDP_FLOWS = 5000
BATCH = 250
BLACKHOLE4 = "203.0.113.99"
UDP_ECHO_PORT = 7778
FLOOD_PORT = 7779
RECLAIM_TIMEOUT = 40.0  # SYN timeout (10 s), plus a slow machine's margin
STALL_SECONDS = 5.0
STALLED_FLOWS = 8
MEMORY_BOUND_KIB = 64 * 1024


@pytest.fixture
def limited_passt(chosen_impl: Impl, tmp_path) -> Iterator[Scene]:
    with passt_scene(chosen_impl, str(tmp_path), PRLIMIT, BLACKHOLE4) as scene:
        yield scene


@pytest.fixture
def limited_pasta(chosen_impl: Impl, tmp_path) -> Iterator[Scene]:
    with pasta_scene(chosen_impl, str(tmp_path), PRLIMIT, BLACKHOLE4) as scene:
        yield scene


def _rsts_to(guest: Guest, ports: range) -> int:
    """Count (and take) the RSTs among the unclaimed frames to our ``ports``."""
    def is_rst(frame: bytes) -> bool:
        try:
            pkt = parse_frame(frame)
            if pkt.proto != 6:
                return False
            seg = parse_tcp(pkt.l4)
        except ValueError:
            return False
        return bool(seg.flags & RST) and seg.dport in ports

    taken = len(guest.take(is_rst))
    guest.others.clear()
    return taken


def _refused(connect: Callable[[], None]) -> bool:
    try:
        connect()
    except (ConnectionRefusedError, ConnectionResetError, TimeoutError):
        return True
    return False


# -- SYN flood ----------------------------------------------------------------------


def syn_flood(limited: Scene) -> None:
    guest = limited.guest
    limited.echo()
    before = Usage.of(limited.pid)
    ports = range(10000, 10000 + SYNS)
    dst = socket.inet_pton(socket.AF_INET, BLACKHOLE4)
    options = make_tcp_options(mss=1400)
    rsts = 0
    peak = before
    started = time.monotonic()
    for first in range(ports.start, ports.stop, BATCH):
        guest.send([build_frame_tcp(guest.peer_mac, guest.mac, GUEST4, dst, port, 80,
                                    port * 7919, 0, SYN, 65535, options=options)
                    for port in range(first, min(first + BATCH, ports.stop))])
        guest.pump(0.05)
        rsts += _rsts_to(guest, ports)
        now = Usage.of(limited.pid)
        peak = now if now.kinds["tcp"] > peak.kinds["tcp"] else peak
    while guest.pump(0.5):  # the last refusals, until half a second of silence
        rsts += _rsts_to(guest, ports)
    half_open = peak.kinds["tcp"] - before.kinds["tcp"]
    print(f"{SYNS} SYNs in {time.monotonic() - started:.1f} s: {half_open} half-open "
          f"connections at most (limit {MAX_FLOWS}), {rsts} refused with an RST")
    print(f"before: {before}\npeak: {peak}")
    assert half_open <= MAX_FLOWS
    # An RST may be dropped on the way, as a NIC drops what it cannot send
    # (a real guest would send its SYN again): most must arrive.
    assert rsts >= (SYNS - MAX_FLOWS) // 2, "refused SYNs got no RST"
    assert limited.alive()
    limited.echo()
    assert _refused(limited.connect), "a new connection was accepted with the table full"
    print("established flow still echoes; a new connection is refused while the table is full")
    began = time.monotonic()
    wait_for(lambda: Usage.of(limited.pid).kinds["tcp"] <= before.kinds["tcp"],
             RECLAIM_TIMEOUT, "the half-open connections to be reclaimed", 0.5)
    limited.connect()
    limited.echo()
    print(f"reclaimed {time.monotonic() - began:.1f} s after the flood: "
          f"{Usage.of(limited.pid)}; new connections accepted again")


def test_passt_syn_flood(limited_passt: Scene) -> None:
    syn_flood(limited_passt)


def test_pasta_syn_flood(limited_pasta: Scene) -> None:
    syn_flood(limited_pasta)


# -- UDP flood -----------------------------------------------------------------------


def test_passt_udp_flood(limited_passt: Scene) -> None:
    guest = limited_passt.guest
    pid = limited_passt.pid
    world = limited_passt.world
    echo = in_netns(world.remote_ns, lambda: _udp_socket(V4.remote, UDP_ECHO_PORT))
    with echo:
        echo.settimeout(5)
        kept = _udp_frame(guest, 30000, UDP_ECHO_PORT, b"kept flow")
        guest.send([kept])
        _, peer = echo.recvfrom(65536)
        before = Usage.of(pid)
        started = time.monotonic()
        peak = before
        for first in range(20000, 20000 + UDP_FLOWS, BATCH):
            guest.send([_udp_frame(guest, port, 9, b"x")
                        for port in range(first, min(first + BATCH, 20000 + UDP_FLOWS))])
            guest.pump(0.02)
            guest.others.clear()
            now = Usage.of(pid)
            peak = now if now.kinds["udp"] > peak.kinds["udp"] else peak
        flows = peak.kinds["udp"] - before.kinds["udp"]
        print(f"{UDP_FLOWS} new UDP flows asked for in {time.monotonic() - started:.1f} s: "
              f"{flows} opened (limit {MAX_FLOWS}, shared with TCP), the rest dropped")
        print(f"before: {before}\npeak: {peak}")
        assert 0 < flows <= MAX_FLOWS
        assert limited_passt.alive()
        limited_passt.echo()
        guest.send([kept])
        data, again = echo.recvfrom(65536)
        assert (data, again) == (b"kept flow", peer), "the existing UDP flow changed"
        assert _refused(limited_passt.connect), "a new connection was accepted with the table full"
    print("the existing UDP flow and the established TCP flow go on; new flows are refused")


def _udp_socket(address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, port))
    return s


def _udp_frame(guest: Guest, sport: int, dport: int, payload: bytes) -> bytes:
    return build_frame_udp(guest.peer_mac, guest.mac, GUEST4, REMOTE4, sport, dport, payload)


# -- nobody reading ------------------------------------------------------------------


def _watch_memory(pid: int, seconds: float) -> Usage:
    """Sample ``pid`` for ``seconds``; the sample with the highest peak."""
    peak = Usage.of(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = Usage.of(pid)
        peak = now if now.peak_kib > peak.peak_kib else peak
    return peak


def test_passt_guest_that_never_reads(chosen_impl: Impl, tmp_path) -> None:
    with world_for("limits-stall", str(tmp_path)) as world:
        source = FloodServer(world.host_ns, V4.loopback, FLOOD_PORT)
        server = EchoServer(world.remote_ns, V4.remote, ECHO_PORT)
        daemon, path = start_passt(chosen_impl, world, str(tmp_path), [])
        assert daemon.proc is not None
        pid = daemon.proc.pid
        link = QemuLink(path)
        try:
            guest = Guest(link)
            guest.resolve()
            before = Usage.of(pid)
            for port in range(34500, 34500 + STALLED_FLOWS):
                guest.tcp(GUEST4, GATEWAY4, port, FLOOD_PORT).connect(wscale=14)
            peak = _watch_memory(pid, STALL_SECONDS)  # and never read the socket again
            growth = peak.peak_kib - before.rss_kib
            print(f"guest stopped reading {STALLED_FLOWS} connections with 1 GiB windows; "
                  f"the source sent {source.sent >> 10} KiB in {STALL_SECONDS} s")
            print(f"before: {before}\npeak: {peak} (growth {growth} KiB)")
            assert growth < MEMORY_BOUND_KIB
            assert daemon.alive()
            _second_client_turned_away(path)
        finally:
            link.close()
        wait_for(lambda: not _listener_busy(path), TIMEOUT, "passt to let the stalled guest go")
        link, conn = connected_guest(path, 34568)
        try:
            echo_check(conn)()
            print(f"next guest served: {Usage.of(pid)}")
        finally:
            link.close()
            daemon.stop()
            source.close()
            server.close()


def _second_client_turned_away(path: str) -> None:
    started = time.monotonic()
    other = QemuLink(path)
    try:
        wait_for(lambda: at_eof(other), TIMEOUT, "passt to turn a second client away")
    finally:
        other.close()
    print(f"a second client was turned away in {time.monotonic() - started:.3f} s")


def _listener_busy(path: str) -> bool:
    """Whether passt still serves a client (a new one would be turned away)."""
    probe = QemuLink(path)
    try:
        return at_eof(probe) or at_eof(probe)
    finally:
        probe.close()


def test_pasta_application_that_never_reads(chosen_impl: Impl, tmp_path) -> None:
    deployment = deploy_pasta(chosen_impl, str(tmp_path))
    world = deployment.world
    netns = world.extra_ns[0]
    source = FloodServer(world.remote_ns, V4.remote, FLOOD_PORT)
    server = EchoServer(world.remote_ns, V4.remote, ECHO_PORT)
    try:
        assert deployment.daemon.proc is not None
        pid = deployment.daemon.proc.pid
        before = Usage.of(pid)
        stalled = ns_connect(netns, V4.remote, FLOOD_PORT)  # never read
        other = ns_connect(netns, V4.remote, ECHO_PORT)
        peak = _watch_memory(pid, STALL_SECONDS)
        data = os.urandom(1 << 20)
        other.sendall(data)
        assert recv_exactly(other, len(data)) == data
        growth = peak.peak_kib - before.rss_kib
        print(f"the namespace stopped reading one connection; the source sent "
              f"{source.sent >> 10} KiB; another connection echoed 1 MiB")
        print(f"before: {before}\npeak: {peak} (growth {growth} KiB)")
        assert growth < MEMORY_BOUND_KIB
        stalled.close()
        other.close()
    finally:
        source.close()
        server.close()
        deployment.teardown()
