"""ARP: answers for every address but the guest's own, drops counted, garbage harmless."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Ether

from passt.l2 import arp

from ..l2_fixtures import (
    GUEST4,
    GUEST_MAC_STR,
    GW4,
    OUR_MAC_STR,
    drops,
    feed,
    make_ctx,
    net_with,
)


def request(target: str, sender: str = GUEST4, op: int = 1) -> bytes:
    return bytes(
        Ether(src=GUEST_MAC_STR, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=op, hwsrc=GUEST_MAC_STR, psrc=sender, hwdst="00:00:00:00:00:00", pdst=target)
    )


def test_request_for_the_gateway_is_answered_with_our_mac() -> None:
    ctx = make_ctx()
    [frame] = feed(ctx, arp, request(GW4))
    reply = Ether(frame)
    assert reply.dst == GUEST_MAC_STR and reply.src == OUR_MAC_STR
    a = reply[ARP]
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, OUR_MAC_STR, GW4, GUEST_MAC_STR, GUEST4)
    assert ctx.stats["arp.replies"] == 1 and not drops(ctx)


def test_any_other_address_is_us_too() -> None:
    ctx = make_ctx()
    for target in ("198.51.100.7", "203.0.113.1", "10.0.0.1"):
        [frame] = feed(ctx, arp, request(target))
        assert Ether(frame)[ARP].psrc == target
        assert Ether(frame)[ARP].hwsrc == OUR_MAC_STR


def test_probe_for_the_guests_own_address_finds_it_free() -> None:
    ctx = make_ctx()
    assert feed(ctx, arp, request(GUEST4, sender="0.0.0.0")) == []
    assert drops(ctx) == {"drop.arp_own": 1}


def test_probe_for_another_address_is_answered() -> None:
    ctx = make_ctx()
    [frame] = feed(ctx, arp, request(GW4, sender="0.0.0.0"))
    assert Ether(frame)[ARP].pdst == "0.0.0.0"


def test_gratuitous_announcements_are_dropped() -> None:
    ctx = make_ctx()
    assert feed(ctx, arp, request(GUEST4, sender=GUEST4)) == []
    assert feed(ctx, arp, request(GW4, sender=GW4, op=2)) == []
    assert drops(ctx) == {"drop.arp_announce": 1, "drop.arp_op": 1}


def test_replies_from_the_guest_are_dropped() -> None:
    ctx = make_ctx()
    assert feed(ctx, arp, request(GW4, op=2)) == []
    assert drops(ctx) == {"drop.arp_op": 1}


def test_no_ipv4_no_arp() -> None:
    ctx = make_ctx(net_with(addr4=None, gw4=None))
    assert feed(ctx, arp, request(GW4)) == []
    assert drops(ctx) == {"drop.arp_no_ipv4": 1}


def test_malformed_arp_is_counted() -> None:
    ctx = make_ctx()
    frame = request(GW4)
    assert feed(ctx, arp, frame[:30]) == []
    not_ipv4 = bytes(Ether(frame) / b"")[:16] + b"\x08\x06" + frame[18:]  # ptype 0x0806
    assert feed(ctx, arp, not_ipv4) == []
    assert drops(ctx) == {"drop.arp_short": 1, "drop.arp_type": 1}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_raises(payload: bytes) -> None:
    ctx = make_ctx()
    frame = bytes.fromhex("ffffffffffff4a0c5ab381ac0806") + payload
    sent = feed(ctx, arp, frame)
    assert len(sent) + sum(drops(ctx).values()) == 1
