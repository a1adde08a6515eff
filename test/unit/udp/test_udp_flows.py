"""UDP flows with real sockets, in a network namespace of the test's own.

The test thread moves into a fresh network namespace for each test (loopback
up, the "remote" addresses and the host's resolver on it), so that the
sockets the handler opens and the peers the test opens meet there; it moves
back afterwards whatever happens.  Frames from the guest are built with
scapy and handed to the handler as the dispatcher would; frames to the
guest are collected by a tap that records each ``send_frames`` call.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6, IPv6
from scapy.layers.l2 import Ether

from passt import runtime
from passt.backends.dispatch import Dispatcher
from passt.checksum import Buffer
from passt.context import Ctx
from passt.flow import fwd
from passt.flow.table import FlowTable
from passt.host.netns import CLONE_NEWNET, setns, unshare
from passt.loop import EventLoop
from passt.packet import parse_frame, verify_ipv4_header, verify_l4
from passt.udp import tap as udp

from ..l2_fixtures import (
    GUEST4,
    GUEST6,
    GUEST_MAC_STR,
    GW4,
    GW6,
    OUR_MAC_STR,
    CollectingTap,
    make_ctx,
    net_with,
)

REMOTE = {4: "203.0.113.1", 6: "2001:db8:2::1"}
RESOLVER = {4: "203.0.113.53", 6: "2001:db8:2::53"}
MATCH = {4: "10.9.9.9", 6: "fd00::53"}
GUEST = {4: GUEST4, 6: GUEST6}
GATEWAY = {4: GW4, 6: GW6}
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
ANY = {4: "0.0.0.0", 6: "::"}
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
VERSIONS = [pytest.param(4, id="v4"), pytest.param(6, id="v6")]
GPORT = 4444


@pytest.fixture
def netns() -> Iterator[None]:
    """The test thread in a new, anonymous network namespace (gone once it leaves)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWNET)
        # Children forked from this thread share its namespace.
        commands = [["link", "set", "lo", "up"]] + [
            ["addr", "add", address, "dev", "lo", "nodad"]
            for version in (4, 6) for address in (REMOTE[version], RESOLVER[version],
                                                  GUEST[version])]
        for command in commands:
            subprocess.run(["ip", *command], check=True, capture_output=True, timeout=20)
        yield
    finally:
        setns(home, CLONE_NEWNET)
        os.close(home)


class CallTap(CollectingTap):
    """A tap that keeps every frame and counts ``send_frames`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def send_frames(self, frames: Sequence[Buffer]) -> int:
        self.calls += 1
        return super().send_frames(frames)


def new_ctx(net_changes: dict | None = None, **conf: object) -> Ctx:
    net = net_with(dns_host4=ipaddress.ip_address(RESOLVER[4]),
                   dns_host6=ipaddress.ip_address(RESOLVER[6]),
                   dns_match4=ipaddress.ip_address(MATCH[4]),
                   dns_match6=ipaddress.ip_address(MATCH[6]),
                   **(net_changes or {}))
    fields: dict[str, object] = {"outbound": (), "outbound_if4": None, "outbound_if6": None}
    fields.update(conf)
    ctx = make_ctx(net=net, loop=EventLoop(), **fields)
    ctx.tap = CallTap()
    return ctx


@pytest.fixture
def contexts(netns: None) -> Iterator[list[Ctx]]:
    """Contexts made by a test, closed at its end: every flow, the loop."""
    made: list[Ctx] = []
    yield made
    for ctx in made:
        if ctx.fwd is not None:
            fwd.close(ctx)
        udp.close(ctx)
        assert ctx.flows.stats()["total"] == 0
        assert ctx.loop is not None
        ctx.loop.close()


def started(contexts: list[Ctx], forwarder: bool = False, max_flows: int = 0) -> Ctx:
    """A context with the UDP handler (and ``fwd``'s registry), closed with the test."""
    context = new_ctx()
    if max_flows:
        context.flows = FlowTable(max_flows)
    if forwarder:
        fwd.setup(context)
    udp.init(context)
    contexts.append(context)
    return context


@pytest.fixture
def ctx(contexts: list[Ctx]) -> Ctx:
    return started(contexts)


def guest_frame(version: int, dst: str, dport: int, payload: bytes, sport: int = GPORT,
                src: str | None = None) -> bytes:
    src = src or GUEST[version]
    ip_layer = IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)
    return bytes(Ether(src=GUEST_MAC_STR, dst=OUR_MAC_STR) / ip_layer
                 / UDP(sport=sport, dport=dport) / payload)


def send(ctx: Ctx, *frames: bytes) -> None:
    """Hand frames of one flow to the handler, as one dispatcher batch."""
    udp.from_tap_batch(ctx, [parse_frame(f) for f in frames])


def peer(version: int, address: str, port: int = 0, reuse: bool = False) -> socket.socket:
    s = socket.socket(FAMILY[version], socket.SOCK_DGRAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.settimeout(5)
    return s


def open_flow(ctx: Ctx, version: int = 4,
              sport: int = GPORT) -> tuple[socket.socket, tuple]:
    """A peer on the remote address, a flow from the guest to it; the peer and the
    flow's host-side address (where the peer answers)."""
    server = peer(version, REMOTE[version])
    send(ctx, guest_frame(version, REMOTE[version], server.getsockname()[1], b"hi",
                          sport=sport))
    _, source = server.recvfrom(100)
    return server, source


def run_until(ctx: Ctx, done: Callable[[], bool], timeout: float = 5.0) -> None:
    assert ctx.loop is not None
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        ctx.loop.run_once(0.02)


def tap(ctx: Ctx) -> CallTap:
    assert isinstance(ctx.tap, CallTap)
    return ctx.tap


def to_guest(ctx: Ctx, count: int, timeout: float = 5.0) -> list[Ether]:
    """Run the loop until ``count`` frames went to the guest; check and parse them."""
    run_until(ctx, lambda: len(tap(ctx).frames) >= count, timeout)
    frames = tap(ctx).frames
    for frame in frames:
        pkt = parse_frame(frame)
        assert verify_l4(pkt) and (pkt.ip_version == 6 or verify_ipv4_header(pkt))
    return [Ether(f) for f in frames]


def ends(frame: Ether) -> tuple[str, int, str, int, bytes]:
    layer = frame[IP] if IP in frame else frame[IPv6]
    return (layer.src, layer[UDP].sport, layer.dst, layer[UDP].dport, bytes(layer[UDP].payload))


# ---------------------------------------------------------------- outbound


@pytest.mark.parametrize("version", VERSIONS)
def test_echo_with_the_guests_port_kept_and_the_remote_address_back(ctx: Ctx,
                                                                    version: int) -> None:
    server = peer(version, REMOTE[version])
    port = server.getsockname()[1]
    sizes = [1, 1400, 9000, 65000]
    for i, size in enumerate(sizes):
        payload = os.urandom(size)
        send(ctx, guest_frame(version, REMOTE[version], port, payload))
        data, source = server.recvfrom(65536)
        assert data == payload
        assert source[1] == GPORT
        server.sendto(data[::-1], source)
        got = to_guest(ctx, i + 1)
        assert ends(got[i]) == (REMOTE[version], port, GUEST[version], GPORT, payload[::-1])
        assert (got[i].src, got[i].dst) == (OUR_MAC_STR, GUEST_MAC_STR)
    assert ctx.flows.stats()["udp"] == 1
    assert ctx.stats["udp.to_host"] == ctx.stats["udp.to_guest"] == len(sizes)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_gateway_is_the_hosts_loopback(ctx: Ctx, version: int) -> None:
    server = peer(version, LOOPBACK[version])
    port = server.getsockname()[1]
    send(ctx, guest_frame(version, GATEWAY[version], port, b"to the host"))
    data, source = server.recvfrom(100)
    assert (data, source[0]) == (b"to the host", LOOPBACK[version])
    server.sendto(b"from the host", source)
    assert ends(to_guest(ctx, 1)[0]) == (GATEWAY[version], port, GUEST[version], GPORT,
                                         b"from the host")


@pytest.mark.parametrize("version", VERSIONS)
def test_without_map_gw_the_gateway_is_unreachable_here_and_that_is_counted(
        contexts: list[Ctx], version: int) -> None:
    context = new_ctx(no_map_gw=True)
    contexts.append(context)
    send(context, guest_frame(version, GATEWAY[version], 7000, b"lost"))
    assert context.stats["drop.udp_connect"] == 1
    assert "drop.udp_no_flow" not in context.stats  # one reason per datagram
    assert context.flows.stats()["total"] == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_dns_forward_reaches_the_hosts_resolver_and_answers_come_from_the_forwarded_address(
        ctx: Ctx, version: int) -> None:
    resolver = peer(version, RESOLVER[version], 53)
    send(ctx, guest_frame(version, MATCH[version], 53, b"query"))
    data, source = resolver.recvfrom(100)
    assert data == b"query"
    resolver.sendto(b"answer", source)
    assert ends(to_guest(ctx, 1)[0]) == (MATCH[version], 53, GUEST[version], GPORT, b"answer")


@pytest.mark.parametrize("dst", ["255.255.255.255", "224.0.0.251", "ff02::fb"])
def test_broadcast_and_multicast_are_dropped_and_counted(ctx: Ctx, dst: str) -> None:
    send(ctx, guest_frame(6 if ":" in dst else 4, dst, 5353, b"anyone?"))
    assert ctx.stats["drop.udp_addr"] == 1
    assert ctx.flows.stats()["total"] == 0


def test_a_batch_is_sent_in_order_through_one_flow(ctx: Ctx) -> None:
    server = peer(4, REMOTE[4])
    port = server.getsockname()[1]
    send(ctx, *(guest_frame(4, REMOTE[4], port, b"datagram %d" % i) for i in range(20)))
    assert [server.recv(100) for _ in range(20)] == [b"datagram %d" % i for i in range(20)]
    assert ctx.stats["udp.to_host"] == 20
    assert ctx.flows.stats()["udp"] == 1


def test_flows_are_keyed_by_both_ports(ctx: Ctx) -> None:
    servers = [peer(4, REMOTE[4]) for _ in range(2)]
    for sport in (5000, 5001):
        for server in servers:
            send(ctx, guest_frame(4, REMOTE[4], server.getsockname()[1], b"x", sport=sport))
    for server in servers:
        assert sorted(server.recvfrom(10)[1][1] for _ in range(2)) == [5000, 5001]
    assert ctx.flows.stats()["udp"] == 4


def test_a_guest_port_taken_on_the_host_falls_back_to_another(ctx: Ctx) -> None:
    squatter = peer(4, ANY[4], GPORT)  # no SO_REUSEADDR: nobody may share it
    server = peer(4, REMOTE[4])
    send(ctx, guest_frame(4, REMOTE[4], server.getsockname()[1], b"hello"))
    data, source = server.recvfrom(100)
    assert data == b"hello" and source[1] != GPORT
    server.sendto(b"back", source)
    assert ends(to_guest(ctx, 1)[0])[3:] == (GPORT, b"back")
    squatter.close()


def test_flows_falling_back_from_a_taken_port_get_ports_of_their_own(ctx: Ctx) -> None:
    """Our flow sockets all have SO_REUSEADDR, under which the kernel's automatic
    binding may pick a port another one holds: the fallback must not use it.
    (With it, 400 automatic picks share a port about 19 times in 20.)"""
    squatter = peer(4, ANY[4], GPORT)
    for rport in range(20000, 20400):
        send(ctx, guest_frame(4, REMOTE[4], rport, b"x"))
    ports = [flow.sock.getsockname()[1] for flow in ctx.udp.flows.values()]
    assert len(ports) == 400 and GPORT not in ports
    assert len(set(ports)) == len(ports)
    squatter.close()


def test_a_burst_reaches_the_guest_in_few_send_calls(ctx: Ctx) -> None:
    server, source = open_flow(ctx)
    for i in range(200):
        server.sendto(b"burst %d" % i, source)
    got = to_guest(ctx, 200)
    assert [ends(f)[4] for f in got] == [b"burst %d" % i for i in range(200)]
    print(f"200 datagrams in {tap(ctx).calls} send_frames calls")
    assert tap(ctx).calls <= 200 // udp.RECV_BATCH + 2


def test_datagrams_larger_than_the_mtu_are_dropped_towards_the_guest(
        contexts: list[Ctx]) -> None:
    context = new_ctx({"mtu": 1500})
    contexts.append(context)
    server, source = open_flow(context)
    server.sendto(b"a" * 1473, source)  # 20 + 8 + 1473 > 1500
    server.sendto(b"b" * 1472, source)
    got = to_guest(context, 1)
    run_until(context, lambda: False, 0.2)
    assert [len(ends(f)[4]) for f in got] == [1472]
    assert context.stats["drop.udp_mtu"] == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_port_unreachable_reaches_the_guest_and_the_flow_goes_on(ctx: Ctx,
                                                                 version: int) -> None:
    closed = peer(version, REMOTE[version])
    port = closed.getsockname()[1]
    closed.close()
    send(ctx, guest_frame(version, REMOTE[version], port, b"nobody"))
    error = to_guest(ctx, 1)[0]
    if version == 4:
        assert (error[IP].src, error[IP].dst) == (REMOTE[4], GUEST4)
        assert (error[ICMP].type, error[ICMP].code) == (3, 3)
        assert (error[IPerror].src, error[IPerror].dst) == (GUEST4, REMOTE[4])
        assert (error[UDPerror].sport, error[UDPerror].dport) == (GPORT, port)
    else:
        assert (error[IPv6].src, error[IPv6].dst) == (REMOTE[6], GUEST6)
        assert error[ICMPv6DestUnreach].code == 4
        assert (error[IPerror6].src, error[IPerror6].dst) == (GUEST6, REMOTE[6])
        assert (error[UDPerror].sport, error[UDPerror].dport) == (GPORT, port)
    assert ctx.stats["udp.socket_errors"] == ctx.stats["udp.icmp_to_guest"] == 1
    server = peer(version, REMOTE[version], port)  # somebody listens now
    send(ctx, guest_frame(version, REMOTE[version], port, b"hello again"))
    assert server.recv(100) == b"hello again"
    assert ctx.flows.stats()["udp"] == 1


def test_a_malformed_datagram_is_counted_and_its_neighbours_go_through(ctx: Ctx) -> None:
    server = peer(4, REMOTE[4])
    port = server.getsockname()[1]
    bad = bytearray(guest_frame(4, REMOTE[4], port, b"bad"))
    bad[14 + 20 + 4 : 14 + 20 + 6] = (500).to_bytes(2, "big")  # UDP length beyond the packet
    send(ctx, guest_frame(4, REMOTE[4], port, b"one"), bytes(bad),
         guest_frame(4, REMOTE[4], port, b"two"))
    assert [server.recv(10), server.recv(10)] == [b"one", b"two"]
    assert ctx.stats["drop.udp_length"] == 1


def test_without_a_tap_datagrams_are_read_and_dropped(ctx: Ctx) -> None:
    server, source = open_flow(ctx)
    ctx.tap = None
    server.sendto(b"into the void", source)
    run_until(ctx, lambda: ctx.stats["drop.udp_no_tap"] > 0)
    assert ctx.stats["drop.udp_no_tap"] == 1


def test_a_new_guest_mac_is_used_for_existing_flows(ctx: Ctx) -> None:
    server, source = open_flow(ctx)
    ctx.guest_mac = bytes.fromhex("020000000099")
    udp.guest_mac_changed(ctx)
    server.sendto(b"back", source)
    assert to_guest(ctx, 1)[0].dst == "02:00:00:00:00:99"


# ---------------------------------------------------------------- lifetime and limits


def test_idle_flows_expire_and_busy_ones_stay(ctx: Ctx) -> None:
    ctx.udp.timeout, ctx.udp.sweep_interval = 0.4, 0.1
    server = peer(4, REMOTE[4])
    port = server.getsockname()[1]
    send(ctx, guest_frame(4, REMOTE[4], port, b"idle", sport=5000))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        send(ctx, guest_frame(4, REMOTE[4], port, b"busy", sport=5001))
        run_until(ctx, lambda: False, 0.05)
    keys = [key for key, _ in ctx.flows.items()]
    assert [key[2] for key in keys] == [5001]
    assert ctx.stats["udp.expired"] == 1
    assert ctx.udp.sweep_timer is not None
    ctx.udp.timeout = 0.0
    run_until(ctx, lambda: ctx.flows.stats()["total"] == 0, 1.0)
    assert ctx.flows.stats()["total"] == 0
    run_until(ctx, lambda: ctx.udp.sweep_timer is None, 1.0)
    assert ctx.udp.sweep_timer is None  # no flows, no timer


def test_a_full_flow_table_refuses_new_flows_only(contexts: list[Ctx]) -> None:
    context = started(contexts, max_flows=3)
    server = peer(4, REMOTE[4])
    port = server.getsockname()[1]
    for sport in (5000, 5001, 5002, 5003):
        send(context, guest_frame(4, REMOTE[4], port, b"%d" % sport, sport=sport))
    assert sorted(server.recvfrom(10)[1][1] for _ in range(3)) == [5000, 5001, 5002]
    assert context.stats["udp.refused_table"] == 1
    assert context.stats["drop.udp_no_flow"] == 1
    send(context, guest_frame(4, REMOTE[4], port, b"still here", sport=5000))
    assert server.recv(100) == b"still here"


def test_running_out_of_descriptors_refuses_new_flows_only(ctx: Ctx) -> None:
    server, source = open_flow(ctx, sport=5000)
    port = server.getsockname()[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 10, hard))
        for sport in range(5001, 7001):
            send(ctx, guest_frame(4, REMOTE[4], port, b"more", sport=sport))
            if ctx.stats["udp.refused_socket"] >= 5:
                break
        refused = ctx.stats["udp.refused_socket"]
        opened = ctx.flows.stats()["udp"]
        # Old flows work both ways without new descriptors.
        send(ctx, guest_frame(4, REMOTE[4], port, b"old flow", sport=5000))
        server.sendto(b"old flow back", source)
        run_until(ctx, lambda: any(b"old flow back" in f for f in tap(ctx).frames))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"{opened} flows opened, {refused} refused")
    assert refused == 5 and opened < 2001
    assert ctx.stats["drop.udp_no_flow"] == refused
    assert any(b"old flow back" in f for f in tap(ctx).frames)
    received = []
    server.settimeout(0.5)
    try:
        while True:
            received.append(server.recv(100))
    except TimeoutError:
        pass
    assert b"old flow" in received


def test_close_leaves_no_flow_socket_or_timer(ctx: Ctx) -> None:
    server = peer(4, REMOTE[4])
    for sport in range(5000, 5010):
        send(ctx, guest_frame(4, REMOTE[4], server.getsockname()[1], b"x", sport=sport))
    state = ctx.udp
    socks = [flow.sock for flow in state.flows.values()]
    udp.close(ctx)
    assert ctx.udp is None and ctx.flows.stats()["total"] == 0
    assert all(s.fileno() == -1 for s in socks)
    assert state.sweep_timer is None and state.flush_timer is None
    assert ctx.loop is not None and not any(ctx.loop.watching(fd) for fd in range(1024))


# ---------------------------------------------------------------- inbound (forwarded ports)


@pytest.fixture
def fwd_ctx(contexts: list[Ctx]) -> Ctx:
    return started(contexts, forwarder=True)


def forward(ctx: Ctx, version: int, port: int, target: int) -> fwd.Listener:
    return ctx.fwd.open(fwd.Listen(fwd.UDP, fwd.HOST, FAMILY[version], ANY[version], port),
                        target)


@pytest.mark.parametrize("version", VERSIONS)
def test_forwarded_port_keeps_the_source_and_answers_leave_through_it(fwd_ctx: Ctx,
                                                                      version: int) -> None:
    forward(fwd_ctx, version, 15000, 15001)
    client = peer(version, REMOTE[version])
    client_port = client.getsockname()[1]
    client.sendto(b"inbound", (REMOTE[version], 15000))
    got = to_guest(fwd_ctx, 1)
    assert ends(got[0]) == (REMOTE[version], client_port, GUEST[version], 15001, b"inbound")
    send(fwd_ctx, guest_frame(version, REMOTE[version], client_port, b"answer", sport=15001))
    data, source = client.recvfrom(100)
    assert (data, source[1]) == (b"answer", 15000)
    assert fwd_ctx.stats["udp.flows_in"] == 1 and fwd_ctx.stats["udp.flows_out"] == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_forwarded_datagrams_from_the_hosts_own_address_come_from_the_gateway(
        fwd_ctx: Ctx, version: int) -> None:
    forward(fwd_ctx, version, 15000, 15000)
    client = peer(version, GUEST[version])  # the host's address is the guest's
    client.sendto(b"local", (GUEST[version], 15000))
    got = to_guest(fwd_ctx, 1)
    assert ends(got[0])[0] == GATEWAY[version]
    send(fwd_ctx, guest_frame(version, GATEWAY[version], client.getsockname()[1], b"back",
                              sport=15000))
    data, source = client.recvfrom(100)
    assert (data, source[0], source[1]) == (b"back", GUEST[version], 15000)


def test_a_guest_serving_a_forwarded_port_speaks_first_from_that_port(fwd_ctx: Ctx) -> None:
    forward(fwd_ctx, 4, 15002, 15002)
    server = peer(4, REMOTE[4])
    send(fwd_ctx, guest_frame(4, REMOTE[4], server.getsockname()[1], b"hello", sport=15002))
    data, source = server.recvfrom(100)
    assert (data, source[1]) == (b"hello", 15002)
    server.sendto(b"welcome", source)
    assert ends(to_guest(fwd_ctx, 1)[0])[3:] == (15002, b"welcome")
    assert fwd_ctx.flows.stats()["udp"] == 1  # the answer found the guest's flow


# ---------------------------------------------------------------- wiring


def test_no_udp_leaves_the_handler_out_and_frames_are_counted() -> None:
    conf = runtime_conf(no_udp=True)
    assert "udp" not in runtime._handler_table(conf)
    assert runtime._handler_table(runtime_conf())["udp"] is udp
    context = new_ctx()
    dispatcher = Dispatcher(context, runtime._handler_table(conf))
    dispatcher.handle_frames([guest_frame(4, REMOTE[4], 7000, b"x")])
    assert context.stats["drop.no_udp"] == 1
    assert context.udp is None
    assert context.loop is not None
    context.loop.close()


def runtime_conf(**changes: bool) -> object:
    from types import SimpleNamespace

    fields = {"no_tcp": False, "no_udp": False, "no_icmp": False, "no_dhcp": False,
              "no_dhcpv6": False, "no_ndp": False}
    fields.update(changes)
    return SimpleNamespace(**fields)
