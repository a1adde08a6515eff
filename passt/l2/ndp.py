"""NDP: neighbour and router advertisements, so that the guest reaches everything through us.

Theory of operation
-------------------
On IPv6 the guest finds its neighbours and routers with ICMPv6 Neighbour
Discovery (RFC 4861), not ARP.  We are the only other node on its link and
stand in for every address, so:

* A Neighbour Solicitation for any target but the guest's own address is
  answered with a Neighbour Advertisement for that target, carrying our MAC
  (target link-layer address option) with the Router, Solicited and
  Override flags, as upstream does: the guest then sends everything, even
  to addresses "on its link", to us.  Solicitations from the unspecified
  address are duplicate address detection: the guest checks that nobody
  else uses the address it wants, and since every address it may pick is
  one we would otherwise claim, we stay silent (upstream too).
* A Router Solicitation is answered with a Router Advertisement (unless
  ``--no-ra``): the /64 prefix of the guest's address with the on-link and
  autonomous flags (SLAAC), the MTU (unless ``--mtu 0``), the resolvers
  (RDNSS, RFC 8106) and search list (DNSSL) when they are to be
  advertised (see ``hostnet``), and our MAC.  The Managed flag tells the
  guest to ask DHCPv6 too, which hands out the exact address (clear with
  ``--no-dhcpv6``).  Lifetimes follow upstream: router 9000 s, prefix
  3600 s, resolvers unlimited; cur hop limit 255, as upstream.
* Upstream (2023) sends nothing unsolicited, which lets a guest that never
  solicits again lose its SLAAC address when the prefix lifetime runs out;
  newer upstream fixed that with periodic unsolicited advertisements to the
  all-nodes group at random intervals between 200 and 600 s (RFC 4861's
  MinRtrAdvInterval and MaxRtrAdvInterval), and so do we.

Our messages come from our link-local address (``NetInfo.ll6``, the host's)
or, when the host's default gateway is itself link-local, from that
gateway's address, as upstream does, so that the guest's default route
looks like the host's.  They go to the soliciting address (all-nodes when
it is unspecified), with hop limit 255 as RFC 4861 demands of every NDP
message, and carry an ICMPv6 checksum over the pseudo-header
(``packet.build_frame_icmp``).

Messages from the guest are checked as RFC 4861 6.1 and 7.1 say (hop limit
255, code 0, options of non-zero length that fit); everything else (its
own advertisements, redirects) is counted as ``drop.ndp_<reason>``.  Every
answer is precomputed from ``NetInfo`` but the destination and target.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from typing import TYPE_CHECKING

from passt.checksum import Buffer
from passt.context import close_state
from passt.l2.common import answer, encode_domain_names, router_address
from passt.packet import Packet, ParseError, build_frame_icmp, parse_icmpv6

if TYPE_CHECKING:
    from passt.context import Ctx
    from passt.host.hostnet import NetInfo
    from passt.loop import Timer

ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
NEIGHBOUR_SOLICITATION = 135
NEIGHBOUR_ADVERTISEMENT = 136

OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
OPT_PREFIX_INFO = 3
OPT_MTU = 5
OPT_RDNSS = 25
OPT_DNSSL = 31

NDP_HOP_LIMIT = 255
RA_CUR_HOP_LIMIT = 255  # as upstream
RA_MANAGED = 0x80
ROUTER_LIFETIME = 9000
PREFIX_LIFETIME = 3600
PREFIX_LEN = 64
PREFIX_ON_LINK_AUTONOMOUS = 0xC0
INFINITE = 0xFFFFFFFF
NA_ROUTER_SOLICITED_OVERRIDE = 0xE000  # the high half of the flags word
RA_INTERVAL_MIN = 200
RA_INTERVAL_MAX = 600

ALL_NODES = ipaddress.IPv6Address("ff02::1").packed
ALL_NODES_MAC = bytes.fromhex("333300000001")
_UNSPECIFIED = bytes(16)


def check_options(buf: Buffer) -> None:
    """Walk NDP options; ``ParseError`` for a zero length or one that overruns (RFC 4861 4.6)."""
    view = memoryview(buf)
    end = len(view)
    i = 0
    while i < end:
        if i + 2 > end:
            raise ParseError("NDP option header truncated", "ndp_option")
        units = view[i + 1]
        if units == 0 or i + units * 8 > end:
            raise ParseError(f"NDP option {view[i]} of {units} units", "ndp_option")
        i += units * 8


def _option(kind: int, body: bytes) -> bytes:
    """An NDP option: type, length in 8-byte units, ``body`` zero-padded to fit."""
    units = (len(body) + 2 + 7) // 8
    return struct.pack("!BB", kind, units) + body + bytes(units * 8 - 2 - len(body))


def ra_options(net: NetInfo) -> bytes:
    """Prefix, MTU, RDNSS, DNSSL and source link-layer options of our advertisements."""
    assert net.addr6 is not None
    prefix = ipaddress.IPv6Network((net.addr6, PREFIX_LEN), strict=False)
    parts = [
        _option(OPT_PREFIX_INFO, struct.pack(
            "!BBII4x16s", PREFIX_LEN, PREFIX_ON_LINK_AUTONOMOUS, PREFIX_LIFETIME,
            PREFIX_LIFETIME, prefix.network_address.packed,
        )),
    ]  # fmt: skip
    if net.mtu:
        parts.append(_option(OPT_MTU, struct.pack("!xxI", net.mtu)))
    dns = [a.packed for a in net.dns if a.version == 6] if net.dhcp_dns else []
    if dns:
        parts.append(_option(OPT_RDNSS, struct.pack("!xxI", INFINITE) + b"".join(dns)))
    search = encode_domain_names(net.search) if net.dhcp_search else b""
    if search:
        parts.append(_option(OPT_DNSSL, struct.pack("!xxI", INFINITE) + search))
    parts.append(_option(OPT_SOURCE_LLADDR, net.mac))
    return b"".join(parts)


class NdpResponder:
    """Answers solicitations for one guest (see the module docstring); no I/O."""

    def __init__(self, net: NetInfo, *, send_ra: bool = True, managed: bool = True) -> None:
        if net.addr6 is None:
            raise ValueError("NDP needs an IPv6 address for the guest")
        self.mac = net.mac
        self.source = router_address(net)
        self.guest_address = net.addr6.packed
        self.send_ra = send_ra
        self.ra_flags = (RA_CUR_HOP_LIMIT << 8) | (RA_MANAGED if managed else 0)
        self.ra_body = bytes(8) + ra_options(net)  # reachable time, retrans timer: unspecified
        self.na_option = _option(OPT_TARGET_LLADDR, net.mac)

    def respond(self, pkt: Packet) -> bytes:
        """The frame answering the solicitation in ``pkt``; ``ParseError`` to stay silent."""
        msg = parse_icmpv6(pkt.l4)
        if pkt.ttl != NDP_HOP_LIMIT or msg.code != 0:
            raise ParseError(f"NDP with hop limit {pkt.ttl}, code {msg.code}", "ndp_invalid")
        if msg.type == NEIGHBOUR_SOLICITATION:
            return self._neighbour_advertisement(pkt, msg.body)
        if msg.type == ROUTER_SOLICITATION:
            check_options(msg.body)
            if not self.send_ra:
                raise ParseError("router solicitation with --no-ra", "ndp_no_ra")
            if pkt.src is None or pkt.src == _UNSPECIFIED:  # RFC 4861 6.2.6
                return self.unsolicited_ra()
            return self.router_advertisement(pkt.eth_src, pkt.src)
        raise ParseError(f"NDP type {msg.type} is not for us to answer", "ndp_type")

    def _neighbour_advertisement(self, pkt: Packet, body: memoryview) -> bytes:
        if len(body) < 16:
            raise ParseError("neighbour solicitation without a target", "ndp_short")
        target = bytes(body[:16])
        check_options(body[16:])
        if target[0] == 0xFF:
            raise ParseError("neighbour solicitation for a multicast target", "ndp_invalid")
        if pkt.src == _UNSPECIFIED:
            raise ParseError("duplicate address detection: nobody else is here", "ndp_dad")
        if target == self.guest_address:
            raise ParseError("neighbour solicitation for the guest's own address", "ndp_own")
        assert pkt.src is not None
        return build_frame_icmp(
            pkt.eth_src, self.mac, self.source, pkt.src, NEIGHBOUR_ADVERTISEMENT, 0,
            NA_ROUTER_SOLICITED_OVERRIDE, 0, target + self.na_option, ttl=NDP_HOP_LIMIT,
        )  # fmt: skip

    def router_advertisement(self, eth_dst: bytes, dst: bytes) -> bytes:
        """A router advertisement to ``dst`` at ``eth_dst``."""
        return build_frame_icmp(
            eth_dst, self.mac, self.source, dst, ROUTER_ADVERTISEMENT, 0,
            self.ra_flags, ROUTER_LIFETIME, self.ra_body, ttl=NDP_HOP_LIMIT,
        )  # fmt: skip

    def unsolicited_ra(self) -> bytes:
        """A router advertisement to all nodes."""
        return self.router_advertisement(ALL_NODES_MAC, ALL_NODES)


# ---------------------------------------------------------------- the handler


class NdpService:
    """``ctx.ndp``: the responder and the timer of unsolicited advertisements."""

    def __init__(self, ctx: Ctx) -> None:
        conf = ctx.conf
        self.responder = NdpResponder(
            ctx.net, send_ra=not conf.no_ra, managed=not conf.no_dhcpv6
        )
        self.timer: Timer | None = None
        if self.responder.send_ra and ctx.loop is not None:
            self._schedule(ctx)

    def _schedule(self, ctx: Ctx) -> None:
        assert ctx.loop is not None
        delay = random.uniform(RA_INTERVAL_MIN, RA_INTERVAL_MAX)
        self.timer = ctx.loop.call_later(delay, lambda: self._advertise(ctx))

    def _advertise(self, ctx: Ctx) -> None:
        if ctx.tap is not None:
            ctx.tap.send_frames((self.responder.unsolicited_ra(),))
            ctx.stats["ndp.ra_unsolicited"] += 1
        self._schedule(ctx)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def init(ctx: Ctx) -> NdpService | None:
    """Build ``ctx.ndp`` from ``ctx.net`` and ``ctx.conf`` (``None`` without IPv6).

    Arms the timer of periodic router advertisements.
    """
    service = NdpService(ctx) if ctx.net.addr6 is not None else None
    ctx.ndp = service
    return service


def close(ctx: Ctx) -> None:
    """Stop the periodic advertisements."""
    close_state(ctx, "ndp")


def respond(ctx: Ctx, pkt: Packet) -> tuple[bytes, str]:
    """The answer to a solicitation and its counter (see ``l2common``)."""
    service = ctx.ndp or init(ctx)
    if service is None:
        raise ParseError("NDP without IPv6", "ndp_no_ipv6")
    frame = service.responder.respond(pkt)
    return frame, "ndp.na" if pkt.l4[0] == NEIGHBOUR_SOLICITATION else "ndp.ra"


def from_tap(ctx: Ctx, pkt: Packet) -> None:
    """Answer a neighbour or router solicitation; count whatever is dropped."""
    answer(ctx, pkt, respond)
