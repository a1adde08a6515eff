"""ARP: every IPv4 address on the guest's link is us, except the guest's own.

Theory of operation
-------------------
The guest believes it shares a link with its gateway and, through its
prefix, with many other hosts.  None of them are on a link we provide: we
are the only other station.  So, like upstream, we answer every ARP request
with our own MAC, whatever address it asks for, except one: the guest's own
address, which the guest asks about to detect duplicates (an ARP probe,
RFC 5227) and must find free.  Every IPv4 frame the guest sends then comes
to us, addressed to our MAC, and we route it by its IP header.

What we don't answer is counted: replies and other operations
(``drop.arp_op``), announcements, where sender and target address are the
same non-zero address (``drop.arp_announce``: a gratuitous ARP tells, it
does not ask), requests for the guest's address (``drop.arp_own``), and
ARP without IPv4 (``drop.arp_no_ipv4``).  Malformed messages are counted by
their parse reason.  We never send ARP unsolicited: upstream (2023) does not
either, and the guest needs nothing from us before it asks.

The reply goes to the MAC the request came from, with the roles swapped:
our MAC as the sender's hardware address for the address asked about.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from passt.l2.common import answer
from passt.packet import ARP_REPLY, ARP_REQUEST, Packet, ParseError, build_frame_arp, parse_arp

if TYPE_CHECKING:
    from passt.context import Ctx

_ANY4 = bytes(4)


def reply_to(our_mac: bytes, guest_address: bytes, pkt: Packet) -> bytes:
    """The ARP reply to the request in ``pkt``; ``ParseError`` to stay silent."""
    msg = parse_arp(pkt.l4)
    if msg.op != ARP_REQUEST:
        raise ParseError(f"ARP operation {msg.op}", "arp_op")
    if msg.sender_ip == msg.target_ip and msg.sender_ip != _ANY4:
        raise ParseError("gratuitous ARP announcement", "arp_announce")
    if msg.target_ip == guest_address:
        raise ParseError("ARP request for the guest's own address", "arp_own")
    return build_frame_arp(
        pkt.eth_src, our_mac, ARP_REPLY, our_mac, msg.target_ip, msg.sender_mac, msg.sender_ip
    )


def respond(ctx: Ctx, pkt: Packet) -> tuple[bytes, str]:
    """The reply to an ARP request and its counter (see ``l2common``)."""
    net = ctx.net
    if net is None or net.addr4 is None:
        raise ParseError("ARP without IPv4", "arp_no_ipv4")
    return reply_to(net.mac, net.addr4.packed, pkt), "arp.replies"


def from_tap(ctx: Ctx, pkt: Packet) -> None:
    """Answer an ARP request for any address but the guest's; count whatever is dropped."""
    answer(ctx, pkt, respond)
