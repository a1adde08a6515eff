"""ICMP and ICMPv6 echo: the guest's pings, sent as real pings from unprivileged sockets.

Theory of operation
-------------------
We have no raw sockets and want none.  Linux offers "ping" sockets
(``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)``, and ``IPPROTO_ICMPV6``) to
any process whose group is in ``net.ipv4.ping_group_range`` (distributions
open it to everybody; the sysctl covers both families): the process writes
an echo request, the kernel sends it with the socket's "port" as the echo
identifier and its own checksum, and hands back the echo replies that carry
that identifier.  So an echo request from the guest becomes a write on such
a socket, and the reply a frame towards the guest.

Flows
-----
One socket per (guest address, destination, echo identifier): a flow in the
flow table under ``("icmp", guest, destination, ident)``.  Its socket is
connected to the destination, so the kernel only hands it that
destination's replies, and is watched by the event loop.  We first bind
the socket to the guest's own identifier, so that the far end sees the id
the guest chose, as upstream did; if another socket holds that identifier
(another flow of the same id, the host's own ping), the kernel picks one.
Ping sockets are created with ``SO_REUSEADDR`` set, which lets two of them
bind one identifier, and the kernel then delivers a reply to whichever it
finds first, ignoring where the reply came from: we clear the option before
binding, so an identifier we hold is ours alone.  Either way the kernel
writes the socket's identifier into what it sends and expects it in
replies, so replies are translated back: the guest gets its own identifier
and sequence number, from the address it pinged, never the socket's.

Destinations are translated like every flow's (``nat.AddressMapping``): the
gateway address (or ``--map-host-loopback``) means the host itself and is
mapped to its loopback (``127.0.0.1``, ``::1``), unless ``--no-map-gw``;
``--map-guest-addr`` is the host's own address.  The guest still sees its replies come from the
gateway.  A link-local destination (our own link-local address: the
guest's default router) is reached through the host's template interface,
as upstream does, so it needs that interface's index as scope.

A flow lives while it is used: 60 s after the last request or reply (as
upstream's ICMP_ECHO_TIMEOUT) its timer closes the socket and removes the
flow.  One timer per flow, re-armed lazily: it fires at the old deadline,
and sleeps again until the new one if the flow was used meanwhile, so a
ping flood costs no timer work per packet.

Failures are counted, never raised: no ping socket allowed
(``drop.icmp_socket``, with one warning that names the sysctl), a full
flow table (``drop.flow_table_full``), a send the kernel refuses
(``drop.icmp_send``); ICMP errors reported on a socket (the destination is
unreachable) are counted as ``icmp.socket_errors`` and otherwise ignored,
as the guest's ping times out anyway.  ``--no-icmp`` removes the route in
the dispatcher: nothing of this module runs.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import TYPE_CHECKING

from passt import log
from passt.context import close_state
from passt.flow.nat import AddressMapping
from passt.flow.table import FlowTableFull
from passt.host.hostnet import interface_index
from passt.loop import IN
from passt.packet import Packet, ParseError, build_frame_icmp, parse_icmp

if TYPE_CHECKING:
    from passt.context import Ctx
    from passt.loop import Timer

ECHO_TIMEOUT = 60.0
RECV_BATCH = 32
RECV_SIZE = 65536
REPLY_TTL = 255  # as upstream

ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129

_ECHO = struct.Struct("!BBHHH")  # type code checksum ident seq


class EchoFlow:
    """One ping socket and who it speaks for."""

    __slots__ = ("key", "sock", "guest", "remote", "ident", "reply_type", "last_used", "timer")

    def __init__(
        self, key: tuple[object, ...], sock: socket.socket, guest: bytes, remote: bytes, ident: int
    ) -> None:
        self.key = key
        self.sock = sock
        self.guest = guest  # the guest's address: replies go there
        self.remote = remote  # the address the guest pinged: replies come from there
        self.ident = ident  # the guest's echo identifier
        self.reply_type = ICMP_ECHO_REPLY if len(guest) == 4 else ICMPV6_ECHO_REPLY
        self.last_used = 0.0
        self.timer: Timer | None = None


class IcmpService:
    """``ctx.icmp``: echo flows of the guest, their sockets and timers."""

    def __init__(self, ctx: Ctx, timeout: float = ECHO_TIMEOUT) -> None:
        self.ctx = ctx
        self.timeout = timeout
        self.nat = AddressMapping.build(ctx.net, ctx.conf)
        self.scope6 = interface_index(ctx.net.ifname6)
        self._warned = False

    # -- from the guest --------------------------------------------------

    def echo_request(self, pkt: Packet) -> None:
        """Send the echo request in ``pkt`` from the flow's ping socket."""
        msg = parse_icmp(pkt.l4)
        assert pkt.src is not None and pkt.dst is not None
        key = ("icmp", pkt.src, pkt.dst, msg.ident)
        flow = self.ctx.flows.get(key) or self._open(key, pkt.src, pkt.dst, msg.ident)
        if flow is None:
            return
        request_type = ICMP_ECHO_REQUEST if len(pkt.src) == 4 else ICMPV6_ECHO_REQUEST
        flow.last_used = self.ctx.loop.now()  # type: ignore[union-attr]
        try:
            flow.sock.send(_ECHO.pack(request_type, 0, 0, 0, msg.seq) + msg.body)
        except OSError as e:
            self.ctx.stats["drop.icmp_send"] += 1
            if log.TRACE:
                log.trace("icmp: send to flow %s failed: %s", key, e.strerror)
            return
        self.ctx.stats["icmp.requests"] += 1

    def _open(self, key: tuple[object, ...], guest: bytes, remote: bytes,
              ident: int) -> EchoFlow | None:
        """A new flow with its socket, registered in the flow table and the loop."""
        ctx = self.ctx
        assert ctx.loop is not None
        sock = self._socket(guest, self.nat.outbound(remote), ident)
        if sock is None:
            return None
        flow = EchoFlow(key, sock, guest, remote, ident)
        try:
            ctx.flows.add(key, flow)
        except FlowTableFull:
            sock.close()
            ctx.stats["drop.flow_table_full"] += 1
            return None
        ctx.loop.add(
            sock.fileno(), IN, lambda _events: self._readable(flow), lambda _e: self._close(flow)
        )
        flow.timer = ctx.loop.call_later(self.timeout, lambda: self._expire(flow))
        return flow

    def _socket(self, guest: bytes, target: bytes, ident: int) -> socket.socket | None:
        """A ping socket connected to ``target``, bound to ``ident`` if it is free."""
        v4 = len(guest) == 4
        family = socket.AF_INET if v4 else socket.AF_INET6
        proto = socket.IPPROTO_ICMP if v4 else socket.IPPROTO_ICMPV6
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, proto)
        except OSError as e:
            self._socket_failed(e)
            return None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)  # see "Flows"
        try:
            sock.bind(("0.0.0.0" if v4 else "::", ident))
        except OSError:
            pass  # the identifier is taken: connect() picks a free one
        address: tuple[str, int] | tuple[str, int, int, int] = (socket.inet_ntop(family, target), 0)
        if not v4 and target[0] == 0xFE and target[1] & 0xC0 == 0x80:  # fe80::/10
            address = (address[0], 0, 0, self.scope6)
        try:
            sock.connect(address)
        except OSError as e:
            sock.close()
            self.ctx.stats["drop.icmp_connect"] += 1
            log.debug("icmp: can't ping %s: %s", socket.inet_ntop(family, target), e.strerror)
            return None
        return sock

    def _socket_failed(self, e: OSError) -> None:
        self.ctx.stats["drop.icmp_socket"] += 1
        if not self._warned:
            self._warned = True
            hint = " (see net.ipv4.ping_group_range)" if e.errno == errno.EACCES else ""
            log.warn("icmp: can't open ping socket: %s%s", e.strerror, hint)

    # -- towards the guest -----------------------------------------------

    def _readable(self, flow: EchoFlow) -> None:
        """Relay the replies waiting on ``flow``'s socket, with the guest's identifier."""
        ctx = self.ctx
        net = ctx.net
        frames = []
        recv = flow.sock.recv
        for _ in range(RECV_BATCH):
            try:
                data = recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError:
                ctx.stats["icmp.socket_errors"] += 1
                continue
            if len(data) < _ECHO.size or data[0] != flow.reply_type:
                ctx.stats["drop.icmp_reply"] += 1
                continue
            frames.append(build_frame_icmp(
                ctx.guest_mac, net.mac, flow.remote, flow.guest, flow.reply_type, data[1],
                flow.ident, data[6] << 8 | data[7], memoryview(data)[_ECHO.size :],
                ttl=REPLY_TTL,
            ))  # fmt: skip
        if not frames:
            return
        flow.last_used = ctx.loop.now()  # type: ignore[union-attr]
        ctx.stats["icmp.replies"] += len(frames)
        if ctx.tap is not None:
            ctx.tap.send_frames(frames)

    # -- lifetime --------------------------------------------------------

    def _expire(self, flow: EchoFlow) -> None:
        loop = self.ctx.loop
        assert loop is not None
        deadline = flow.last_used + self.timeout
        if loop.now() < deadline:
            flow.timer = loop.call_at(deadline, lambda: self._expire(flow))
            return
        self._close(flow)

    def _close(self, flow: EchoFlow) -> None:
        ctx = self.ctx
        if flow.timer is not None:
            flow.timer.cancel()
        if ctx.loop is not None:
            ctx.loop.remove(flow.sock.fileno())
        flow.sock.close()
        ctx.flows.remove(flow.key)

    def close(self) -> None:
        """Close every echo flow (at exit, and in tests)."""
        for key, flow in self.ctx.flows.items():
            if key[0] == "icmp":
                self._close(flow)


def init(ctx: Ctx) -> IcmpService:
    """Set up ``ctx.icmp`` (no socket is opened before the first echo request)."""
    service = IcmpService(ctx)
    ctx.icmp = service
    return service


def close(ctx: Ctx) -> None:
    """Close every echo flow and its socket."""
    close_state(ctx, "icmp")


def from_tap(ctx: Ctx, pkt: Packet) -> None:
    """Relay an echo request from the guest; count whatever is dropped."""
    service: IcmpService = ctx.icmp or init(ctx)
    try:
        service.echo_request(pkt)
    except ParseError as e:
        ctx.stats["drop." + e.reason] += 1
