"""The frame dispatcher: routing, filtering, counting, batches, and the loop's backend."""

from __future__ import annotations

import ipaddress
import os
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passt import log, packet
from passt.backends.dispatch import Dispatcher, RecordingTap, SourceFilter, classify
from passt.backends.tap import TunTap
from passt.context import BROADCAST_MAC, Ctx
from passt.loop import EventLoop
from passt.packet import Packet, ParseError

GUEST_MAC = bytes.fromhex("525400000001")
NEW_GUEST_MAC = bytes.fromhex("525400000002")
HOST_MAC = bytes.fromhex("02fc00000001")
GUEST4 = ipaddress.IPv4Address("192.0.2.2").packed
HOST4 = ipaddress.IPv4Address("192.0.2.1").packed
OTHER4 = ipaddress.IPv4Address("198.51.100.7").packed
ANY4 = bytes(4)
BCAST4 = b"\xff" * 4
GUEST6 = ipaddress.IPv6Address("2001:db8::2").packed
SLAAC6 = ipaddress.IPv6Address("2001:db8::5054:ff:fe00:1").packed
OTHER6 = ipaddress.IPv6Address("2001:db8:1::2").packed
HOST6 = ipaddress.IPv6Address("2001:db8::1").packed
LL6 = ipaddress.IPv6Address("fe80::5054:ff:fe00:1").packed
ANY6 = bytes(16)
ALL_ROUTERS6 = ipaddress.IPv6Address("ff02::2").packed
DHCP6_SERVERS = ipaddress.IPv6Address("ff02::1:2").packed
TEST_ETHERTYPE = 0x88B5  # IEEE "local experimental": nothing else sends it

# ---------------------------------------------------------------- frames


def udp(src: bytes, dst: bytes, sport: int, dport: int, mac: bytes = GUEST_MAC) -> bytes:
    return packet.build_frame_udp(HOST_MAC, mac, src, dst, sport, dport, b"data")


def icmp(src: bytes, dst: bytes, icmp_type: int) -> bytes:
    return packet.build_frame_icmp(HOST_MAC, GUEST_MAC, src, dst, icmp_type, 0, 7, 1, b"ping")


def tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int = 1) -> bytes:
    return packet.build_frame_tcp(
        HOST_MAC, GUEST_MAC, src, dst, sport, dport, seq, 0, packet.ACK, 1000, b"payload"
    )


def arp_request(mac: bytes = GUEST_MAC) -> bytes:
    return packet.build_frame_arp(
        b"\xff" * 6, mac, packet.ARP_REQUEST, mac, GUEST4, bytes(6), HOST4
    )


def ipv4_fragment() -> bytes:
    frame = bytearray(udp(GUEST4, HOST4, 1000, 2000))
    frame[14 + 6] |= 0x20  # More Fragments
    return bytes(frame)


def raw_frame(payload: bytes, src_mac: bytes = b"\x02\x00\x00\x00\x00\xaa") -> bytes:
    return b"\xff" * 6 + src_mac + TEST_ETHERTYPE.to_bytes(2, "big") + payload


ROUTED = {
    "arp": arp_request(),
    "ndp": icmp(LL6, ALL_ROUTERS6, 133),
    "dhcp": udp(ANY4, BCAST4, 68, 67),
    "dhcpv6": udp(LL6, DHCP6_SERVERS, 546, 547),
    "icmp": icmp(GUEST4, HOST4, 8),
    "tcp": tcp(GUEST4, HOST4, 40000, 80),
    "udp": udp(GUEST4, HOST4, 40000, 53),
}
MORE_ROUTED = [
    ("ndp", icmp(ANY6, ALL_ROUTERS6, 135)),
    ("icmp", icmp(GUEST6, HOST6, 128)),
    ("tcp", tcp(SLAAC6, HOST6, 40000, 80)),
    ("udp", udp(GUEST6, HOST6, 40000, 53)),
]

# ---------------------------------------------------------------- fakes


class Recorder:
    """A handler that records what it gets in a shared event list."""

    def __init__(self, name: str, events: list[tuple[str, Any]]) -> None:
        self.name = name
        self.events = events

    def from_tap(self, ctx: Ctx, pkt: Packet) -> None:
        self.events.append((self.name, bytes(pkt.frame)))


class BatchRecorder(Recorder):
    def from_tap_batch(self, ctx: Ctx, pkts: list[Packet]) -> None:
        self.events.append((self.name, [bytes(p.frame) for p in pkts]))


class Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def from_tap(self, ctx: Ctx, pkt: Packet) -> None:
        raise self.exc


def all_handlers(events: list[tuple[str, Any]]) -> dict[str, Recorder]:
    return {route: Recorder(route, events) for route in
            ("arp", "ndp", "dhcp", "dhcpv6", "icmp", "tcp", "udp")}  # fmt: skip


def filtered_dispatcher(ctx: Ctx, handlers: dict[str, Any]) -> Dispatcher:
    sources = SourceFilter(GUEST4, ipaddress.IPv6Network("2001:db8::/64"))
    return Dispatcher(ctx, handlers, sources)


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize(("route", "frame"), list(ROUTED.items()) + MORE_ROUTED)
def test_each_kind_of_frame_reaches_its_handler(route, frame):
    events: list[tuple[str, Any]] = []
    ctx = Ctx()
    filtered_dispatcher(ctx, all_handlers(events)).handle_frames([frame])
    assert events == [(route, frame)]
    assert ctx.stats == {"tap.frames_in": 1}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00" * 10, "drop.short_frame"),
        (raw_frame(b"x" * 50), "drop.ethertype"),
        (icmp(GUEST4, HOST4, 0), "drop.icmp_type"),
        (icmp(GUEST6, HOST6, 129), "drop.icmp_type"),
        (ipv4_fragment(), "drop.fragment"),
        (packet.build_frame_ip(HOST_MAC, GUEST_MAC, GUEST4, HOST4, 47, b"gre!"), "drop.proto"),
        (packet.build_frame_ip(HOST_MAC, GUEST_MAC, GUEST4, HOST4, 17, b"udp"), "drop.udp_short"),
        (packet.build_frame_ip(HOST_MAC, GUEST_MAC, GUEST4, HOST4, 6, b"tcp"), "drop.tcp_short"),
        (udp(OTHER4, HOST4, 1, 2), "drop.src_addr"),
        (udp(OTHER6, HOST6, 1, 2), "drop.src_addr"),
    ],
)
def test_frames_nobody_takes_are_counted_by_reason(frame, reason):
    events: list[tuple[str, Any]] = []
    ctx = Ctx()
    filtered_dispatcher(ctx, all_handlers(events)).handle_frames([frame])
    assert events == []
    assert ctx.stats == {"tap.frames_in": 1, reason: 1}


def test_source_filter_from_host_network_info():
    net = SimpleNamespace(addr4=ipaddress.IPv4Address("192.0.2.2"),
                          addr6=ipaddress.IPv6Address("2001:db8::2"), prefix6=64)
    sources = SourceFilter.for_guest(net)
    frames = [udp(GUEST4, HOST4, 1, 2), udp(SLAAC6, HOST6, 1, 2), udp(OTHER6, HOST6, 1, 2)]
    assert [sources.allows(packet.parse_frame(f)) for f in frames] == [True, True, False]
    no_v6 = SourceFilter.for_guest(SimpleNamespace(addr4=None, addr6=None, prefix6=64))
    assert no_v6.allows(packet.parse_frame(frames[2]))


def test_without_a_configured_address_any_source_is_accepted():
    events: list[tuple[str, Any]] = []
    Dispatcher(Ctx(), all_handlers(events)).handle_frames([udp(OTHER4, HOST4, 1, 2)])
    assert [e[0] for e in events] == ["udp"]


def test_routes_left_out_of_the_table_count_as_drops():
    events: list[tuple[str, Any]] = []
    handlers = all_handlers(events)
    del handlers["dhcp"], handlers["tcp"]
    ctx = Ctx()
    Dispatcher(ctx, handlers).handle_frames([ROUTED["dhcp"], ROUTED["tcp"], ROUTED["udp"]])
    assert [e[0] for e in events] == ["udp"]
    assert ctx.stats["drop.no_dhcp"] == 1 and ctx.stats["drop.no_tcp"] == 1


def test_unknown_route_names_are_refused():
    with pytest.raises(ValueError, match="tcpp"):
        Dispatcher(Ctx(), {"tcpp": object()})


def test_classify_is_usable_on_its_own():
    assert classify(packet.parse_frame(ROUTED["dhcpv6"])) == "dhcpv6"
    assert classify(packet.parse_frame(udp(GUEST6, HOST6, 547, 9))) == "udp"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=120),
    st.tuples(st.sampled_from(sorted(ROUTED.values())), st.integers(0, 200), st.integers(0, 255))
    .map(lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]),
), max_size=8))  # fmt: skip
def test_no_input_escapes_the_dispatcher(frames):
    events: list[tuple[str, Any]] = []
    handlers: dict[str, Any] = all_handlers(events)
    handlers["tcp"] = BatchRecorder("tcp", events)
    ctx = Ctx()
    filtered_dispatcher(ctx, handlers).handle_frames(frames)
    drops = sum(n for name, n in ctx.stats.items() if name.startswith("drop."))
    delivered = sum(len(e[1]) if isinstance(e[1], list) else 1 for e in events)
    assert drops + delivered == len(frames) == ctx.stats["tap.frames_in"]


# ---------------------------------------------------------------- guest MAC


def test_guest_mac_is_learned_and_follows_changes():
    changes: list[bytes] = []

    class MacAware(Recorder):
        def guest_mac_changed(self, ctx: Ctx) -> None:
            changes.append(ctx.guest_mac)

    events: list[tuple[str, Any]] = []
    ctx = Ctx()
    assert ctx.guest_mac == BROADCAST_MAC
    dispatcher = Dispatcher(ctx, {"udp": MacAware("udp", events)})
    dispatcher.handle_frames([udp(GUEST4, HOST4, 1, 2)] * 3)
    assert ctx.guest_mac == GUEST_MAC and changes == [GUEST_MAC]
    dispatcher.handle_frames([udp(GUEST4, HOST4, 1, 2, mac=b"\x01\x00\x5e\x00\x00\x01")])
    assert ctx.guest_mac == GUEST_MAC
    dispatcher.handle_frames([udp(GUEST4, HOST4, 1, 2, mac=NEW_GUEST_MAC)])
    assert ctx.guest_mac == NEW_GUEST_MAC and changes == [GUEST_MAC, NEW_GUEST_MAC]


# ---------------------------------------------------------------- failures


def test_a_failing_handler_is_counted_logged_once_and_others_go_on(capsys):
    log.setup(SimpleNamespace(debug=True, trace=False, quiet=False, stderr=False,
                              log_file=None, log_size=log.LOG_SIZE_DEFAULT, foreground=True))
    try:
        events: list[tuple[str, Any]] = []
        handlers: dict[str, Any] = all_handlers(events)
        handlers["tcp"] = Failing(RuntimeError("bug in tcp"))
        ctx = Ctx()
        frames = [ROUTED["tcp"], ROUTED["udp"], ROUTED["tcp"], ROUTED["arp"]]
        Dispatcher(ctx, handlers).handle_frames(frames)
    finally:
        log.close()
    assert [e[0] for e in events] == ["udp", "arp"]
    assert ctx.stats["drop.handler_error"] == 2
    err = capsys.readouterr().err
    assert err.count("tcp handler failed") == 1 and "RuntimeError: bug in tcp" in err


def test_parse_errors_raised_by_handlers_count_as_their_reason():
    ctx = Ctx()
    handlers = {"tcp": Failing(ParseError("TCP segment too short", "tcp_short"))}
    Dispatcher(ctx, handlers).handle_frames([ROUTED["tcp"]])
    assert ctx.stats["drop.tcp_short"] == 1 and "drop.handler_error" not in ctx.stats


# ---------------------------------------------------------------- batches


def test_batch_handlers_get_runs_of_one_flow_in_order():
    events: list[tuple[str, Any]] = []
    handlers: dict[str, Any] = all_handlers(events)
    handlers["tcp"] = BatchRecorder("tcp", events)
    a1, a2, a3, a4 = (tcp(GUEST4, HOST4, 40000, 80, seq) for seq in (1, 2, 3, 4))
    b1 = tcp(GUEST4, HOST4, 40001, 80)
    c1 = tcp(SLAAC6, HOST6, 40000, 80)
    arp = ROUTED["arp"]
    Dispatcher(Ctx(), handlers).handle_frames([a1, a2, b1, a3, arp, a4, c1])
    assert events == [
        ("tcp", [a1, a2]), ("tcp", [b1]), ("tcp", [a3]), ("arp", arp), ("tcp", [a4]),
        ("tcp", [c1]),
    ]  # fmt: skip


def test_only_tcp_and_udp_are_delivered_in_batches():
    events: list[tuple[str, Any]] = []
    Dispatcher(Ctx(), {"arp": BatchRecorder("arp", events)}).handle_frames([ROUTED["arp"]])
    assert events == [("arp", ROUTED["arp"])]


def test_a_failing_batch_handler_does_not_stop_the_rest():
    class FailingBatch:
        def from_tap_batch(self, ctx: Ctx, pkts: list[Packet]) -> None:
            raise KeyError("oops")

    events: list[tuple[str, Any]] = []
    ctx = Ctx()
    handlers: dict[str, Any] = {"tcp": FailingBatch(), "udp": Recorder("udp", events)}
    Dispatcher(ctx, handlers).handle_frames([ROUTED["tcp"], ROUTED["udp"]])
    assert [e[0] for e in events] == ["udp"] and ctx.stats["drop.handler_error"] == 1


# ---------------------------------------------------------------- pcap and sending


class FakeBackend:
    """Accepts ``capacity`` frames, then refuses (like a full device)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sent: list[bytes] = []

    def send_frames(self, frames: Any) -> int:
        taken = list(frames[: self.capacity - len(self.sent)])
        self.sent += [bytes(f) for f in taken]
        return len(taken)


class FakePcap:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write_frames(self, frames: Any) -> None:
        self.frames += [bytes(f) for f in frames]


def test_frames_both_ways_are_recorded_and_counted():
    pcap = FakePcap()
    ctx = Ctx(pcap=pcap)  # type: ignore[arg-type]
    backend = FakeBackend(capacity=2)
    ctx.tap = RecordingTap(backend, ctx)  # type: ignore[arg-type]
    Dispatcher(ctx, {}).handle_frames([ROUTED["udp"], b"\x00"])
    out = [ROUTED["arp"], ROUTED["tcp"], ROUTED["icmp"]]
    assert ctx.tap.send_frames(out) == 2
    assert backend.sent == out[:2]
    assert pcap.frames == [ROUTED["udp"], b"\x00", ROUTED["arp"], ROUTED["tcp"]]
    assert ctx.stats["tap.frames_in"] == 2 and ctx.stats["tap.frames_out"] == 2
    assert ctx.stats["drop.tap_send"] == 1


# ---------------------------------------------------------------- TunTap over a socketpair


def test_dispatcher_reads_attached_backend_from_the_loop_and_notices_hangup(seqpacket):
    ours, peer = seqpacket
    events: list[tuple[str, Any]] = []
    hangups: list[bool] = []
    ctx = Ctx(loop=EventLoop())
    assert ctx.loop is not None
    try:
        dispatcher = Dispatcher(ctx, all_handlers(events))
        dispatcher.attach(TunTap(os.dup(ours.fileno())), on_hangup=lambda: hangups.append(True))
        peer.send(ROUTED["udp"])
        peer.send(ROUTED["arp"])
        ctx.loop.run_once(max_wait=2)
        assert [e[0] for e in events] == ["udp", "arp"]
        assert ctx.tap is not None and ctx.tap.send_frames([ROUTED["icmp"]]) == 1
        assert peer.recv(65536) == ROUTED["icmp"]
        peer.close()
        for _ in range(3):
            ctx.loop.run_once(max_wait=1)
            if hangups:
                break
    finally:
        ctx.loop.close()
    assert hangups == [True] and ctx.tap is None


# ---------------------------------------------------------------- a real tap device


# ---------------------------------------------------------------- the UDP fast lane


class LaneRecorder(BatchRecorder):
    """A UDP handler with the fast lane: records (wire key, payload) per datagram, by path."""

    def from_tap_datagrams(self, ctx: Ctx, wire_key: bytes, payloads: list[memoryview]) -> None:
        self.events.append(("lane", [(wire_key, bytes(p)) for p in payloads]))


def datagrams(events: list[tuple[str, Any]]) -> list[Any]:
    """What each path delivered, as (wire key, payload) for IPv4 UDP, frames otherwise."""
    out: list[Any] = []
    for name, what in events:
        if name == "lane":
            out += what
            continue
        for frame in what if isinstance(what, list) else [what]:
            pkt = packet.parse_frame(frame)
            if name != "udp" or pkt.ip_version != 4:
                out.append((name, frame))
                continue
            try:
                payload = bytes(packet.parse_udp(pkt.l4).payload)
            except ParseError as e:
                out.append(("drop." + e.reason, frame))
                continue
            out.append((bytes(pkt.src) + bytes(pkt.dst) + bytes(pkt.l4[:4]), payload))
    return out


def plain(sport: int, payload: bytes = b"data", src: bytes = GUEST4) -> bytes:
    return packet.build_frame_udp(HOST_MAC, GUEST_MAC, src, HOST4, sport, 9, payload)


def with_byte(frame: bytes, offset: int, value: int) -> bytes:
    return frame[:offset] + bytes([value]) + frame[offset + 1:]


def test_plain_ipv4_udp_takes_the_lane_in_runs_and_order_is_kept():
    events: list[tuple[str, Any]] = []
    handlers: dict[str, Any] = all_handlers(events)
    handlers["udp"] = LaneRecorder("udp", events)
    ctx = Ctx(guest_mac=GUEST_MAC)
    a1, a2, a3, b1 = plain(1, b"a1"), plain(1, b"a2"), plain(1, b"a3"), plain(2, b"b1")
    tos = with_byte(plain(1, b"tos"), 15, 0x10)  # not plain: the full path
    padded = plain(1, b"pad") + bytes(6)  # Ethernet padding: plain still
    arp = ROUTED["arp"]
    filtered_dispatcher(ctx, handlers).handle_frames([a1, a2, b1, arp, a3, tos, padded])
    key1 = GUEST4 + HOST4 + (1).to_bytes(2, "big") + (9).to_bytes(2, "big")
    key2 = GUEST4 + HOST4 + (2).to_bytes(2, "big") + (9).to_bytes(2, "big")
    assert events == [
        ("lane", [(key1, b"a1"), (key1, b"a2")]), ("lane", [(key2, b"b1")]), ("arp", arp),
        ("lane", [(key1, b"a3")]), ("udp", [tos]), ("lane", [(key1, b"pad")]),
    ]  # fmt: skip


@pytest.mark.parametrize("frame", [
    with_byte(plain(1), 14, 0x46),  # IP options
    with_byte(plain(1), 20, 0x20),  # more fragments
    plain(1)[:-1],  # shorter than its IP length
    with_byte(plain(1), 39, 13),  # UDP length beyond the datagram
    udp(ANY4, BCAST4, 68, 67),  # DHCP
    udp(OTHER4, HOST4, 1, 2),  # another source
    udp(GUEST4, HOST4, 1, 2, mac=NEW_GUEST_MAC),  # another MAC: learned
    udp(GUEST6, HOST6, 40000, 53),  # IPv6
])
def test_frames_off_the_lane_get_the_full_path(frame):
    lane: list[tuple[str, Any]] = []
    full: list[tuple[str, Any]] = []
    lane_handlers: dict[str, Any] = {**all_handlers(lane), "udp": LaneRecorder("udp", lane)}
    full_handlers: dict[str, Any] = {**all_handlers(full), "udp": BatchRecorder("udp", full)}
    lane_ctx, full_ctx = Ctx(guest_mac=GUEST_MAC), Ctx(guest_mac=GUEST_MAC)
    filtered_dispatcher(lane_ctx, lane_handlers).handle_frames([frame])
    filtered_dispatcher(full_ctx, full_handlers).handle_frames([frame])
    assert not any(name == "lane" for name, _ in lane)
    assert lane == full and lane_ctx.stats == full_ctx.stats
    assert lane_ctx.guest_mac == full_ctx.guest_mac


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from([plain(1), plain(2, b"x" * 30), ROUTED["tcp"], ROUTED["arp"],
                     udp(GUEST4, HOST4, 1, 2, mac=NEW_GUEST_MAC)]),
    st.tuples(st.sampled_from([plain(1, b"payload"), ROUTED["udp"], ROUTED["dhcp"]]),
              st.integers(0, 50), st.integers(0, 255))
    .map(lambda t: with_byte(t[0], t[1], t[2]) if t[1] < len(t[0]) else t[0][: t[2] % 60]),
), max_size=10))  # fmt: skip
def test_the_lane_changes_the_cost_of_a_frame_never_its_fate(frames):
    lane: list[tuple[str, Any]] = []
    full: list[tuple[str, Any]] = []
    lane_handlers: dict[str, Any] = {**all_handlers(lane), "udp": LaneRecorder("udp", lane),
                                     "tcp": BatchRecorder("tcp", lane)}
    full_handlers: dict[str, Any] = {**all_handlers(full), "udp": BatchRecorder("udp", full),
                                     "tcp": BatchRecorder("tcp", full)}
    lane_ctx, full_ctx = Ctx(guest_mac=GUEST_MAC), Ctx(guest_mac=GUEST_MAC)
    filtered_dispatcher(lane_ctx, lane_handlers).handle_frames(frames)
    filtered_dispatcher(full_ctx, full_handlers).handle_frames(frames)
    assert datagrams(lane) == datagrams(full)
    assert lane_ctx.stats == full_ctx.stats and lane_ctx.guest_mac == full_ctx.guest_mac


def test_a_failing_lane_counts_a_handler_error_and_the_rest_goes_on():
    class FailingLane(Recorder):
        def from_tap_datagrams(self, ctx: Ctx, wire_key: bytes, payloads: Any) -> None:
            raise KeyError("oops")

    events: list[tuple[str, Any]] = []
    ctx = Ctx(guest_mac=GUEST_MAC)
    handlers: dict[str, Any] = {**all_handlers(events), "udp": FailingLane("udp", events)}
    filtered_dispatcher(ctx, handlers).handle_frames([plain(1), ROUTED["arp"]])
    assert events == [("arp", ROUTED["arp"])] and ctx.stats["drop.handler_error"] == 1
