"""What the services we answer ourselves share: one answer per request, names, our address.

Theory of operation
-------------------
ARP, NDP, DHCP and DHCPv6 are request and answer: a frame from the guest
gets at most one frame back, built from ``NetInfo`` and the request alone.
Each service module therefore only says how to answer: a *responder*
``respond(ctx, pkt) -> (frame, counter)`` that raises ``ParseError`` with a
short reason for anything it will not answer (malformed, not for us, turned
off).  ``answer`` is the one place that turns that into what the tap
dispatcher's contract asks of a handler: the frame sent and ``counter``
counted, or ``drop.<reason>`` counted, and never an exception, so that
handlers can be called directly (tests) as well as from the dispatcher.

Two more things the services share:

* ``encode_domain_names``: the search list in DNS wire format (RFC 1035
  3.1), which DHCP option 119 (RFC 3397), DHCPv6 option 24 (RFC 3646) and
  NDP's DNSSL option (RFC 8106) all carry.  Uncompressed: RFC 3397 makes
  compression optional, the other two forbid it.  A name that cannot be
  encoded (an empty or over-long label, over 255 bytes) is skipped rather
  than sent half right.
* ``router_address``: the source of our NDP and DHCPv6 answers, our
  link-local address (``NetInfo.ll6``, the host's), or the host's gateway
  when that is itself link-local, as upstream does, so that the guest's
  default route looks like the host's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from passt.packet import Packet, ParseError

if TYPE_CHECKING:
    from passt.context import Ctx
    from passt.host.hostnet import NetInfo

Responder = Callable[["Ctx", Packet], tuple[bytes, str]]


def answer(ctx: Ctx, pkt: Packet, respond: Responder) -> None:
    """Send what ``respond`` answers to ``pkt`` and count it, or count why not."""
    try:
        frame, counter = respond(ctx, pkt)
    except ParseError as e:
        ctx.stats["drop." + e.reason] += 1
        return
    ctx.stats[counter] += 1
    if ctx.tap is not None:
        ctx.tap.send_frames((frame,))


State = TypeVar("State")


def made_on_first_use(state: State | None, make: Callable[[], State | None],
                      missing: tuple[str, str]) -> State:
    """A service's state (``ctx.dhcp``...), made on first use; when there is
    none to make (no address of that family), ``ParseError(*missing)``."""
    if state is None:
        state = make()
    if state is None:
        raise ParseError(*missing)
    return state


def encode_domain_names(names: Iterable[str]) -> bytes:
    """``names`` in DNS wire format, uncompressed; names that can't be encoded are skipped."""
    out = []
    for name in names:
        encoded = _domain_name(name)
        if encoded is not None:
            out.append(encoded)
    return b"".join(out)


def _domain_name(name: str) -> bytes | None:
    wire = []
    for label in name.rstrip(".").split("."):
        raw = label.encode("utf-8", "replace")
        if not 0 < len(raw) < 64:
            return None
        wire.append(bytes((len(raw),)) + raw)
    wire.append(b"\0")
    encoded = b"".join(wire)
    return encoded if len(encoded) <= 255 else None


def router_address(net: NetInfo) -> bytes:
    """Where our NDP and DHCPv6 answers come from: a link-local gateway, else ``ll6``."""
    if net.gw6 is not None and net.gw6.is_link_local:
        return net.gw6.packed
    assert net.ll6 is not None, "an IPv6-enabled NetInfo has a link-local address"
    return net.ll6.packed
