"""The tap side's dispatcher: frames from the attached back end to the handlers.

Theory of operation
-------------------
Frames from the guest go through ``Dispatcher.handle_frames``:

1. The whole batch is recorded to the pcap file, if any, and counted.
2. Each frame is parsed (``packet.parse_frame``); a ``ParseError`` is counted
   as ``drop.<reason>``.
3. The guest's MAC address is learned from the source address of its frames,
   and updated when it changes (a guest may change its MAC; upstream follows
   it).  Handlers that cache headers built with it can define
   ``guest_mac_changed(ctx)``: it is called on every change.
4. If the guest's address is known, IP frames from any other source are
   dropped (``drop.src_addr``), except unspecified sources where nothing
   else can be (a DHCP request, an ICMPv6 duplicate address detection: never
   a frame that would open a flow), IPv6 link-local ones and, for IPv6,
   addresses in the guest's prefix (SLAAC gives the guest addresses of its
   own choosing).
5. ``classify`` picks the route: ARP → ``arp``; ICMPv6 133-137 → ``ndp``;
   UDP to port 67 → ``dhcp``, to 547 → ``dhcpv6``; ICMP and ICMPv6 echo
   requests → ``icmp``; TCP → ``tcp``; other UDP → ``udp``; anything else is
   a drop reason.  The route names the handler in the table given to the
   ``Dispatcher``; a route without a handler (``--no-tcp``, ``--no-dhcp``...)
   counts as ``drop.no_<route>``.

Handlers
--------
A handler is any object with ``from_tap(ctx, pkt)``.  The ``tcp`` and ``udp``
handlers may instead offer ``from_tap_batch(ctx, pkts)``: the dispatcher then
hands them lists of *consecutive* frames of one flow (same addresses and
ports), so that a run of data segments costs one call and one
acknowledgement decision.  Order is kept: a batch is delivered before any
later frame of the same wake-up goes anywhere else.  ``Packet`` objects and
their views are valid during the call only.

Nothing a guest sends may stop the program.  A ``ParseError`` escaping a
handler (from ``parse_tcp`` and friends) counts as ``drop.<reason>``; any
other exception is a bug, but other flows must go on: it counts as
``drop.handler_error`` and is logged at debug level, with its traceback,
once per kind.  A batch handler loses the rest of its batch when it raises,
so it should catch per-frame ``ParseError`` itself.

The UDP fast lane
-----------------
Most of a bulk UDP transfer's frames are plain: IPv4 without options or
fragmentation, from the guest's MAC and address, to a port other than
DHCP's, the UDP length matching the IP one.  For those, building a
``Packet``, classifying it and parsing its UDP header costs more than the
rest of the datagram's way together, so the dispatcher recognises them by
a few bytes at fixed offsets (``_PLAIN_UDP4``, one ``unpack_from``:
everything the full path would check, checked for the common values only;
the source address and the port only when a new run starts) and hands the ``udp``
handler's ``from_tap_datagrams(ctx, wire_key, payloads)`` runs of
payloads of one flow, keyed by the 12 bytes of addresses and ports as
they are on the wire.  A frame that misses any check takes the full path,
which decides about it exactly as before: the fast lane changes the cost
of a frame, never its fate.  Order is kept as for batches.

Frames to the guest go through ``ctx.tap.send_frames(frames)``.  While a
backend is attached, ``ctx.tap`` is a ``RecordingTap`` wrapping it: the one
place where outgoing frames are recorded to pcap and counted (including
drops); while none is, ``ctx.tap`` is ``None``.
"""


from __future__ import annotations

import ipaddress
import struct
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from passt import log
from passt.backends.base import Buffer, TapBackend
from passt.loop import ERR, HUP, IN, RDHUP
from passt.packet import (
    ETH_HLEN,
    ETH_P_ARP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Packet,
    ParseError,
    parse_frame,
)

if TYPE_CHECKING:
    from passt.context import Ctx

ROUTES = ("arp", "ndp", "dhcp", "dhcpv6", "icmp", "tcp", "udp")
_BATCH_ROUTES = frozenset(("tcp", "udp"))  # flows identified by addresses and ports

_ICMP_ECHO_REQUEST = 8
_ICMPV6_ECHO_REQUEST = 128
_NDP_TYPES = range(133, 138)  # router/neighbour solicitation/advertisement, redirect
_DHCP_SERVER_PORT = 67
_DHCPV6_SERVER_PORT = 547
_DHCP_SERVER_PORT_BYTES = _DHCP_SERVER_PORT.to_bytes(2, "big")
_TCP_HLEN = 20
_UDP_HLEN = 8
_NO_ADDRESS = b"none"  # no IPv4 address given: matches no packed address
_flow_ports = struct.Struct("!I").unpack_from  # both L4 ports as one number
_UNSPECIFIED4 = bytes(4)
_UNSPECIFIED6 = bytes(16)
_IPV4_PLAIN = b"\x08\x00\x45\x00"  # ethertype IPv4, version 4, 20-byte header, TOS 0
_UDP4_PAYLOAD = ETH_HLEN + 20 + _UDP_HLEN  # where a plain IPv4 frame's UDP payload starts
# From byte 6 of a frame: source MAC and _IPV4_PLAIN, IP total length, fragment
# field, protocol, then the key (addresses and ports) and the UDP length.
_PLAIN_UDP4 = struct.Struct("!6x10sHxxHxBxx12sH")
_IPV4_FRAG_MASK = 0x3FFF  # more fragments, fragment offset


class RecordingTap:
    """``ctx.tap`` while a backend is attached: pcap, counters, then the backend."""

    __slots__ = ("backend", "_ctx")

    def __init__(self, backend: TapBackend, ctx: Ctx) -> None:
        self.backend = backend
        self._ctx = ctx

    def fileno(self) -> int:
        return self.backend.fileno()

    def recv_frames(self) -> list[memoryview]:
        return self.backend.recv_frames()

    def send_frames(self, frames: Sequence[Buffer]) -> int:
        ctx = self._ctx
        sent = self.backend.send_frames(frames)
        if ctx.pcap is not None:
            ctx.pcap.write_frames(frames if sent == len(frames) else frames[:sent])
        stats = ctx.stats
        stats["tap.frames_out"] += sent
        if sent < len(frames):
            stats["drop.tap_send"] += len(frames) - sent
        return sent

    def close(self) -> None:
        self.backend.close()


def classify(pkt: Packet) -> str:
    """The route of a parsed frame (one of ``ROUTES``), or a ``drop.<reason>``."""
    if pkt.ip_version == 0:
        return "arp" if pkt.ethertype == ETH_P_ARP else "drop.ethertype"
    if pkt.fragment:
        return "drop.fragment"
    proto = pkt.proto
    l4 = pkt.l4
    if proto == IPPROTO_TCP:
        return "tcp" if len(l4) >= _TCP_HLEN else "drop.tcp_short"
    if proto == IPPROTO_UDP:
        if len(l4) < _UDP_HLEN:
            return "drop.udp_short"
        dport = l4[2] << 8 | l4[3]
        if pkt.ip_version == 4:
            return "dhcp" if dport == _DHCP_SERVER_PORT else "udp"
        return "dhcpv6" if dport == _DHCPV6_SERVER_PORT else "udp"
    if not l4:
        return "drop.icmp_short"
    if proto == IPPROTO_ICMP and pkt.ip_version == 4:
        return "icmp" if l4[0] == _ICMP_ECHO_REQUEST else "drop.icmp_type"
    if proto == IPPROTO_ICMPV6 and pkt.ip_version == 6:
        if l4[0] in _NDP_TYPES:
            return "ndp"
        return "icmp" if l4[0] == _ICMPV6_ECHO_REQUEST else "drop.icmp_type"
    return "drop.proto"


def _lane_key(key: bytes, src: bytes) -> bool:
    """Whether a plain IPv4 UDP frame's addresses and ports (``_PLAIN_UDP4``'s key)
    may take the fast lane: from the guest's address ``src``, not to DHCP."""
    return key[:4] == src and key[10:12] != _DHCP_SERVER_PORT_BYTES


class SourceFilter:
    """Which IP source addresses the guest may use (see the module docstring)."""

    def __init__(
        self, addr4: bytes | None = None, net6: ipaddress.IPv6Network | None = None
    ) -> None:
        self.allowed4 = addr4 or _NO_ADDRESS  # the dispatcher accepts it without a call
        self._net6 = None if net6 is None else (
            int(net6.network_address) >> (128 - net6.prefixlen), 128 - net6.prefixlen
        )  # fmt: skip

    @classmethod
    def for_guest(cls, net: Any) -> SourceFilter:
        """From a ``hostnet.NetInfo``: its ``addr4``, and ``addr6``/``prefix6``."""
        net6 = None
        if net.addr6 is not None:
            net6 = ipaddress.IPv6Network((net.addr6, net.prefix6), strict=False)
        return cls(None if net.addr4 is None else net.addr4.packed, net6)

    def allows(self, pkt: Packet) -> bool:
        src = pkt.src
        if pkt.ip_version == 4:
            if self.allowed4 is _NO_ADDRESS or src == self.allowed4:
                return True
            # No address yet: a DHCP request, and nothing that would open a flow.
            return src == _UNSPECIFIED4 and pkt.proto == IPPROTO_UDP and \
                pkt.l4[2:4] == _DHCP_SERVER_PORT_BYTES
        if self._net6 is None:
            return True
        if src == _UNSPECIFIED6:  # duplicate address detection, nothing else
            return pkt.proto == IPPROTO_ICMPV6
        assert src is not None
        if src[0] == 0xFE and src[1] & 0xC0 == 0x80:  # fe80::/10
            return True
        prefix, shift = self._net6
        return int.from_bytes(src, "big") >> shift == prefix


class Dispatcher:
    """Routes the guest's frames to protocol handlers; attaches backends to the loop."""

    def __init__(
        self, ctx: Ctx, handlers: Mapping[str, object], sources: SourceFilter | None = None
    ) -> None:
        unknown = set(handlers) - set(ROUTES)
        if unknown:
            raise ValueError(f"unknown tap routes: {sorted(unknown)}")
        self.ctx = ctx
        self._sources = sources or SourceFilter()
        self._single: dict[str, Callable[[Ctx, Packet], object]] = {}
        self._batched: dict[str, Callable[[Ctx, list[Packet]], object]] = {}
        for route, handler in handlers.items():
            if route in _BATCH_ROUTES and hasattr(handler, "from_tap_batch"):
                self._batched[route] = handler.from_tap_batch
            else:
                self._single[route] = handler.from_tap  # type: ignore[attr-defined]
        self._missing = {route: f"drop.no_{route}" for route in ROUTES if route not in handlers}
        self._udp_lane: Callable[[Ctx, bytes, list[memoryview]], object] | None = getattr(
            handlers.get("udp"), "from_tap_datagrams", None)
        self._mac_hooks = [
            h.guest_mac_changed for h in handlers.values() if hasattr(h, "guest_mac_changed")
        ]
        self._errors_seen: set[tuple[str, type]] = set()
        self._backend: TapBackend | None = None
        self._on_hangup: Callable[[], None] | None = None

    # -- backends ----------------------------------------------------------

    def attach(self, backend: TapBackend, on_hangup: Callable[[], None] | None = None) -> None:
        """Read ``backend`` from the loop and send through it; ``on_hangup`` when it ends."""
        assert self.ctx.loop is not None
        self.detach()
        self._backend = backend
        self._on_hangup = on_hangup
        self.ctx.tap = RecordingTap(backend, self.ctx)
        self.ctx.loop.add(backend.fileno(), IN | RDHUP, self._on_backend_event)

    def detach(self) -> None:
        """Stop using the backend (if any) and close it; ``ctx.tap`` becomes ``None``."""
        backend, self._backend = self._backend, None
        if backend is None:
            return
        self.ctx.tap = None
        if self.ctx.loop is not None:
            self.ctx.loop.remove(backend.fileno())
        backend.close()

    def _on_backend_event(self, events: int) -> None:
        backend = self._backend
        if backend is None:
            return
        try:
            frames = backend.recv_frames()
        except (OSError, EOFError) as e:
            log.debug("tap: backend read failed: %s", e)
            frames = None
        if frames:
            self.handle_frames(frames)
        elif frames is None or events & (ERR | HUP | RDHUP):
            self._hang_up()

    def _hang_up(self) -> None:
        on_hangup = self._on_hangup
        self.detach()
        if on_hangup is not None:
            on_hangup()

    # -- frames from the guest ---------------------------------------------

    def handle_frames(self, frames: Sequence[Buffer]) -> None:
        """Record, parse, filter and route a batch of frames from the guest."""
        ctx = self.ctx
        stats = ctx.stats
        if ctx.pcap is not None:
            ctx.pcap.write_frames(frames)
        stats["tap.frames_in"] += len(frames)
        allowed4 = self._sources.allowed4  # the usual source, accepted without a call
        lane = self._udp_lane
        mac = ctx.guest_mac
        plain = mac + _IPV4_PLAIN
        if lane is None or allowed4 is _NO_ADDRESS:
            self._route(frames, 0, len(frames))
            return
        # The fast lane (module docstring); anything else goes to _route in runs.
        unpack = _PLAIN_UDP4.unpack_from
        run_key = b""  # the key of the current run: its source and port were checked
        payloads: list[memoryview] = []
        first_other = 0  # start of the frames not yet routed
        for i, frame in enumerate(frames):
            view = frame if type(frame) is memoryview else memoryview(frame)
            size = len(view)
            if size >= _UDP4_PAYLOAD:
                head, total, frag, proto, key, udp_len = unpack(view)
                plain_udp = (head == plain and proto == IPPROTO_UDP
                             and not frag & _IPV4_FRAG_MASK and udp_len == total - 20
                             and udp_len >= _UDP_HLEN and total + ETH_HLEN <= size
                             and (key == run_key or _lane_key(key, allowed4)))
            else:
                plain_udp = False
            if not plain_udp:
                if payloads:
                    self._deliver_lane(lane, run_key, payloads)
                    payloads = []
                continue
            if first_other < i:
                self._route(frames, first_other, i)
                if ctx.guest_mac != mac:  # the full path learned another MAC: it takes the rest
                    first_other = i
                    break
            first_other = i + 1
            if key != run_key:
                if payloads:
                    self._deliver_lane(lane, run_key, payloads)
                    payloads = []
                run_key = key
            payloads.append(view[_UDP4_PAYLOAD:ETH_HLEN + total])
        if payloads:
            self._deliver_lane(lane, run_key, payloads)
        if first_other < len(frames):
            self._route(frames, first_other, len(frames))

    def _route(self, frames: Sequence[Buffer], start: int, end: int) -> None:
        """The full path for ``frames[start:end]``: parse, filter, classify, deliver."""
        ctx = self.ctx
        stats = ctx.stats
        single, batched, allows = self._single, self._batched, self._sources.allows
        allowed4 = self._sources.allowed4
        flow_ports = _flow_ports
        pending: list[Packet] = []
        pending_key: tuple[object, ...] | None = None
        for index in range(start, end):
            try:
                pkt = parse_frame(frames[index])
            except ParseError as e:
                stats["drop." + e.reason] += 1
                continue
            if pkt.eth_src != ctx.guest_mac:
                self._learn_guest_mac(pkt.eth_src)
            if pkt.ip_version and pkt.src != allowed4 and not allows(pkt):
                stats["drop.src_addr"] += 1
                continue
            route = classify(pkt)
            handler = single.get(route)
            if handler is not None:
                if pending:
                    self._deliver_batch(pending_key, pending)
                    pending, pending_key = [], None
                self._deliver(route, handler, pkt)
            elif route in batched:
                key = (route, pkt.src, pkt.dst, flow_ports(pkt.l4))
                if key != pending_key and pending:
                    self._deliver_batch(pending_key, pending)
                    pending = []
                pending_key = key
                pending.append(pkt)
            else:
                stats[self._missing.get(route, route)] += 1
        if pending:
            self._deliver_batch(pending_key, pending)

    def _deliver(self, route: str, handler: Callable[[Ctx, Packet], object], pkt: Packet) -> None:
        try:
            handler(self.ctx, pkt)
        except Exception as e:  # noqa: BLE001 - see "Handlers" in the module docstring
            self._handler_failed(route, e)

    def _deliver_batch(self, key: tuple[object, ...] | None, pkts: list[Packet]) -> None:
        assert key is not None
        route = str(key[0])
        try:
            self._batched[route](self.ctx, pkts)
        except Exception as e:  # noqa: BLE001 - see "Handlers" in the module docstring
            self._handler_failed(route, e)

    def _deliver_lane(self, lane: Callable[[Ctx, bytes, list[memoryview]], object],
                      key: bytes, payloads: list[memoryview]) -> None:
        try:
            lane(self.ctx, key, payloads)
        except Exception as e:  # noqa: BLE001 - see "Handlers" in the module docstring
            self._handler_failed("udp", e)

    def _handler_failed(self, route: str, exc: Exception) -> None:
        if isinstance(exc, ParseError):
            self.ctx.stats["drop." + exc.reason] += 1
            return
        self.ctx.stats["drop.handler_error"] += 1
        kind = (route, type(exc))
        if kind not in self._errors_seen:
            self._errors_seen.add(kind)
            log.debug("tap: %s handler failed:\n%s", route, "".join(traceback.format_exception(exc)))

    def _learn_guest_mac(self, mac: bytes) -> None:
        if mac[0] & 1:  # multicast or broadcast: not a station address
            return
        self.ctx.guest_mac = mac
        for hook in self._mac_hooks:
            try:
                hook(self.ctx)
            except Exception as e:  # noqa: BLE001 - a handler's bug, as above
                self._handler_failed("guest_mac_changed", e)
