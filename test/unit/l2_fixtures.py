"""Shared pieces of the L2/L3 service tests: a guest's network, a context, a fake tap.

Theory of operation: the handlers under test (arp, ndp, dhcp, dhcpv6, icmp)
take a parsed frame and a ``Ctx`` and answer through ``ctx.tap``.  These
helpers build a context around a ``NetInfo`` shaped like the end-to-end
world's (RFC 5737/3849 documentation addresses), with a tap that just
collects what is sent, so that a test feeds a frame built with scapy and
reads the answers back with scapy, field by field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from passt.checksum import Buffer, csum_fold, csum_partial
from passt.context import Ctx
from passt.host.hostnet import NetInfo
from passt.packet import parse_frame
from passt.record import replace

OUR_MAC = bytes.fromhex("d2507aa1322c")
GUEST_MAC = bytes.fromhex("4a0c5ab381ac")
OUR_MAC_STR = "d2:50:7a:a1:32:2c"
GUEST_MAC_STR = "4a:0c:5a:b3:81:ac"

GUEST4 = "198.51.100.1"
GW4 = "198.51.100.2"
DNS4 = "198.51.100.53"
GUEST6 = "2001:db8:1::1"
GW6 = "2001:db8:1::2"
DNS6 = "2001:db8:1::53"
OUR_LL6 = "fe80::d050:7aff:fea1:322c"
GUEST_LL6 = "fe80::480c:5aff:feb3:81ac"
SEARCH = ("example.com", "lab.example.org")

NET = NetInfo(
    mac=OUR_MAC,
    mtu=65520,
    ifname4="ext0",
    addr4=ipaddress.IPv4Address(GUEST4),
    prefix4=24,
    gw4=ipaddress.IPv4Address(GW4),
    ifname6="ext0",
    addr6=ipaddress.IPv6Address(GUEST6),
    prefix6=64,
    gw6=ipaddress.IPv6Address(GW6),
    ll6=ipaddress.IPv6Address(OUR_LL6),
    dns=(ipaddress.IPv4Address(DNS4), ipaddress.IPv6Address(DNS6)),
    search=SEARCH,
)


def conf(**overrides: Any) -> SimpleNamespace:
    """The ``Conf`` fields the L2 services read, with their defaults."""
    fields = {"no_ra": False, "no_dhcpv6": False, "no_map_gw": False}
    fields.update(overrides)
    return SimpleNamespace(**fields)


class CollectingTap:
    """A ``TapBackend`` that keeps every frame sent."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def fileno(self) -> int:
        return -1

    def recv_frames(self) -> list[memoryview]:
        return []

    def send_frames(self, frames: Sequence[Buffer]) -> int:
        self.frames.extend(bytes(f) for f in frames)
        return len(frames)

    def close(self) -> None:
        pass


def make_ctx(net: NetInfo = NET, loop: Any = None, **conf_overrides: Any) -> Ctx:
    ctx = Ctx(conf=conf(**conf_overrides), net=net, loop=loop)
    ctx.tap = CollectingTap()
    ctx.guest_mac = GUEST_MAC
    return ctx


def net_with(**changes: Any) -> NetInfo:
    return replace(NET, **changes)


def feed(ctx: Ctx, handler: Any, frame: bytes) -> list[bytes]:
    """Hand ``frame`` to ``handler.from_tap``; the frames it sent in answer."""
    tap = ctx.tap
    assert isinstance(tap, CollectingTap)
    before = len(tap.frames)
    handler.from_tap(ctx, parse_frame(frame))
    return tap.frames[before:]


def drops(ctx: Ctx) -> dict[str, int]:
    return {k: v for k, v in ctx.stats.items() if k.startswith("drop.") and v}


def completed_as_a_device_would(frame: Buffer, l4_offset: int, csum_offset: int) -> bytes:
    """``frame`` with its partial checksum completed as a device told ``NEEDS_CSUM``
    completes it: the sum from the L4 header on, its complement stored."""
    done = bytearray(frame)
    at = l4_offset + csum_offset
    done[at : at + 2] = csum_fold(csum_partial(done[l4_offset:])).to_bytes(2, "big")
    return bytes(done)
