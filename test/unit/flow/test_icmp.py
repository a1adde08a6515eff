"""ICMP echo through ping sockets, in a namespace of the test's own.

The test moves its own thread into a fresh network namespace (loopback up,
two "remote" addresses on it, ping sockets allowed for every group) for the
duration of each test, so that the ping sockets the handler opens live
there, and moves back afterwards whatever happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from passt.flow import icmp
from passt.host.netns import CLONE_NEWNET, setns
from passt.loop import EventLoop
from passt.packet import parse_frame, verify_ipv4_header, verify_l4

from ..l2_fixtures import (
    GUEST4,
    GUEST6,
    GUEST_MAC_STR,
    GW4,
    GW6,
    OUR_MAC_STR,
    drops,
    make_ctx,
    net_with,
)

REMOTE4 = "203.0.113.1"
REMOTE6 = "2001:db8:2::1"
LINK_LOCAL = "fe80::99"
def _ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, timeout=20)


def _ping_group_range(netns: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    f"net.ipv4.ping_group_range={value}"], check=True, timeout=20)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"l2-icmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _ip(name, "link", "set", "lo", "up")
        _ip(name, "addr", "add", f"{REMOTE4}/32", "dev", "lo")
        _ip(name, "addr", "add", f"{REMOTE6}/128", "dev", "lo", "nodad")
        _ip(name, "link", "add", "ll0", "type", "veth", "peer", "name", "ll1")
        _ip(name, "link", "set", "ll0", "up")
        _ip(name, "link", "set", "ll1", "up")
        _ip(name, "addr", "add", f"{LINK_LOCAL}/64", "dev", "ll0", "nodad")
        _ping_group_range(name, "0 2147483647")
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, CLONE_NEWNET)
        finally:
            os.close(target)
        yield name
    finally:
        setns(home, CLONE_NEWNET)
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=20)


@pytest.fixture
def ctx(netns: str):
    loop = EventLoop()
    context = make_ctx(loop=loop)
    yield context
    icmp.close(context)
    loop.close()


def echo_request(dst: str, ident: int, seq: int, payload: bytes = b"ping payload") -> bytes:
    if ":" in dst:
        l3 = IPv6(src=GUEST6, dst=dst) / ICMPv6EchoRequest(id=ident, seq=seq, data=payload)
    else:
        l3 = IP(src=GUEST4, dst=dst) / ICMP(type=8, id=ident, seq=seq) / payload
    return bytes(Ether(src=GUEST_MAC_STR, dst=OUR_MAC_STR) / l3)


def replies(context, count: int, timeout: float = 5.0) -> list[Ether]:
    """Run the loop until ``count`` frames went to the guest (bounded in time)."""
    deadline = time.monotonic() + timeout
    while len(context.tap.frames) < count and time.monotonic() < deadline:
        context.loop.run_once(0.05)
    frames = context.tap.frames
    for frame in frames:
        pkt = parse_frame(frame)
        assert verify_l4(pkt) and (pkt.ip_version == 6 or verify_ipv4_header(pkt))
    return [Ether(f) for f in frames]


@pytest.mark.parametrize(("dst", "version"), [(REMOTE4, 4), (REMOTE6, 6)])
def test_echo_reply_comes_back_with_the_guests_id_and_sequence(ctx, dst: str, version: int) -> None:
    for seq in (1, 2, 3):
        icmp.from_tap(ctx, parse_frame(echo_request(dst, 0x4242, seq, b"data %d" % seq)))
    got = replies(ctx, 3)
    assert len(got) == 3
    for seq, reply in zip((1, 2, 3), got, strict=True):
        assert (reply.src, reply.dst) == (OUR_MAC_STR, GUEST_MAC_STR)
        if version == 4:
            assert (reply[IP].src, reply[IP].dst) == (dst, GUEST4)
            assert (reply[ICMP].type, reply[ICMP].id, reply[ICMP].seq) == (0, 0x4242, seq)
            assert bytes(reply[ICMP].payload) == b"data %d" % seq
        else:
            assert (reply[IPv6].src, reply[IPv6].dst) == (dst, GUEST6)
            echo = reply[ICMPv6EchoReply]
            assert (echo.id, echo.seq, echo.data) == (0x4242, seq, b"data %d" % seq)
    assert ctx.flows.stats()["icmp"] == 1
    assert ctx.stats["icmp.requests"] == 3 and ctx.stats["icmp.replies"] == 3


@pytest.mark.parametrize(("gateway", "version"), [(GW4, 4), (GW6, 6)])
def test_gateway_is_the_hosts_loopback(ctx, gateway: str, version: int) -> None:
    icmp.from_tap(ctx, parse_frame(echo_request(gateway, 7, 1)))
    [reply] = replies(ctx, 1)
    layer = IP if version == 4 else IPv6
    assert (reply[layer].src, reply[layer].dst) == (gateway, GUEST4 if version == 4 else GUEST6)


def test_no_map_gw_sends_to_the_gateway_itself(netns: str) -> None:
    loop = EventLoop()
    context = make_ctx(loop=loop, no_map_gw=True)
    try:
        icmp.from_tap(context, parse_frame(echo_request(GW4, 7, 1)))  # unreachable here
        assert replies(context, 1, timeout=0.5) == []
        assert drops(context) == {"drop.icmp_connect": 1}
    finally:
        icmp.close(context)
        loop.close()


def test_link_local_destination_is_reached_through_the_template_interface(netns: str) -> None:
    loop = EventLoop()
    context = make_ctx(net_with(ifname6="ll0"), loop=loop)
    try:
        icmp.from_tap(context, parse_frame(echo_request(LINK_LOCAL, 5, 1)))
        [reply] = replies(context, 1)
        assert (reply[IPv6].src, reply[ICMPv6EchoReply].id) == (LINK_LOCAL, 5)
    finally:
        icmp.close(context)
        loop.close()


def test_identifier_taken_by_another_socket_is_translated_back(ctx) -> None:
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    try:
        squatter.bind(("0.0.0.0", 0x1111))
        icmp.from_tap(ctx, parse_frame(echo_request(REMOTE4, 0x1111, 5)))
        [reply] = replies(ctx, 1)
        [(_key, flow)] = list(ctx.flows.items())
        assert flow.sock.getsockname()[1] != 0x1111
        assert (reply[ICMP].id, reply[ICMP].seq) == (0x1111, 5)
    finally:
        squatter.close()


def test_flows_are_keyed_by_destination_and_identifier(ctx) -> None:
    sent = [(REMOTE4, 1, 10), (REMOTE4, 2, 20), (GW4, 1, 30), (REMOTE4, 1, 40)]
    for dst, ident, seq in sent:
        icmp.from_tap(ctx, parse_frame(echo_request(dst, ident, seq)))
    keys = {key for key, _ in ctx.flows.items()}
    ip = socket.inet_aton
    assert keys == {("icmp", ip(GUEST4), ip(REMOTE4), 1), ("icmp", ip(GUEST4), ip(REMOTE4), 2),
                    ("icmp", ip(GUEST4), ip(GW4), 1)}
    got = {r[ICMP].seq: (r[IP].src, r[ICMP].id) for r in replies(ctx, 4)}
    assert got == {seq: (dst, ident) for dst, ident, seq in sent}


def test_idle_flows_expire_and_close_their_sockets(ctx) -> None:
    service = icmp.init(ctx)
    service.timeout = 0.3
    icmp.from_tap(ctx, parse_frame(echo_request(REMOTE4, 9, 1)))
    [(_key, flow)] = list(ctx.flows.items())
    fd = flow.sock.fileno()
    assert ctx.loop.watching(fd)
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:  # keep it busy past its first deadline
        icmp.from_tap(ctx, parse_frame(echo_request(REMOTE4, 9, 2)))
        ctx.loop.run_once(0.05)
    assert len(ctx.flows) == 1
    deadline = time.monotonic() + 3
    while len(ctx.flows) and time.monotonic() < deadline:
        ctx.loop.run_once(0.05)
    assert len(ctx.flows) == 0 and flow.sock.fileno() == -1 and not ctx.loop.watching(fd)


def test_ping_sockets_denied_are_counted(ctx, netns: str) -> None:
    _ping_group_range(netns, "1 0")
    icmp.from_tap(ctx, parse_frame(echo_request(REMOTE4, 3, 1)))
    icmp.from_tap(ctx, parse_frame(echo_request(REMOTE4, 3, 2)))
    assert drops(ctx) == {"drop.icmp_socket": 2} and len(ctx.flows) == 0


def test_full_flow_table_is_counted(ctx) -> None:
    ctx.flows.max_flows = 1
    icmp.from_tap(ctx, parse_frame(echo_request(REMOTE4, 1, 1)))
    icmp.from_tap(ctx, parse_frame(echo_request(REMOTE4, 2, 1)))
    assert drops(ctx) == {"drop.flow_table_full": 1} and len(ctx.flows) == 1


def test_short_echo_request_is_counted(ctx) -> None:
    frame = bytes(Ether(src=GUEST_MAC_STR) / IP(src=GUEST4, dst=REMOTE4, proto=1) / b"\x08\0\0\0")
    icmp.from_tap(ctx, parse_frame(frame))
    assert drops(ctx) == {"drop.icmp_short": 1}


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=200),
       st.sampled_from([REMOTE4, REMOTE6, GW4, GW6]))
def test_any_echo_request_is_relayed_or_counted(ctx, ident: int, seq: int, body: bytes,
                                                dst: str) -> None:
    before = ctx.stats["icmp.requests"] + sum(drops(ctx).values())
    icmp.from_tap(ctx, parse_frame(echo_request(dst, ident, seq, body)))
    assert ctx.stats["icmp.requests"] + sum(drops(ctx).values()) == before + 1
