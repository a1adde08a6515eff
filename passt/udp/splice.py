"""pasta's loopback-to-loopback UDP forwarding, datagram by datagram.

Theory of operation
-------------------
A datagram from a loopback address to a forwarded UDP port (``-u`` on the
host, ``-U`` in the namespace) is local traffic: it never needs the tap.
Each sender (address and port, per listener) is a *flow*: the first
datagram creates a socket on the other side, bound to that side's loopback
(with the sender's own port when it is free there, so that the receiver
sees the same port numbers) and connected to the loopback address and
target port; in the namespace, as upstream 2026, to the namespace's own
address instead unless ``--host-lo-to-ns-lo`` (``fwd.splice_targets``), so
that services listening only on its loopback stay private.  Datagrams are then relayed one by one: from the sender
through the listener to the flow socket, and replies arriving on the flow
socket back to the sender through the listener socket, so that they come
from the forwarded port the sender addressed.

A bulk transfer is a stream of datagrams from one sender: ``UdpSplice``
remembers the flow of the last one (forgotten when that flow closes), so
that the next from the same sender skips building its key and looking it
up, and ``fwd`` picks the handler once per run of one sender's datagrams.

Flows expire after ``timeout`` seconds without traffic in either direction
(180 s, as upstream).  Refreshing a flow only stores a timestamp; a single
timer per flow checks it when it fires and re-arms for the remaining time,
so that busy flows cost no timer operations per datagram.

The flow socket is connected: the kernel filters out datagrams from anyone
but the target, and the socket does not show up as a bound, unconnected
socket in ``/proc/net/udp``, so ``auto`` scanning does not mistake it for a
service.  An error on a send (a queued ``ECONNREFUSED`` from an earlier
datagram, a full buffer) drops that datagram only, as a network would.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from passt import buffers
from passt import loop as ev
from passt.flow.fwd import HOST, LOOPBACK, Listener, NsCall, splice_targets
from passt.flow.table import FlowKey, FlowTable, FlowTableFull, SockAddr

FLOW_TIMEOUT = 180.0
REPLY_BATCH = 64
DATAGRAM_MAX = 65536



def new_flow_socket(family: int, source_port: int, target_port: int,
                    address: str | None = None) -> socket.socket:
    """A UDP socket connected to the target (on ``address``, by default the
    loopback), preferably from ``source_port`` of the same address."""
    address = address or LOOPBACK[family]
    s = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        try:
            s.bind((address, source_port))
        except OSError:
            s.bind((address, 0))
        s.connect((address, target_port))
    except BaseException:
        s.close()
        raise
    return s


def _call_here(fn: Callable[..., Any], *args: Any) -> Any:
    """The host side's counterpart of ``ns_call``: run ``fn`` in this namespace."""
    return fn(*args)


class SplicedFlow:
    """One sender's datagrams relayed to the other side, and the replies back."""

    __slots__ = ("splicer", "key", "listener", "peer", "sock", "fd", "last", "timer")

    def __init__(self, splicer: UdpSplice, key: FlowKey, listener: Listener, peer: SockAddr,
                 sock: socket.socket) -> None:
        self.splicer = splicer
        self.key = key
        self.listener = listener
        self.peer = peer
        self.sock = sock
        self.fd = sock.fileno()
        self.last = time.monotonic()
        self.timer = splicer.loop.call_later(splicer.timeout, self._expire)

    def send(self, data: memoryview) -> None:
        self.last = time.monotonic()
        try:
            self.sock.send(data)
        except OSError:
            self.splicer.stats["udp_splice.send_error"] += 1

    def on_reply(self, _mask: int) -> None:
        """Relay the target's datagrams back to the sender, from the forwarded port."""
        splicer = self.splicer
        buf = splicer.buf
        out = self.listener.sock
        peer = self.peer
        got = False
        for _ in range(REPLY_BATCH):
            try:
                n = self.sock.recv_into(buf)
            except BlockingIOError:
                break
            except OSError:  # ECONNREFUSED: nobody listens on the target port
                splicer.stats["udp_splice.target_error"] += 1
                continue
            got = True
            try:
                out.sendto(buf[:n], peer)
            except OSError:
                splicer.stats["udp_splice.reply_error"] += 1
        if got:
            self.last = time.monotonic()

    def _expire(self) -> None:
        idle = time.monotonic() - self.last
        remaining = self.splicer.timeout - idle
        if remaining > 0:
            self.timer = self.splicer.loop.call_later(remaining, self._expire)
            return
        self.close()

    def close(self) -> None:
        if self.splicer.last is self:
            self.splicer.last = None
        self.timer.cancel()
        self.splicer.loop.remove(self.fd)
        self.sock.close()
        self.splicer.flows.remove(self.key)


class UdpSplice:
    """Flows of loopback UDP traffic between the host and the namespace."""

    def __init__(self, loop: ev.EventLoop, flows: FlowTable, ns_call: NsCall,
                 timeout: float = FLOW_TIMEOUT, ns_targets: dict[int, str] | None = None) -> None:
        """``ns_targets``: per family, the namespace's address host-side senders
        reach (``fwd.splice_targets``; default: its loopback)."""
        self.loop = loop
        self.ns_targets = ns_targets or {}
        self.flows = flows
        self.ns_call = ns_call
        self.timeout = timeout
        self.buf = buffers.zeroed(DATAGRAM_MAX)
        self.stats: Counter[str] = Counter()
        self.last: SplicedFlow | None = None  # the flow of the last datagram, while it lives

    def forward(self, listener: Listener, data: memoryview, peer: SockAddr) -> None:
        """A datagram from loopback ``peer`` to ``listener``: relay it (never raises)."""
        flow = self.last
        if flow is None or flow.peer != peer or flow.listener is not listener:
            key = ("udp_splice", listener.origin, listener.family, peer[0], peer[1], listener.port)
            flow = self.flows.get(key)
            if flow is None:
                flow = self._new_flow(key, listener, peer)
                if flow is None:
                    return
            self.last = flow
        flow.send(data)

    def _new_flow(self, key: FlowKey, listener: Listener, peer: SockAddr) -> SplicedFlow | None:
        inbound = listener.origin == HOST
        make = self.ns_call if inbound else _call_here
        address = self.ns_targets.get(listener.family) if inbound else None
        try:
            sock = make(new_flow_socket, listener.family, peer[1], listener.target_port, address)
        except Exception:  # out of descriptors, or the namespace helper is gone
            self.stats["udp_splice.socket_error"] += 1
            return None
        flow = SplicedFlow(self, key, listener, peer, sock)
        try:
            self.flows.add(key, flow)
        except FlowTableFull:
            flow.timer.cancel()
            sock.close()
            self.stats["udp_splice.flow_table_full"] += 1
            return None
        self.loop.add(flow.fd, ev.IN, flow.on_reply, lambda _error: flow.close())
        return flow

    def close(self) -> None:
        for key, flow in self.flows.items():
            if key[0] == "udp_splice":
                flow.close()


def setup(ctx: Any, ns_call: NsCall) -> None:
    """pasta: the spliced UDP path, for ``-u``/``-U`` datagrams between loopbacks.

    Call after ``fwd.setup``; ``fwd.close`` closes it.
    """
    splice = UdpSplice(ctx.loop, ctx.flows, ns_call, ns_targets=splice_targets(ctx.conf, ctx.net))
    ctx.fwd.udp_splice = splice
    ctx.fwd.handlers.udp_splice = splice.forward
