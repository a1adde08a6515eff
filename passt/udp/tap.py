"""UDP between the tap and host sockets, and DNS forwarding.

Theory of operation
-------------------
UDP has no connections, but its traffic comes in conversations: a guest's
datagrams from one address and port to one address and port, and the
answers back.  Each conversation is a *flow*, registered in ``ctx.flows``
under ``("udp", guest address, guest port, remote address, remote port)``,
addresses as the guest sees them (raw bytes).  A frame from the guest finds
its flow with one dictionary lookup, and so does a datagram from a host
socket, whose flow is known from the socket (outbound) or from the
translated peer address (inbound).

Outbound flows (the guest speaks first) own one host socket each: bound to
the guest's source port (with ``SO_REUSEADDR``, so that one guest port may
talk to many peers from the same host port, as a NAT with
endpoint-independent mapping would; any free port if that one cannot be
had), to ``--outbound``/``--outbound-if4``/``-if6`` where given, and
connected to the destination, so that the kernel hands the socket only the
destination's answers.  If the guest's port is one that a ``-u`` rule
forwards to the guest (the guest serves it), its datagrams go out through
that forwarded port's own socket instead, as they would on a host serving
the port itself.

Inbound flows start with a datagram on one of ``flow/fwd.py``'s forwarded-port
sockets from a non-loopback peer (``fwd`` hands it to ``udp_tap``): the
guest gets it on the rule's target port, from the peer's own address and
port; its answers go back out through the same forwarded-port socket to
the peer.  These flows own no descriptor.

Addresses are translated by ``AddressMap``: ``nat.AddressMapping`` (the
model TCP and ICMP share: ``--map-host-loopback``, by default the gateway,
is the host's loopback; ``--map-guest-addr`` the host's own address;
datagrams from the host's loopback or own address appear to come from the
mapped address, else from the gateway), plus DNS forwarding:

* datagrams to a ``--dns-forward`` address on port 53 go to the host's
  resolver (``NetInfo.dns_host4/6``), and the answers come back from the
  forwarded address.  As upstream does, when the resolvers we advertise
  include the gateway (the host's resolver is on its loopback, e.g.
  ``127.0.0.53``, and was advertised as the gateway), the gateway's port
  53 is forwarded the same way: queries reach the resolver that listens on
  the host's loopback, not whatever listens on ``127.0.0.1:53``.  Upstream
  stops doing so once ``--dns-forward`` is given, which leaves the guest's
  advertised resolver (the gateway) pointing at ``127.0.0.1:53``; we keep
  forwarding it;
* broadcast, multicast and unspecified destinations are dropped
  (``drop.udp_addr``): a connected socket could not take the answers.

Datagrams travel as they are, up to 64 KiB.  Towards the guest, a datagram
larger than the MTU is dropped (``drop.udp_mtu``): the guest's link would
not take it.

Batching
--------
The dispatcher hands us runs of consecutive frames of one flow
(``from_tap_batch``; for plain IPv4 frames, ``from_tap_datagrams``, their
payloads alone, the flow keyed by the bytes of their headers): one lookup,
then one ``send`` per datagram.  Towards
the guest, a readable socket is read until ``EAGAIN`` but at most
``RECV_BATCH`` datagrams per wake-up (Python has no ``recvmmsg``), each
straight into a slot of a set of buffers allocated once, behind room left
for the headers: the flow's ``UdpFrameTemplate`` writes Ethernet, IP and
UDP headers in front of the payload, so the frame is a view of the slot and
the payload is never copied.  Frames are collected over one turn of the
event loop, from every flow, and sent in one ``send_frames`` call by a
zero-delay timer (which the loop runs once every descriptor of the turn has
been handled), or earlier if the slots run out.

Limits and lifetime
-------------------
A flow lives while it is used: every datagram in either direction stamps
it, and one periodic sweep (every ``SWEEP_INTERVAL`` seconds while flows
exist) closes those idle for ``FLOW_TIMEOUT`` seconds (180 s, as upstream).
Thousands of flows must not exhaust descriptors: when the flow table is
full (``udp.refused_table``) or ``socket()`` fails for want of descriptors
or memory (``udp.refused_socket``), the new flow is refused, its datagram
dropped (``drop.udp_no_flow``), and existing flows go on.  A destination
the host cannot reach at all (no route: ``connect()`` fails) drops the
datagram as ``drop.udp_connect``.  Every dropped datagram is counted once,
under one reason.

Errors the kernel reports on a flow's socket are ICMP errors the peer's
network sent to us (a port unreachable turns into ``ECONNREFUSED``, a host
unreachable into ``EHOSTUNREACH``): they are counted as
``udp.socket_errors`` and passed on to the guest as the same ICMP or
ICMPv6 error (``udp.icmp_to_guest``), quoting its datagram's addresses and
ports, so that its application learns at once that nobody listens, as it
would on the host.  (Upstream's 2023 version ignores them: the guest then
waits for its own timeout.)  ``--no-udp`` leaves this
handler out of the dispatcher and ``fwd``'s registry: nothing here runs.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from passt import buffers, log
from passt.checksum import Buffer, csum_fold, csum_partial, needs_csum_field, pseudo_sum
from passt.context import close_state
from passt.flow.fwd import HOST, UDP, Listen
from passt.flow.nat import AddressMapping, is_loopback, outbound_addresses, packed
from passt.flow.table import FlowTableFull, SockAddr, TapKey
from passt.host.hostnet import interface_index
from passt.loop import IN
from passt.packet import (
    ETH_HLEN,
    IPPROTO_UDP,
    Packet,
    ParseError,
    build_frame_icmp,
    build_frame_udp,
    build_ipv4,
    build_ipv6,
    parse_udp,
)

if TYPE_CHECKING:
    from passt.context import Ctx
    from passt.flow.fwd import Listener
    from passt.loop import Timer

FLOW_TIMEOUT = 180.0
SWEEP_INTERVAL = 10.0
RECV_BATCH = 64  # datagrams read from one socket per wake-up
SLOTS = 2 * RECV_BATCH  # frames collected per loop turn before a forced flush
DATAGRAM_MAX = 65535  # more than any UDP payload
MTU_DEFAULT = 65520
SOCK_BUF = 4 << 20  # asked for; the kernel caps it at net.core.[rw]mem_max
REPLY_TTL = 255  # as upstream: frames to the guest come from "one hop" away
DNS_PORT = 53
ICMP_DEST_UNREACH = 3
ICMPV6_DEST_UNREACH = 1

_UDP_HLEN = 8
_HDR_ROOM = ETH_HLEN + 40 + _UDP_HLEN  # the largest header: Ethernet, IPv6, UDP
_RESOURCE_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_U16 = struct.Struct("!H")
_U16x2 = struct.Struct("!HH")
_ANY = {4: "0.0.0.0", 16: "::"}
_FAMILY = {4: socket.AF_INET, 16: socket.AF_INET6}

FlowKey = TapKey


# ---------------------------------------------------------------- pure parts


def flow_key(guest: bytes, guest_port: int, remote: bytes, remote_port: int) -> FlowKey:
    """The flow-table key of a conversation, with addresses as the guest sees them."""
    return ("udp", guest, guest_port, remote, remote_port)


class AddressMap:
    """Address translations between the guest's view and the host's (no I/O).

    ``nat`` is the address mapping TCP and ICMP use too (``flow/nat.py``); on top
    of it, ``dns`` maps a forwarded DNS address to the host's resolver, and
    ``dns_reverse`` the resolver back.  See the module docstring for the rules.
    """

    __slots__ = ("nat", "dns", "dns_reverse")

    def __init__(self, nat: AddressMapping, dns: dict[bytes, bytes]) -> None:
        self.nat = nat
        self.dns = dns
        self.dns_reverse: dict[bytes, bytes] = {}
        for match, host in dns.items():  # the first match of a resolver answers for it
            self.dns_reverse.setdefault(host, match)

    @classmethod
    def from_net(cls, net: Any, nat: AddressMapping) -> AddressMap:
        """The translations for ``NetInfo`` ``net`` and the address mapping ``nat``."""
        advertised = {a.packed for a in net.dns}
        dns: dict[bytes, bytes] = {}
        for match, host, length in ((net.dns_match4, net.dns_host4, 4),
                                    (net.dns_match6, net.dns_host6, 16)):
            if host is None:
                continue
            if match is not None:
                dns[match.packed] = host.packed
            for gateway in sorted(nat.host_loopback[length] & advertised):
                dns.setdefault(gateway, host.packed)
        return cls(nat, dns)

    def outbound(self, dst: bytes, dport: int) -> bytes | None:
        """Where a guest's datagram to ``dst``:``dport`` really goes; ``None``: nowhere."""
        if dport == DNS_PORT:
            resolver = self.dns.get(dst)
            if resolver is not None:
                return resolver
        target = self.nat.outbound(dst)
        return None if _unreachable(target) else target

    def inbound(self, peer: bytes, port: int, guest: bytes) -> bytes | None:
        """The source the guest sees for a datagram from ``peer``:``port`` to ``guest``
        (the address the guest uses); ``None``: drop."""
        if port == DNS_PORT:
            match = self.dns_reverse.get(peer)
            if match is not None:
                return match
        return self.nat.inbound(peer, guest)


def _unreachable(dst: bytes) -> bool:
    """Broadcast, multicast or unspecified: no connected socket can take the answers."""
    if len(dst) == 4:
        return dst[0] >= 224 or dst == bytes(4) or dst == b"\xff\xff\xff\xff"
    return dst[0] == 0xFF or dst == bytes(16)


class UdpFrameTemplate:
    """Ethernet, IP and UDP headers of one flow's frames to the guest, patched per datagram.

    The constant parts of the IPv4 header checksum and of the UDP checksum
    (pseudo-header addresses and protocol, ports) are summed once; per
    datagram only the lengths and the payload are added.  Over IPv4 the UDP
    checksum is optional (zero: none), and, as upstream, we leave it out:
    the frame goes from memory to memory, and summing 64 KiB costs more
    than the rest of the frame.  IPv6 requires it: with ``partial_csum``
    (``Ctx.partial_csum``) the field holds the pseudo-header's sum alone and
    the device completes it, as for TCP, so the payload is never summed.
    """

    __slots__ = ("header", "hlen", "v4", "ip_acc", "udp_acc", "pseudo", "partial")

    def __init__(self, eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes,
                 sport: int, dport: int, *, ttl: int = REPLY_TTL,
                 partial_csum: bool = False) -> None:
        self.header = build_frame_udp(eth_dst, eth_src, src, dst, sport, dport, ttl=ttl,
                                      partial_csum=partial_csum)
        self.hlen = len(self.header)
        self.v4 = len(src) == 4
        self.partial = partial_csum
        ip_header = bytearray(self.header[ETH_HLEN : self.hlen - _UDP_HLEN])
        if self.v4:
            ip_header[2:4] = ip_header[10:12] = b"\0\0"  # total length, checksum
        self.ip_acc = csum_partial(ip_header)
        self.pseudo = pseudo_sum(src, dst, IPPROTO_UDP, 0)
        self.udp_acc = self.pseudo + sport + dport

    def _patch(self, buf: bytearray | memoryview, off: int, payload: Buffer) -> None:
        """Lengths and checksums of the headers at ``buf[off:]`` for ``payload``."""
        udp_len = _UDP_HLEN + len(payload)
        if self.v4:
            total = self.hlen - ETH_HLEN + len(payload)
            _U16.pack_into(buf, off + ETH_HLEN + 2, total)
            _U16.pack_into(buf, off + ETH_HLEN + 10, csum_fold(self.ip_acc + total))
            _U16x2.pack_into(buf, off + self.hlen - 4, udp_len, 0)  # no checksum: see above
            return
        _U16.pack_into(buf, off + ETH_HLEN + 4, udp_len)
        if self.partial:
            _U16x2.pack_into(buf, off + self.hlen - 4, udp_len,
                             needs_csum_field(self.pseudo + udp_len))
            return
        acc = self.udp_acc + 2 * udp_len  # the pseudo-header's length and the header's
        if payload:
            acc = csum_partial(payload, acc)
        _U16x2.pack_into(buf, off + self.hlen - 4, udp_len, csum_fold(acc) or 0xFFFF)

    def fill(self, slot: memoryview, size: int) -> memoryview:
        """The frame for the ``size`` payload bytes at ``slot[HDR_ROOM:]``, headers in front."""
        off = _HDR_ROOM - self.hlen
        slot[off:_HDR_ROOM] = self.header
        self._patch(slot, off, slot[_HDR_ROOM : _HDR_ROOM + size])
        return slot[off : _HDR_ROOM + size]

    def build(self, payload: Buffer) -> bytes:
        """A whole frame carrying a copy of ``payload``."""
        header = bytearray(self.header)
        self._patch(header, 0, payload)
        return b"".join((header, payload))


# ---------------------------------------------------------------- flows


class Refused(Exception):
    """No flow for a datagram; ``reason`` is the counter its datagrams are dropped under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UdpFlow:
    """One conversation: where the guest's datagrams go, and the frames back."""

    __slots__ = ("key", "sock", "dest", "own", "tpl", "last")

    def __init__(self, key: FlowKey, sock: socket.socket, dest: SockAddr | None,
                 tpl: UdpFrameTemplate, now: float) -> None:
        self.key = key
        self.sock = sock  # our own connected socket, or a forwarded port's
        self.dest = dest  # None: connected; else the sendto() address
        self.own = dest is None
        self.tpl = tpl
        self.last = now

    def __repr__(self) -> str:
        _, guest, gport, remote, rport = self.key
        family = _FAMILY[len(guest)]
        return (f"<udp {socket.inet_ntop(family, guest)}:{gport} <-> "
                f"{socket.inet_ntop(family, remote)}:{rport}>")


class UdpState:
    """``ctx.udp``: the flows, their buffers and the translation rules."""

    def __init__(self, ctx: Ctx, timeout: float = FLOW_TIMEOUT,
                 sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.ctx = ctx
        net = ctx.net
        conf = ctx.conf
        self.timeout = timeout
        self.sweep_interval = sweep_interval
        self.addresses = AddressMap.from_net(net, AddressMapping.build(net, conf))
        self.our_mac = net.mac
        self.mtu = net.mtu or MTU_DEFAULT
        self.guest4 = packed(net.addr4)
        self.guest6 = packed(net.addr6)
        self.scope6 = interface_index(net.ifname6)
        self.bind_addr = outbound_addresses(conf.outbound)
        self.bind_if = {4: conf.outbound_if4 or None, 16: conf.outbound_if6 or None}
        self.flows: dict[FlowKey, UdpFlow] = {}
        self.slots = buffers.pool(SLOTS, _HDR_ROOM + DATAGRAM_MAX)
        self.pending: list[Buffer] = []  # frames to the guest, sent at the end of the turn
        self.used = 0  # slots holding pending frames
        self.flush_timer: Timer | None = None
        self.sweep_timer: Timer | None = None
        self.warned_socket = False

    # -- from the guest ----------------------------------------------------

    def from_guest(self, pkts: Sequence[Packet]) -> None:
        """Send the datagrams of a run of frames of one flow (never raises)."""
        first = pkts[0]
        l4 = first.l4
        src, dst = first.src, first.dst
        assert src is not None and dst is not None
        flow = self._flow(flow_key(src, l4[0] << 8 | l4[1], dst, l4[2] << 8 | l4[3]), len(pkts))
        if flow is None:
            return
        payloads = []
        stats = self.ctx.stats
        for pkt in pkts:
            try:
                payloads.append(parse_udp(pkt.l4).payload)
            except ParseError as bad:
                stats["drop." + bad.reason] += 1
        self._send(flow, payloads)

    def from_wire(self, wire_key: bytes, payloads: list[memoryview]) -> None:
        """Send ``payloads``, a run of one IPv4 flow's datagrams (never raises);
        ``wire_key``: its source, destination and ports as in the headers."""
        key = flow_key(wire_key[:4], wire_key[8] << 8 | wire_key[9],
                       wire_key[4:8], wire_key[10] << 8 | wire_key[11])
        flow = self._flow(key, len(payloads))
        if flow is not None:
            self._send(flow, payloads)

    def _flow(self, key: FlowKey, count: int) -> UdpFlow | None:
        """The flow of ``key``, opened if new and stamped; ``None``: its ``count``
        datagrams are dropped (and counted)."""
        ctx = self.ctx
        flow = ctx.flows.get(key)
        if flow is None:
            try:
                flow = self._open_outbound(key)
            except Refused as refused:
                ctx.stats[refused.reason] += count
                return None
        flow.last = ctx.loop.now()  # type: ignore[union-attr]
        return flow

    def _send(self, flow: UdpFlow, payloads: list[memoryview]) -> None:
        """One ``send`` per datagram on ``flow``'s socket."""
        sock, dest = flow.sock, flow.dest
        sent = 0
        for payload in payloads:
            try:
                if dest is None:
                    sock.send(payload)
                else:
                    sock.sendto(payload, dest)
                sent += 1
            except OSError as e:
                sent += self._send_failed(flow, payload, e)
        self.ctx.stats["udp.to_host"] += sent

    def _send_failed(self, flow: UdpFlow, payload: memoryview, e: OSError) -> int:
        """A send refused: retry once past an error left by an earlier ICMP message."""
        stats = self.ctx.stats
        if e.errno == errno.ECONNREFUSED and flow.own:
            stats["udp.socket_errors"] += 1
            try:
                flow.sock.send(payload)
                return 1
            except OSError as again:
                e = again
        stats["drop.udp_send"] += 1
        if log.TRACE:
            log.trace("udp: send on %r failed: %s", flow, e.strerror)
        return 0

    def _open_outbound(self, key: FlowKey) -> UdpFlow:
        """A new flow for a datagram from the guest, with its socket; raises ``Refused``."""
        ctx = self.ctx
        _, guest, gport, remote, rport = key
        target = self.addresses.outbound(remote, rport)
        if target is None or rport == 0:
            raise Refused("drop.udp_addr")
        self._check_room()
        address = self._sockaddr(target, rport)
        sock = self._socket(target, gport, address)
        if isinstance(sock, socket.socket):
            flow = self._add(key, sock, None)
        else:
            flow = self._add(key, sock.sock, address)
        if len(guest) == 16 and not guest.startswith(b"\xfe\x80"):
            self.guest6 = guest  # the address the guest uses (SLAAC picks its own)
        ctx.stats["udp.flows_out"] += 1
        if log.DEBUG:
            log.debug("udp: %r opened", flow)
        return flow

    def _sockaddr(self, target: bytes, port: int) -> SockAddr:
        if len(target) == 4:
            return (socket.inet_ntop(socket.AF_INET, target), port)
        scope = self.scope6 if target.startswith(b"\xfe\x80") else 0
        return (socket.inet_ntop(socket.AF_INET6, target), port, 0, scope)

    def _check_room(self) -> None:
        """Refuse a new flow now if the flow table is full (before making a socket)."""
        if self.ctx.flows.full():
            self.ctx.stats["udp.refused_table"] += 1
            raise Refused("drop.udp_no_flow")

    def _socket(self, target: bytes, gport: int, address: SockAddr) -> socket.socket | Listener:
        """A socket from the guest's port, bound as configured, connected to ``address``.

        If the guest's port is taken, by a forwarded port of the guest's own
        (``-u``), that port's socket is the one to send from (not for the
        host's loopback: ``fwd`` hands what comes from there to the spliced
        path); if by anybody else, any port will do.  Raises ``Refused``.
        """
        size = len(target)
        try:
            sock = socket.socket(_FAMILY[size], socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC)
        except OSError as e:
            self._socket_failed(e)
            raise Refused("drop.udp_no_flow") from None
        local = is_loopback(target)  # the host itself: no outbound binding
        bind = _ANY[size] if local else self.bind_addr.get(size, _ANY[size])
        try:
            ifname = None if local else self.bind_if[size]
            if ifname:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            if size == 16:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
            try:
                sock.bind((bind, gport))
            except OSError:
                listener = None if local else self._forwarded_listener(size, gport)
                if listener is not None:
                    sock.close()
                    return listener
                # any port, but one of its own: on sockets that all have
                # SO_REUSEADDR the kernel's pick may be a port another holds
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
                sock.bind((bind, 0))
            sock.connect(address)
        except OSError as e:
            sock.close()
            log.debug("udp: can't reach %s port %d: %s", address[0], address[1], e.strerror)
            raise Refused("drop.udp_connect") from None
        return sock

    def _socket_failed(self, e: OSError) -> None:
        self.ctx.stats["udp.refused_socket"] += 1
        if e.errno in _RESOURCE_ERRORS and not self.warned_socket:
            self.warned_socket = True
            log.warn("udp: refusing new flows: %s", e.strerror)
        elif log.DEBUG:
            log.debug("udp: no socket for a new flow: %s", e.strerror)

    def _forwarded_listener(self, size: int, gport: int) -> Listener | None:
        """The host-side forwarded-port socket whose datagrams go to guest port ``gport``."""
        fwd = self.ctx.fwd
        if fwd is None or not fwd.listeners:
            return None
        family = _FAMILY[size]
        listener: Listener | None = fwd.listeners.get(Listen(UDP, HOST, family, _ANY[size], gport))
        if listener is not None and listener.target_port == gport:
            return listener
        for listener in fwd.listeners.values():
            listen = listener.listen
            if (listener.target_port == gport and listen.proto == UDP
                    and listener.origin == HOST and listener.family == family):
                return listener
        return None

    def _add(self, key: FlowKey, sock: socket.socket, dest: SockAddr | None) -> UdpFlow:
        """Register a flow (and, for its own socket, watch it); raises ``Refused``.

        An own socket (``dest`` is ``None``) is closed if the flow is refused.
        """
        ctx = self.ctx
        loop = ctx.loop
        assert loop is not None
        flow = UdpFlow(key, sock, dest, self._template(key), loop.now())
        try:
            ctx.flows.add(key, flow)
        except FlowTableFull:
            if flow.own:
                sock.close()
            ctx.stats["udp.refused_table"] += 1
            raise Refused("drop.udp_no_flow") from None
        self.flows[key] = flow
        if flow.own:
            loop.add(
                sock.fileno(), IN, lambda _events: self._readable(flow),
                lambda _error: self.close_flow(flow),  # a fault: this flow alone goes
            )  # fmt: skip
        if self.sweep_timer is None:
            self.sweep_timer = loop.call_later(self.sweep_interval, self._sweep)
        return flow

    # -- towards the guest -------------------------------------------------

    def _readable(self, flow: UdpFlow) -> None:
        """Read what ``flow``'s socket holds (bounded) into slots, as frames to the guest."""
        if self.used > SLOTS - RECV_BATCH:
            self.flush()
        recv_into = flow.sock.recv_into
        slots, pending, fill = self.slots, self.pending, flow.tpl.fill
        limit = self.mtu - (flow.tpl.hlen - ETH_HLEN)
        used = self.used
        stats = self.ctx.stats
        for _ in range(RECV_BATCH):
            slot = slots[used]
            try:
                size = recv_into(slot[_HDR_ROOM:])
            except BlockingIOError:
                break
            except OSError as e:
                self._socket_error(flow, e)
                continue
            if size > limit:
                stats["drop.udp_mtu"] += 1
                continue
            pending.append(fill(slot, size))
            used += 1
        if used != self.used:
            flow.last = self.ctx.loop.now()  # type: ignore[union-attr]
            self.used = used
        if pending:
            self._flush_soon()

    def _socket_error(self, flow: UdpFlow, e: OSError) -> None:
        """An ICMP error reported on ``flow``'s socket: the same error to the guest."""
        self.ctx.stats["udp.socket_errors"] += 1
        if log.TRACE:
            log.trace("udp: %r: %s", flow, e.strerror)
        frame = unreachable_frame(flow.key, e.errno or 0, self.ctx.guest_mac, self.our_mac)
        if frame is not None:
            self.pending.append(frame)
            self.ctx.stats["udp.icmp_to_guest"] += 1

    def from_listener(self, listener: Listener, data: memoryview, peer: SockAddr) -> None:
        """A datagram on a forwarded port from a non-loopback peer: to the guest's target port."""
        ctx = self.ctx
        size = 4 if listener.family == socket.AF_INET else 16
        guest = self.guest4 if size == 4 else self.guest6
        if guest is None:
            ctx.stats["drop.udp_no_guest"] += 1
            return
        try:
            peer_addr = socket.inet_pton(listener.family, peer[0].partition("%")[0])
        except OSError:
            ctx.stats["drop.udp_addr"] += 1
            return
        remote = self.addresses.inbound(peer_addr, peer[1], guest)
        if remote is None:
            ctx.stats["drop.udp_addr"] += 1
            return
        key = flow_key(guest, listener.target_port, remote, peer[1])
        flow = ctx.flows.get(key)
        if flow is None:
            try:
                flow = self._add(key, listener.sock, peer)
            except Refused as e:
                ctx.stats[e.reason] += 1
                return
            ctx.stats["udp.flows_in"] += 1
            if log.DEBUG:
                log.debug("udp: %r forwarded in", flow)
        if len(data) > self.mtu - (flow.tpl.hlen - ETH_HLEN):
            ctx.stats["drop.udp_mtu"] += 1
            return
        flow.last = ctx.loop.now()  # type: ignore[union-attr]
        self.pending.append(flow.tpl.build(data))
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self.flush_timer is None:
            self.flush_timer = self.ctx.loop.call_later(0, self._flush_timer)  # type: ignore[union-attr]

    def _flush_timer(self) -> None:
        self.flush_timer = None
        self.flush()

    def flush(self) -> None:
        """Send the frames collected so far to the guest, in one call."""
        pending = self.pending
        if not pending:
            return
        ctx = self.ctx
        if ctx.tap is not None:
            ctx.tap.send_frames(pending)
            ctx.stats["udp.to_guest"] += len(pending)
        else:
            ctx.stats["drop.udp_no_tap"] += len(pending)
        pending.clear()
        self.used = 0

    # -- lifetime ----------------------------------------------------------

    def _sweep(self) -> None:
        """Close the flows idle for ``timeout``; sleep again while any is left."""
        loop = self.ctx.loop
        assert loop is not None
        self.sweep_timer = None
        oldest = loop.now() - self.timeout
        idle = [flow for flow in self.flows.values() if flow.last <= oldest]
        for flow in idle:
            self.close_flow(flow)
        self.ctx.stats["udp.expired"] += len(idle)
        if self.flows:
            self.sweep_timer = loop.call_later(self.sweep_interval, self._sweep)

    def close_flow(self, flow: UdpFlow) -> None:
        """Forget ``flow``: its socket (if its own), loop registration, table entry."""
        ctx = self.ctx
        if flow.own:
            if ctx.loop is not None:
                ctx.loop.remove(flow.sock.fileno())
            flow.sock.close()
        ctx.flows.remove(flow.key)
        self.flows.pop(flow.key, None)
        if log.DEBUG:
            log.debug("udp: %r closed", flow)

    def _template(self, key: FlowKey) -> UdpFrameTemplate:
        """The headers of the frames to the guest of the flow ``key``."""
        _, guest, gport, remote, rport = key
        return UdpFrameTemplate(self.ctx.guest_mac, self.our_mac, remote, guest, rport, gport,
                                partial_csum=self.ctx.partial_csum)

    def rebuild_templates(self) -> None:
        """The guest's MAC changed: new headers for every flow."""
        for flow in self.flows.values():
            flow.tpl = self._template(flow.key)

    def close(self) -> None:
        """Close every flow and stop the timers (at exit, and in tests)."""
        self.flush()
        for timer in (self.flush_timer, self.sweep_timer):
            if timer is not None:
                timer.cancel()
        self.flush_timer = self.sweep_timer = None
        for flow in list(self.flows.values()):
            self.close_flow(flow)


# errno of a connected socket → (ICMP, ICMPv6) destination unreachable code
_UNREACHABLE = {
    errno.ECONNREFUSED: (3, 4),  # port unreachable
    errno.EHOSTUNREACH: (1, 3),  # host / address unreachable
    errno.ENETUNREACH: (0, 0),  # network unreachable / no route
}


def unreachable_frame(key: FlowKey, err: int, eth_dst: bytes, eth_src: bytes) -> bytes | None:
    """The ICMP error a flow's socket error stands for, as the guest's network would send it.

    It comes from the remote end and quotes the guest's datagram as far as
    the guest needs to find its socket: IP header and UDP header (lengths
    are those of an empty datagram: we no longer have the original).
    """
    codes = _UNREACHABLE.get(err)
    if codes is None:
        return None
    _, guest, gport, remote, rport = key
    udp_header = _U16x2.pack(gport, rport) + _U16x2.pack(_UDP_HLEN, 0)
    if len(guest) == 4:
        quote = build_ipv4(guest, remote, IPPROTO_UDP, udp_header)
        icmp_type, code = ICMP_DEST_UNREACH, codes[0]
    else:
        quote = build_ipv6(guest, remote, IPPROTO_UDP, udp_header)
        icmp_type, code = ICMPV6_DEST_UNREACH, codes[1]
    return build_frame_icmp(eth_dst, eth_src, remote, guest, icmp_type, code, 0, 0, quote)


# ---------------------------------------------------------------- handler API


def init(ctx: Ctx) -> UdpState:
    """Set up ``ctx.udp`` and take datagrams on forwarded ports from ``ctx.fwd``, if any."""
    state = UdpState(ctx)
    ctx.udp = state
    if ctx.fwd is not None:
        ctx.fwd.handlers.udp_tap = state.from_listener
    return state


def close(ctx: Ctx) -> None:
    """Close every UDP flow (shutting down)."""
    close_state(ctx, "udp")
    if ctx.fwd is not None:
        ctx.fwd.handlers.udp_tap = None


def from_tap_batch(ctx: Ctx, pkts: Sequence[Packet]) -> None:
    """Consecutive frames of one flow from the guest (see ``dispatch.Dispatcher``)."""
    state: UdpState = ctx.udp or init(ctx)
    state.from_guest(pkts)


def from_tap_datagrams(ctx: Ctx, wire_key: bytes, payloads: list[memoryview]) -> None:
    """The payloads of consecutive plain IPv4 frames of one flow (``dispatch``'s fast lane)."""
    state: UdpState = ctx.udp or init(ctx)
    state.from_wire(wire_key, payloads)


def from_tap(ctx: Ctx, pkt: Packet) -> None:
    """One frame from the guest."""
    from_tap_batch(ctx, (pkt,))


def guest_mac_changed(ctx: Ctx) -> None:
    if ctx.udp is not None:
        ctx.udp.rebuild_templates()
