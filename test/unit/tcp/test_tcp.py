"""The TCP driver (passt.tcp.tap) with real sockets on loopback and a recording tap.

The "guest" here is the test: it builds frames with passt.packet and reads
what the driver sends through a fake tap backend.  Its connections go to
the gateway address, which the driver maps to the host's loopback, where
the test listens: no traffic leaves loopback.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import resource
import socket
import time
from types import SimpleNamespace

import pytest

from passt.context import Ctx
from passt.flow.table import FlowTable
from passt.host.hostnet import read_sysctl_int
from passt.loop import EventLoop
from passt.packet import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    build_frame_tcp,
    parse_frame,
    parse_tcp,
    tcp_options,
)  # fmt: skip
from passt.tcp import tap as tcp
from passt.tcp.core import WS_TO_GUEST, TcpConn

from .test_splice_tcp import send_all_then_fin

OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = bytes.fromhex("020000000002")
GUEST4 = ipaddress.ip_address("198.51.100.1").packed
GW4 = ipaddress.ip_address("198.51.100.2").packed
GUEST6 = ipaddress.ip_address("2001:db8:1::1").packed
GW6 = ipaddress.ip_address("2001:db8:1::2").packed


class RecordingTap:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frames(self, frames) -> int:
        self.frames.extend(bytes(f) for f in frames)
        return len(frames)


class Guest:
    """One guest-side connection: builds its segments, reads the driver's."""

    def __init__(self, ctx: Ctx, dst: bytes, dport: int, src: bytes = GUEST4, sport: int = 40000):
        self.ctx, self.src, self.dst, self.sport, self.dport = ctx, src, dst, sport, dport
        self.seq = 1000
        self.ack = 0

    def send(self, flags: int, payload: bytes = b"", options: bytes = b"", seq: int | None = None,
             window: int = 2000) -> None:
        frame = build_frame_tcp(OUR_MAC, GUEST_MAC, self.src, self.dst, self.sport, self.dport,
                                self.seq if seq is None else seq, self.ack, flags, window,
                                payload, options=options)
        tcp.from_tap(self.ctx, parse_frame(frame))
        if seq is None:
            self.seq += len(payload) + (1 if flags & (SYN | FIN) else 0)

    def received(self) -> list:
        """Segments the driver sent to this connection since last asked."""
        tap: RecordingTap = self.ctx.tap  # type: ignore[assignment]
        mine, others = [], []
        for frame in tap.frames:
            pkt = parse_frame(frame)
            seg = parse_tcp(pkt.l4)
            if pkt.dst == self.src and seg.dport == self.sport and pkt.src == self.dst:
                mine.append(seg)
            else:
                others.append(frame)
        tap.frames = others
        return mine

    def wait_for(self, predicate, timeout: float = 5.0) -> list:
        """Run the loop until a received segment satisfies predicate; all received."""
        got: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got += self.received()
            if any(predicate(s) for s in got):
                return got
            self.ctx.loop.run_once(0.02)
        raise AssertionError(f"timed out; received {got}")

    def handshake(self, window: int = 2000) -> None:
        self.send(SYN, options=tcp_options(mss=65480, wscale=7))
        synack = next(s for s in self.wait_for(lambda s: s.flags & SYN) if s.flags & SYN)
        assert synack.flags == SYN | ACK and synack.ack == self.seq
        self.ack = synack.seq + 1
        self.send(ACK, window=window)

    def take_data(self, timeout: float = 5.0) -> bytes:
        """Read data segments until a FIN or nothing new for a while; acknowledge them."""
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ctx.loop.run_once(0.02)
            segs = self.received()
            for s in segs:
                if s.seq == self.ack and len(s.payload):
                    data += bytes(s.payload)
                    self.ack += len(s.payload)
                if s.flags & FIN and s.seq == self.ack:
                    self.ack += 1
            if segs:
                self.send(ACK)
                if any(s.flags & FIN for s in segs):
                    return data
        return data


def make_ctx(flows: FlowTable | None = None, **conf) -> Ctx:
    net = SimpleNamespace(
        mac=OUR_MAC, mtu=65520,
        addr4=ipaddress.ip_address("198.51.100.1"), gw4=ipaddress.ip_address("198.51.100.2"),
        addr6=ipaddress.ip_address("2001:db8:1::1"), gw6=ipaddress.ip_address("2001:db8:1::2"),
        ll6=None, ifname6="",
    )
    ctx = Ctx(conf=SimpleNamespace(**conf), net=net, loop=EventLoop(), tap=RecordingTap(),
              flows=flows if flows is not None else FlowTable())
    ctx.guest_mac = GUEST_MAC
    tcp.init(ctx)
    return ctx


@pytest.fixture
def ctx():
    c = make_ctx()
    yield c
    tcp.close(c)
    c.loop.close()


@pytest.fixture
def server():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.settimeout(5)
    yield s
    s.close()


def tcp_flows(ctx: Ctx) -> int:
    return ctx.flows.stats().get("tcp", 0)


def accept_polling(ctx: Ctx, server: socket.socket) -> socket.socket:
    server.setblocking(False)
    for _ in range(250):
        try:
            conn, _ = server.accept()
            conn.setblocking(True)
            conn.settimeout(5)
            return conn
        except BlockingIOError:
            ctx.loop.run_once(0.02)
    raise AssertionError("no connection reached the server")


def test_gateway_maps_to_loopback_data_both_ways_and_clean_close(ctx, server):
    port = server.getsockname()[1]
    guest = Guest(ctx, GW4, port)
    guest.handshake()
    peer = accept_polling(ctx, server)
    assert peer.getpeername()[0] == "127.0.0.1"
    guest.send(ACK | PSH, b"hello")
    ctx.loop.run_once(0.05)
    assert peer.recv(100) == b"hello"
    acked = guest.wait_for(lambda s: s.ack == guest.seq)
    assert acked
    peer.sendall(b"world" * 1000)
    peer.shutdown(socket.SHUT_WR)  # the host side closes first
    assert guest.take_data() == b"world" * 1000
    guest.send(ACK | PSH, b"late data after the peer's FIN")  # half-close: still flows
    ctx.loop.run_once(0.05)
    assert peer.recv(100) == b"late data after the peer's FIN"
    guest.send(ACK | FIN)
    for _ in range(50):
        ctx.loop.run_once(0.02)
        if not tcp_flows(ctx):
            break
    assert peer.recv(100) == b""
    assert tcp_flows(ctx) == 0
    assert ctx.stats["tcp.closed"] == 1


@pytest.mark.parametrize("peek_off", [True, False], ids=["SO_PEEK_OFF", "peek-from-start"])
def test_unacknowledged_data_is_sent_again_from_the_socket(monkeypatch, server, peek_off):
    """The socket's receive buffer is the retransmission queue, with or without
    SO_PEEK_OFF (kernels before 6.9 lack it for TCP)."""
    if not peek_off:
        monkeypatch.setattr(tcp, "_peek_off_supported", lambda: False)
    ctx = make_ctx()
    try:
        guest = Guest(ctx, GW4, server.getsockname()[1])
        guest.handshake()
        peer = accept_polling(ctx, server)
        data = os.urandom(300_000)
        peer.sendall(data)
        first = guest.wait_for(lambda s: len(s.payload))  # "lost": not acknowledged
        assert bytes(first[0].payload) == data[:len(first[0].payload)]
        again = guest.wait_for(lambda s: len(s.payload) and s.seq == guest.ack, timeout=5)
        assert any(s.seq == guest.ack for s in again)  # from the first unacknowledged byte
        assert ctx.stats["tcp.retransmit"] >= 1
        guest.received()
        peer.shutdown(socket.SHUT_WR)
        assert guest.take_data() == data
    finally:
        tcp.close(ctx)
        ctx.loop.close()


def connected_with_peek_off(
    ctx: Ctx, server: socket.socket
) -> tuple[Guest, socket.socket, tcp.TcpFlow]:
    """A connection from the guest to ``server``: the guest, the server's socket and
    our flow; skips the test on kernels without ``SO_PEEK_OFF`` for TCP (Linux 6.9),
    where acknowledged bytes are always discarded at once."""
    if not ctx.tcp.peek_off:
        pytest.skip("needs SO_PEEK_OFF for TCP (Linux 6.9)")
    guest = Guest(ctx, GW4, server.getsockname()[1])
    guest.handshake()
    peer = accept_polling(ctx, server)
    (flow,) = [f for k, f in ctx.flows.items() if k[0] == "tcp"]
    return guest, peer, flow


def small_answers(guest: Guest, peer: socket.socket, count: int) -> int:
    """``count`` short answers from the peer, each taken and acknowledged; their length."""
    total = 0
    for i in range(count):
        answer = b"answer %d;" % i
        peer.sendall(answer)
        segs = guest.wait_for(lambda s: len(s.payload))
        assert [bytes(s.payload) for s in segs if len(s.payload)] == [answer]
        guest.ack += len(answer)
        guest.send(ACK)
        total += len(answer)
    return total


def test_acknowledged_trickle_is_discarded_later_but_before_it_matters(ctx, server):
    """Short acknowledged answers stay in the socket (no discard per exchange) until
    a retransmission, which must start at the first unacknowledged byte, or a
    clean close, which must stay a FIN."""
    guest, peer, flow = connected_with_peek_off(ctx, server)
    answered = small_answers(guest, peer, 5)
    assert flow.undiscarded == answered > 0
    peer.sendall(b"lost")
    guest.wait_for(lambda s: len(s.payload))  # not acknowledged: sent again
    again = guest.wait_for(lambda s: s.seq == guest.ack and len(s.payload), timeout=5)
    assert bytes(next(s for s in again if len(s.payload)).payload) == b"lost"
    assert flow.undiscarded == 0 and ctx.stats["tcp.retransmit"] >= 1
    guest.ack += 4
    guest.send(ACK)
    answered = small_answers(guest, peer, 2)
    assert flow.undiscarded == 4 + answered
    # The peer closes first and stops reading; the guest's last data and FIN
    # are still queued in our socket when the flow ends: they must follow.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.shutdown(socket.SHUT_WR)
    guest.wait_for(lambda s: s.flags & FIN)
    guest.ack += 1
    last = os.urandom(60_000)
    for offset in range(0, len(last), 1000):
        guest.send(ACK | PSH, last[offset:offset + 1000])
    guest.send(ACK | FIN)
    for _ in range(50):
        if not tcp_flows(ctx):
            break
        ctx.loop.run_once(0.02)
    assert tcp_flows(ctx) == 0
    assert ctx.stats["tcp.closed"] == 1 and not ctx.stats["tcp.closed_rst"]
    received = b""
    while chunk := peer.recv(65536):  # a reset would raise here, or cut the data short
        received += chunk
    assert received == last


def test_acknowledged_trickle_is_discarded_after_a_bounded_number_of_answers(ctx, server):
    """Each short answer left in the socket is a buffer that every later peek walks
    past: they are discarded after ``DISCARD_LATER_ACKS`` acknowledgements, long
    before their bytes add up to ``DISCARD_LATER``."""
    guest, peer, flow = connected_with_peek_off(ctx, server)
    answered = small_answers(guest, peer, tcp.DISCARD_LATER_ACKS - 1)
    assert flow.undiscarded == answered < tcp.DISCARD_LATER
    small_answers(guest, peer, 1)
    assert flow.undiscarded == 0
    answered = small_answers(guest, peer, 1)  # peeks are still in step
    assert flow.undiscarded == answered


def test_connection_refused_resets_the_guest(ctx):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    guest = Guest(ctx, GW4, port)
    guest.send(SYN, options=tcp_options(mss=1460))
    (rst,) = [s for s in guest.wait_for(lambda s: s.flags & RST)]
    assert rst.flags == RST | ACK and rst.ack == guest.seq
    assert tcp_flows(ctx) == 0


def test_guest_reset_resets_the_peer(ctx, server):
    guest = Guest(ctx, GW4, server.getsockname()[1])
    guest.handshake()
    peer = accept_polling(ctx, server)
    guest.send(RST)
    assert tcp_flows(ctx) == 0
    with pytest.raises(ConnectionResetError):
        peer.recv(100)


def test_peer_reset_resets_the_guest(ctx, server):
    guest = Guest(ctx, GW4, server.getsockname()[1])
    guest.handshake()
    peer = accept_polling(ctx, server)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    peer.close()
    assert guest.wait_for(lambda s: s.flags & RST)
    assert tcp_flows(ctx) == 0


def test_segment_of_no_connection_gets_rst(ctx):
    guest = Guest(ctx, GW4, 9)
    guest.send(ACK, b"stray", seq=5000)
    ctx.loop.run_once(0)
    (rst,) = guest.received()
    assert rst.flags == RST and rst.seq == guest.ack
    guest.send(RST, seq=5000)  # an RST is never answered
    assert guest.received() == []


def test_malformed_segment_is_counted_not_raised(ctx):
    frame = bytearray(build_frame_tcp(OUR_MAC, GUEST_MAC, GUEST4, GW4, 1, 2, 0, 0, SYN, 100))
    frame[14 + 20 + 12] = 0xF0  # data offset 60 bytes in a 20-byte header
    tcp.from_tap(ctx, parse_frame(bytes(frame)))
    assert ctx.stats["drop.tcp_offset"] == 1 and tcp_flows(ctx) == 0


def test_full_flow_table_refuses_new_connections_only(server):
    ctx = make_ctx(flows=FlowTable(max_flows=1))
    try:
        first = Guest(ctx, GW4, server.getsockname()[1], sport=40001)
        first.handshake()
        peer = accept_polling(ctx, server)
        second = Guest(ctx, GW4, server.getsockname()[1], sport=40002)
        second.send(SYN)
        assert second.wait_for(lambda s: s.flags & RST)
        first.send(ACK | PSH, b"still here")
        ctx.loop.run_once(0.05)
        assert peer.recv(100) == b"still here"
    finally:
        tcp.close(ctx)


def test_descriptor_pressure_refuses_new_connections_only(ctx, server):
    first = Guest(ctx, GW4, server.getsockname()[1], sport=40001)
    first.handshake()
    peer = accept_polling(ctx, server)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        while True:
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as e:
                assert e.errno == errno.EMFILE
                break
        second = Guest(ctx, GW4, server.getsockname()[1], sport=40002)
        second.send(SYN)
        assert second.wait_for(lambda s: s.flags & RST)
        assert ctx.stats["tcp.refused_socket"] == 1
        first.send(ACK | PSH, b"old flows carry on")
        ctx.loop.run_once(0.05)
        assert peer.recv(100) == b"old flows carry on"
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_inbound_connection_from_loopback_appears_from_the_gateway(ctx):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    accepted, peer = listener.accept()
    accepted.setblocking(False)  # as fwd hands it over
    listener.close()
    tcp.on_accept(ctx, accepted, peer, accepted.getsockname(), 8080)
    guest = Guest(ctx, GW4, client.getsockname()[1], src=GUEST4, sport=8080)
    (syn,) = guest.received()
    assert syn.flags == SYN and syn.mss == 65480 and syn.wscale == WS_TO_GUEST
    guest.seq = 7000
    guest.ack = syn.seq + 1
    guest.send(SYN | ACK, options=tcp_options(mss=65480, wscale=7))
    ctx.loop.run_once(0.02)
    client.sendall(b"request")
    assert guest.take_data(timeout=1) == b"request"
    guest.send(ACK | PSH, b"response")
    ctx.loop.run_once(0.05)
    assert client.recv(100) == b"response"
    guest.send(RST)
    with pytest.raises(ConnectionResetError):
        client.recv(100)
    assert tcp_flows(ctx) == 0


def test_outbound_binding_to_the_outbound_address(server):
    ctx = make_ctx(outbound=("127.0.0.2",))
    try:
        guest = Guest(ctx, GW4, server.getsockname()[1])
        guest.handshake()
        peer = accept_polling(ctx, server)
        assert peer.getpeername()[0] == "127.0.0.2"
    finally:
        tcp.close(ctx)


def test_guest_mac_change_rebuilds_headers(ctx, server):
    guest = Guest(ctx, GW4, server.getsockname()[1])
    guest.handshake()
    peer = accept_polling(ctx, server)
    ctx.guest_mac = bytes.fromhex("020000000099")
    tcp.guest_mac_changed(ctx)
    peer.sendall(b"x")
    guest.wait_for(lambda s: len(s.payload))
    ctx.loop.run_once(0.02)
    peer.sendall(b"y")
    for _ in range(20):
        ctx.loop.run_once(0.02)
    assert all(f[:6] == bytes.fromhex("020000000099") for f in ctx.tap.frames)


@pytest.mark.parametrize(
    ("dst", "map_gw", "expected"),
    [
        (GW4, True, "127.0.0.1"),
        (GW6, True, "::1"),
        (GW4, False, "198.51.100.2"),
        (GUEST4, True, "198.51.100.1"),  # the host's address: the host itself
        (ipaddress.ip_address("203.0.113.7").packed, True, "203.0.113.7"),
        (ipaddress.ip_address("224.0.0.1").packed, True, None),
        (bytes(4), True, None),
        (b"\xff" * 4, True, None),
    ],
)
def test_outbound_target(dst, map_gw, expected):
    ctx = make_ctx(no_map_gw=not map_gw)
    try:
        assert tcp._outbound_target(ctx.tcp, dst) == expected
    finally:
        ctx.loop.close()


def test_inbound_source_mapping():
    ctx = make_ctx()
    nat = ctx.tcp.nat
    loop4 = ipaddress.ip_address("127.0.0.1").packed
    assert nat.inbound(loop4) == GW4
    assert nat.inbound(bytes(15) + b"\1") == GW6
    assert nat.inbound(GUEST4) == GW4  # the host's own address
    mapped = bytes(10) + b"\xff\xff" + ipaddress.ip_address("203.0.113.9").packed
    assert nat.inbound(mapped) == mapped[12:]
    ctx.loop.close()


def test_inbound_source_without_map_gw_is_still_the_gateway():
    """Upstream 2026: what the guest could not answer comes from our tap-side
    address, so published ports work through every host address."""
    ctx = make_ctx(no_map_gw=True)
    assert ctx.tcp.nat.inbound(ipaddress.ip_address("127.0.0.1").packed) == GW4
    assert ctx.tcp.nat.inbound(GUEST4) == GW4
    ctx.loop.close()


@pytest.mark.parametrize("limit, big", [(4 << 20, True), (212992, False)])
def test_connection_sockets_get_the_largest_buffers_only_where_allowed(
        monkeypatch, tmp_path, server, limit, big):
    """As upstream: with net.core.[wr]mem_max of 4 MiB or more, the guest's window is
    not bounded by a send buffer the kernel sized for a short path; below that,
    the kernel's autotuning is left alone."""
    for name in ("wmem_max", "rmem_max"):
        (tmp_path / name).write_text(f"{limit}\n")
    monkeypatch.setattr(tcp, "_WMEM_MAX_FILE", str(tmp_path / "wmem_max"))
    monkeypatch.setattr(tcp, "_RMEM_MAX_FILE", str(tmp_path / "rmem_max"))
    ctx = make_ctx()
    try:
        guest = Guest(ctx, GW4, server.getsockname()[1])
        guest.handshake()
        accept_polling(ctx, server).close()
        (flow,) = (f for k, f in ctx.flows.items() if k[0] == "tcp")
        sndbuf = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        rcvbuf = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # asked for: the system's limit, which the kernel doubles for its overhead
        largest_snd = 2 * read_sysctl_int("/proc/sys/net/core/wmem_max")
        largest_rcv = 2 * read_sysctl_int("/proc/sys/net/core/rmem_max")
        assert (sndbuf == largest_snd) is big and (rcvbuf == largest_rcv) is big
    finally:
        tcp.close(ctx)
        ctx.loop.close()


# -- issue 19: every byte on every kernel, faults that stay with their flow ---


@pytest.mark.parametrize("stall_rounds", [0, 40], ids=["acking", "stalled-then-acking"])
def test_without_peek_off_a_download_beyond_one_peek_in_flight_arrives_whole(
    monkeypatch, server, stall_rounds
):
    """The path of kernels before 6.9, forced by the environment: megabytes in
    flight (the guest's window is 8 MiB) and the peer's FIN queued behind them
    must still give the guest every byte, then the FIN after the last one."""
    monkeypatch.setenv(tcp.NO_PEEK_OFF_ENV, "1")
    ctx = make_ctx()
    assert not ctx.tcp.peek_off
    guest = Guest(ctx, GW4, server.getsockname()[1])
    guest.handshake(window=0xFFFF)
    peer = accept_polling(ctx, server)
    sent = os.urandom(12 << 20)
    writer = send_all_then_fin(peer, sent)
    got, fin_at, most_in_flight = bytearray(), None, 0
    deadline = time.monotonic() + 30
    rounds = 0
    while fin_at is None and time.monotonic() < deadline:
        ctx.loop.run_once(0.01)
        rounds += 1
        for s in guest.received():
            if s.seq == guest.ack and len(s.payload):
                got += s.payload
                guest.ack += len(s.payload)
            if s.flags & FIN:
                fin_at = s.seq
        core = ctx.flows.get(("tcp", GUEST4, guest.sport, GW4, guest.dport)).core
        most_in_flight = max(most_in_flight, (core.snd_nxt - core.snd_una) & 0xFFFFFFFF)
        if rounds > stall_rounds:
            guest.send(ACK, window=0xFFFF)
    writer.join(5)
    assert bytes(got) == sent and fin_at == guest.ack
    assert (1 << 20) < most_in_flight <= tcp.FALLBACK_FRAMES * ctx.tcp.mss_limit(False)
    tcp.close(ctx)
    ctx.loop.close()


def test_the_environment_forces_the_path_without_peek_off(monkeypatch):
    assert tcp._peek_off_supported()  # this kernel has it (6.9 and later)
    monkeypatch.setenv(tcp.NO_PEEK_OFF_ENV, "1")
    assert not tcp._peek_off_supported()


def two_connections(ctx: Ctx, server: socket.socket) -> list[tuple[Guest, socket.socket]]:
    pairs = []
    for sport in (40001, 40002):
        guest = Guest(ctx, GW4, server.getsockname()[1], sport=sport)
        guest.handshake()
        pairs.append((guest, accept_polling(ctx, server)))
    return pairs


def core_of(ctx: Ctx, guest: Guest):
    return ctx.flows.get(("tcp", guest.src, guest.sport, guest.dst, guest.dport)).core


@pytest.mark.parametrize("where", ["guest segment", "socket event"])
def test_a_fault_resets_its_own_flow_and_the_others_go_on(monkeypatch, ctx, server, where):
    (victim, victim_peer), (other, other_peer) = two_connections(ctx, server)
    doomed = core_of(ctx, victim)
    method = "on_segment" if where == "guest segment" else "on_sock_readable"
    original = getattr(TcpConn, method)

    def faulty(self, *args):
        if self is doomed:
            raise RuntimeError("injected fault")
        return original(self, *args)

    monkeypatch.setattr(TcpConn, method, faulty)
    if where == "guest segment":
        victim.send(ACK | PSH, b"trigger")
    else:
        victim_peer.sendall(b"trigger")
    rst = victim.wait_for(lambda s: s.flags & RST)
    assert any(s.flags & RST for s in rst)
    assert ctx.stats["tcp.fault"] == 1 and tcp_flows(ctx) == 1
    with pytest.raises(ConnectionResetError):
        for _ in range(3):  # the reset reaches the peer
            if not victim_peer.recv(100):
                break
    other.send(ACK | PSH, b"still here")  # the loop and the other flow go on
    ctx.loop.run_once(0.05)
    assert other_peer.recv(100) == b"still here"
    other_peer.sendall(b"and back")
    assert any(bytes(s.payload) == b"and back" for s in other.wait_for(lambda s: len(s.payload)))


def test_closed_flows_leave_no_descriptor_timer_or_entry_behind(ctx, server):
    """Connections ended by the guest's RST and connections refused: afterwards
    the descriptors, the flow table and the timer heap are as before."""
    fds_before = len(os.listdir("/proc/self/fd"))
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    refused = closed_port.getsockname()[1]  # bound, never listening: refused
    for n in range(300):
        guest = Guest(ctx, GW4, server.getsockname()[1], sport=20000 + n)
        guest.handshake()
        peer = accept_polling(ctx, server)
        guest.send(RST | ACK)
        peer.close()
        Guest(ctx, GW4, refused, sport=30000 + n).send(SYN, options=tcp_options(mss=1460))
        ctx.loop.run_once(0)
    deadline = time.monotonic() + 1
    while tcp_flows(ctx) and time.monotonic() < deadline:
        ctx.loop.run_once(0.01)
    closed_port.close()
    assert tcp_flows(ctx) == 0 and ctx.tcp.conns == 0
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert ctx.loop.pending_timers() < 300  # dead timers do not pile up
