"""NDP: neighbour and router advertisements, periodic RAs, options, drops, garbage."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether

from passt.l2 import ndp
from passt.packet import parse_frame, verify_l4

from ..l2_fixtures import (
    DNS6,
    GUEST6,
    GUEST_LL6,
    GUEST_MAC_STR,
    GW6,
    OUR_LL6,
    OUR_MAC_STR,
    SEARCH,
    drops,
    feed,
    make_ctx,
    net_with,
)


def guest_frame(message, src: str = GUEST_LL6, dst: str = "ff02::2", hlim: int = 255) -> bytes:
    return bytes(Ether(src=GUEST_MAC_STR, dst="33:33:00:00:00:02")
                 / IPv6(src=src, dst=dst, hlim=hlim) / message)


def ns(target: str, **kw) -> bytes:
    return guest_frame(ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC_STR), **kw)


def rs(**kw) -> bytes:
    return guest_frame(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC_STR), **kw)


def one_answer(ctx, frame: bytes) -> Ether:
    [answer] = feed(ctx, ndp, frame)
    assert verify_l4(parse_frame(answer))
    return Ether(answer)


def test_solicitation_for_the_gateway_gets_our_mac() -> None:
    ctx = make_ctx()
    reply = one_answer(ctx, ns(GW6))
    assert (reply.src, reply.dst) == (OUR_MAC_STR, GUEST_MAC_STR)
    assert (reply[IPv6].src, reply[IPv6].dst, reply[IPv6].hlim) == (OUR_LL6, GUEST_LL6, 255)
    na = reply[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (1, 1, 1, GW6)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == OUR_MAC_STR
    assert ctx.stats["ndp.na"] == 1 and not drops(ctx)


def test_any_address_but_the_guests_is_us() -> None:
    ctx = make_ctx()
    for target in ("2001:db8:1::99", "fe80::1", OUR_LL6, "2001:db8:2::1"):
        assert one_answer(ctx, ns(target, src=GUEST6))[ICMPv6ND_NA].tgt == target


def test_guests_own_address_and_duplicate_detection_stay_unanswered() -> None:
    ctx = make_ctx()
    assert feed(ctx, ndp, ns(GUEST6)) == []
    dad = guest_frame(ICMPv6ND_NS(tgt="2001:db8:1::abcd"), src="::", dst="ff02::1:ff00:abcd")
    assert feed(ctx, ndp, dad) == []
    assert drops(ctx) == {"drop.ndp_own": 1, "drop.ndp_dad": 1}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (ns(GW6, hlim=64), "ndp_invalid"),
        (guest_frame(ICMPv6ND_NS(tgt=GW6, code=1)), "ndp_invalid"),
        (guest_frame(ICMPv6ND_NS(tgt="ff02::1")), "ndp_invalid"),
        (guest_frame(bytes(ICMPv6ND_NS(tgt=GW6))[:12]), "ndp_short"),
        (guest_frame(ICMPv6ND_NS(tgt=GW6) / (b"\x01\x00" + bytes(6))), "ndp_option"),
        (guest_frame(ICMPv6ND_RS() / (b"\x01\x02" + bytes(6))), "ndp_option"),
        (guest_frame(ICMPv6ND_NA(tgt=GW6)), "ndp_type"),
        (guest_frame(ICMPv6ND_RA()), "ndp_type"),
    ],
)
def test_invalid_messages_are_dropped_and_counted(frame: bytes, reason: str) -> None:
    ctx = make_ctx()
    assert feed(ctx, ndp, frame) == []
    assert drops(ctx) == {f"drop.{reason}": 1}


def test_router_solicitation_gets_a_full_advertisement() -> None:
    ctx = make_ctx()
    reply = one_answer(ctx, rs())
    assert (reply.src, reply.dst) == (OUR_MAC_STR, GUEST_MAC_STR)
    assert (reply[IPv6].src, reply[IPv6].dst, reply[IPv6].hlim) == (OUR_LL6, GUEST_LL6, 255)
    ra = reply[ICMPv6ND_RA]
    assert (ra.chlim, ra.M, ra.O, ra.routerlifetime) == (255, 1, 0, 9000)
    prefix = ra[ICMPv6NDOptPrefixInfo]
    assert (prefix.prefix, prefix.prefixlen, prefix.L, prefix.A) == ("2001:db8:1::", 64, 1, 1)
    assert (prefix.validlifetime, prefix.preferredlifetime) == (3600, 3600)
    assert ra[ICMPv6NDOptMTU].mtu == 65520
    assert ra[ICMPv6NDOptRDNSS].dns == [DNS6]
    assert [d.rstrip(".") for d in ra[ICMPv6NDOptDNSSL].searchlist] == list(SEARCH)
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == OUR_MAC_STR
    assert ctx.stats["ndp.ra"] == 1


def test_solicitation_from_the_unspecified_address_gets_a_multicast_answer() -> None:
    reply = one_answer(make_ctx(), guest_frame(ICMPv6ND_RS(), src="::"))
    assert (reply.dst, reply[IPv6].dst) == ("33:33:00:00:00:01", "ff02::1")


def test_no_ra_silences_routers_but_not_neighbours() -> None:
    ctx = make_ctx(no_ra=True)
    assert feed(ctx, ndp, rs()) == []
    assert drops(ctx) == {"drop.ndp_no_ra": 1}
    assert len(feed(ctx, ndp, ns(GW6))) == 1


def test_withheld_options_are_left_out() -> None:
    ctx = make_ctx(net_with(mtu=0, dhcp_dns=False, dhcp_search=False), no_dhcpv6=True)
    ra = one_answer(ctx, rs())[ICMPv6ND_RA]
    assert ra.M == 0
    assert not ra.haslayer(ICMPv6NDOptMTU) and not ra.haslayer(ICMPv6NDOptRDNSS)
    assert not ra.haslayer(ICMPv6NDOptDNSSL)
    assert ra.haslayer(ICMPv6NDOptPrefixInfo) and ra.haslayer(ICMPv6NDOptSrcLLAddr)


def test_prefix_is_the_slash_64_of_the_guests_address() -> None:
    ctx = make_ctx(net_with(addr6=ipaddress.IPv6Address("2001:db8:5:6:7::8"), prefix6=48))
    assert one_answer(ctx, rs())[ICMPv6NDOptPrefixInfo].prefix == "2001:db8:5:6::"


def test_link_local_gateway_speaks_for_us() -> None:
    ctx = make_ctx(net_with(gw6=ipaddress.IPv6Address("fe80::1")))
    assert one_answer(ctx, rs())[IPv6].src == "fe80::1"
    assert one_answer(ctx, ns("fe80::1"))[IPv6].src == "fe80::1"


def test_no_ipv6_no_ndp() -> None:
    ctx = make_ctx(net_with(addr6=None, gw6=None, ll6=None))
    assert feed(ctx, ndp, rs()) == []
    assert drops(ctx) == {"drop.ndp_no_ipv6": 1}


class RecordingLoop:
    """Just enough of ``EventLoop`` to see timers armed."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, object]] = []

    def call_later(self, delay, callback):
        self.timers.append((delay, callback))
        return self

    def cancel(self) -> None:
        self.timers.clear()


def test_unsolicited_advertisements_every_200_to_600_seconds() -> None:
    loop = RecordingLoop()
    ctx = make_ctx(loop=loop)
    ndp.init(ctx)
    for _ in range(3):
        delay, callback = loop.timers[-1]
        assert ndp.RA_INTERVAL_MIN <= delay <= ndp.RA_INTERVAL_MAX
        callback()
    assert len(loop.timers) == 4 and ctx.stats["ndp.ra_unsolicited"] == 3
    for frame in ctx.tap.frames:
        ra = Ether(frame)
        assert (ra.dst, ra[IPv6].dst, ra[IPv6].src) == ("33:33:00:00:00:01", "ff02::1", OUR_LL6)
        assert ra[ICMPv6NDOptPrefixInfo].prefix == "2001:db8:1::"
        assert verify_l4(parse_frame(frame))
    ndp.close(ctx)
    assert loop.timers == []


def test_no_periodic_advertisements_with_no_ra() -> None:
    loop = RecordingLoop()
    ndp.init(make_ctx(loop=loop, no_ra=True))
    assert loop.timers == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_option_walk_raises_only_parse_errors(data: bytes) -> None:
    try:
        ndp.check_options(data)
    except ndp.ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([133, 134, 135, 136, 137]), st.integers(0, 3), st.binary(max_size=80))
def test_garbage_never_raises(kind: int, code: int, body: bytes) -> None:
    ctx = make_ctx()
    icmp = bytes((kind, code, 0, 0)) + body
    frame = bytes(Ether(src=GUEST_MAC_STR) / IPv6(src=GUEST_LL6, dst="ff02::2", hlim=255, nh=58)
                  / icmp)
    sent = feed(ctx, ndp, frame)
    assert len(sent) + sum(drops(ctx).values()) == 1


def test_init_without_ipv6_sets_nothing_up() -> None:
    loop = RecordingLoop()
    ctx = make_ctx(net_with(addr6=None, gw6=None, ll6=None), loop=loop)
    assert ndp.init(ctx) is None and loop.timers == []
    ndp.close(ctx)
