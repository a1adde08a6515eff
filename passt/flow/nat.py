"""Address mapping between the guest's view and the host's (upstream 2026's model).

Theory of operation
-------------------
The guest (or namespace) has the host's own address and the host's gateway,
so some addresses mean different things on the two sides.  Three options
decide what they mean, as upstream 2026 (``passt(1)``, "Handling of local
addresses"):

* ``--map-host-loopback ADDR`` (per family; default: the gateway address,
  for IPv6 also our link-local router address; ``none`` or ``--no-map-gw``:
  no default): the guest's connections to ``ADDR`` go to the host's
  loopback, and connections from the host's loopback appear to the guest to
  come from ``ADDR``;
* ``--map-guest-addr ADDR`` (per family; default none): the guest's
  connections to ``ADDR`` go to the guest's own address *on the host* (the
  host's address: podman's ``host.containers.internal``), and connections
  from that address appear to come from ``ADDR``;
* anything else keeps its address, except that a host-side peer the guest
  could not answer (loopback or the guest's own address, when no mapping
  above names it) appears to come from the host-loopback address, or
  without one from our tap-side address: the gateway for IPv4, our
  link-local address for IPv6.  (Upstream gives the guest's own address
  the tap-side address even when the host loopback is mapped: the same for
  IPv4, its link-local address rather than the gateway for IPv6.)  So a port published to the
  guest is reachable through every address of the host, with or without
  ``--no-map-gw``, as upstream serves it.

``AddressMapping.build(net, conf)`` is computed once from ``hostnet.NetInfo``
and the options; ``outbound(dst)`` and ``inbound(peer)`` work on packed
addresses (4 or 16 bytes) and do no I/O.  TCP, UDP and ICMP use it; DNS
forwarding (``--dns-forward``) stays with UDP, which checks it first.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from passt.record import record

__all__ = ["AddressMapping", "LOOPBACK4", "LOOPBACK6", "outbound_addresses", "packed"]

LOOPBACK4 = bytes([127, 0, 0, 1])
LOOPBACK6 = bytes(15) + b"\x01"
_LOOPBACK = {4: LOOPBACK4, 16: LOOPBACK6}
_V4_MAPPED = bytes(10) + b"\xff\xff"


def packed(addr: Any) -> bytes | None:
    """``addr`` (text, an address object or ``None``) as packed bytes, or ``None``."""
    return None if addr is None else ipaddress.ip_address(addr).packed


def outbound_addresses(given: Any) -> dict[int, str]:
    """``--outbound`` addresses (one address, or zero to two, one per family)
    as text, by packed length (4 or 16)."""
    if isinstance(given, str | ipaddress.IPv4Address | ipaddress.IPv6Address):
        given = (given,)
    result = {}
    for addr in given or ():
        parsed = ipaddress.ip_address(addr)
        result[len(parsed.packed)] = str(parsed)
    return result


def _of_length(addresses: tuple[Any, ...], length: int) -> bytes | None:
    return next((a.packed for a in addresses if len(a.packed) == length), None)


def is_loopback(addr: bytes) -> bool:
    """127.0.0.0/8 or ::1 (packed)."""
    return addr[0] == 127 if len(addr) == 4 else addr == LOOPBACK6


@record(frozen=True, slots=True)
class AddressMapping:
    """Per address length (4, 16): what stands for the host's loopback, what for
    the host's own address, and the fallback source; see the module notes."""

    host_loopback: dict[int, frozenset[bytes]]   # guest-side addresses → loopback
    loopback_source: dict[int, bytes | None]     # loopback peers appear as this
    guest_addr: dict[int, bytes | None]          # --map-guest-addr
    own: dict[int, bytes | None]                 # the guest's address (the host's)
    tap_source: dict[int, bytes | None]          # what unanswerable peers appear as

    @classmethod
    def build(cls, net: Any, conf: Any) -> AddressMapping:
        """From ``NetInfo`` ``net`` and the options (read leniently: tests give few)."""
        explicit = tuple(getattr(conf, "map_host_loopback", ()) or ())
        default = not getattr(conf, "no_map_gw", False)
        gw4, gw6, ll6 = packed(net.gw4), packed(net.gw6), packed(net.ll6)
        source: dict[int, bytes | None] = {}
        mapped: dict[int, frozenset[bytes]] = {}
        for length, defaults in ((4, (gw4,)), (16, (gw6, ll6))):
            given = _of_length(explicit, length)
            chosen = (given,) if given else defaults if default else ()
            mapped[length] = frozenset(a for a in chosen if a)
            source[length] = next((a for a in chosen if a), None)
        guest = tuple(getattr(conf, "map_guest_addr", ()) or ())
        return cls(
            host_loopback=mapped,
            loopback_source=source,
            guest_addr={4: _of_length(guest, 4), 16: _of_length(guest, 16)},
            own={4: packed(net.addr4), 16: packed(net.addr6)},
            tap_source={4: gw4, 16: ll6 or gw6},
        )

    def outbound(self, dst: bytes) -> bytes:
        """Where the guest's traffic to ``dst`` goes on the host."""
        length = len(dst)
        if dst in self.host_loopback[length]:
            return _LOOPBACK[length]
        if dst == self.guest_addr[length] and self.own[length]:
            return self.own[length]  # type: ignore[return-value]
        return dst

    def inbound(self, peer: bytes, seen: bytes | None = None) -> bytes | None:
        """The source the guest sees for traffic from host-side ``peer``;
        ``None``: nothing the guest could answer (no tap-side address).
        ``seen``: the address the guest uses, if known (SLAAC): its own too."""
        if len(peer) == 16 and peer[:12] == _V4_MAPPED:
            peer = peer[12:]      # an IPv4-mapped peer on a dual-stack socket
        length = len(peer)
        host = self.loopback_source[length] or self.tap_source[length]
        if is_loopback(peer):
            return host
        if peer in (self.own[length], seen):
            return self.guest_addr[length] or host
        return peer if any(peer) else self.tap_source[length]
