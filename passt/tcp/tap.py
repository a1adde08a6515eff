"""TCP over the tap: the driver that gives ``tcp_core`` its sockets, timers and frames.

Theory of operation
-------------------
Each TCP connection of the guest (or namespace) is carried by one ordinary
host socket: for a SYN from the guest we ``connect()`` a non-blocking socket
to the destination (outbound), for a connection accepted on a forwarded port
(``flow/fwd.py`` calls ``on_accept``) we open the connection toward the guest
(inbound).  Every decision about the connection (``passt.tcp.core``) is made
without I/O; this module turns the core's actions into system calls and
frames, and the socket's events, the guest's segments and the passing of
time into the core's events.  Nothing here checks whether we are passt or
pasta: frames go through ``ctx.tap.send_frames``, whatever carries them.

Flows
~~~~~
A ``TcpFlow`` is registered in ``ctx.flows`` under ``("tcp", guest address,
guest port, remote address, remote port)``, the addresses being those the
guest sees (raw bytes), so a frame finds its flow with one dictionary
lookup.  Addresses as the guest sees them are not always those of the
socket: ``nat.AddressMapping`` translates them (the gateway address, or
``--map-host-loopback``, is the host's loopback; ``--map-guest-addr`` is the
host's own address; inbound peers the guest could not answer appear to come
from the gateway).  Inbound connections keep the peer's port; the forwarding
spec's port mapping gives the guest's port.  The guest's own address is
the host's: a guest that owns it never sends us a connection to it (its
kernel keeps it local), and a guest that doesn't (configured otherwise)
reaches the host itself there, which is what that address names; the
host's loopback stays reachable only through the gateway mapping.
Multicast, broadcast and unspecified destinations are refused with an RST.

Every way out of a connection ends in ``_free``: the socket is unregistered
and closed (with ``SO_LINGER`` zero for a reset), its timer forgotten, its
flow-table entry removed.  A flow owns exactly one descriptor and no timer
descriptor (timers live in the event loop), so existing connections never
need a new descriptor: under descriptor pressure (``EMFILE``) or at the
connection limit only new connections are refused, with an RST.

Data from the socket to the guest
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Sockets are registered edge-triggered (``EPOLLIN | EPOLLRDHUP | EPOLLET``):
an edge means "something new", and we read until the kernel or the guest's
window says stop, remembering in the core that data may be left
(``sock_pending``) when it is the window; the guest's next ACK that opens it
makes the core ask for a read (``PEEK``).  Level-triggered ``EPOLLHUP``
would spin once both sides have shut down while the guest has not yet
acknowledged everything; edge-triggering avoids that too.

Reads are ``recv_into(..., MSG_PEEK)`` with ``SO_PEEK_OFF``, so that the
kernel returns only the bytes after those already sent (the offset moves
back when acknowledged bytes are discarded, and to zero on retransmission).
Each read lands directly after the headers in one of a pool of frame
buffers, at most the guest's MSS (64 KiB with the default MTU) at a time:
the payload is copied once, by the kernel, and is still in cache when its
checksum is summed.  The headers come from the connection's
``TcpFrameTemplate`` (patched per frame, checksums from pre-summed
constants plus one NumPy sum of the payload), and all frames of one event
go out in one ``send_frames`` call, after which the buffers are free again
(a backend copies whatever it has to keep).  Acknowledged bytes are
discarded with ``MSG_TRUNC``, which frees them in the kernel without
copying: the scratch buffer it names is an anonymous mapping that is never
touched.  A trickle of acknowledged bytes (the answers of a request/response
exchange: a byte or a few hundred each) is left in the buffer until
``DISCARD_LATER`` bytes or ``DISCARD_LATER_ACKS`` acknowledgements have
gathered, which saves a system call per exchange: peeks go on from the peek
offset, which the bytes before it don't move.  The count matters as much as
the bytes: each answer is a buffer of its own in the kernel's receive queue,
and a peek walks the queue up to its offset, so with 16 KiB of 1-byte
answers left in it (thousands of buffers) a peek cost 4 µs more than the
discard it saved (bench/inproc_rr.py: 28.9 against 23.9 µs per exchange).
They are discarded before anything that counts from the head of the buffer
(rewinding the peek offset to retransmit) and before a clean close (closing
with unread data would reset the connection).

Kernels without ``SO_PEEK_OFF`` for TCP (before 6.9: Debian 12, RHEL 9,
Ubuntu 22.04 and 24.04, so the common case) peek from the first
unacknowledged byte every time: one ``recvmsg`` whose first buffer takes
the bytes already in flight (a scratch mapping, ``skip_view``, whose content
nobody reads) and whose next buffers are the frame buffers, past the
headers, as above.  Every peek copies what is in flight once more, which is
the price of these kernels (upstream pays it too), so a peek takes up to
``FALLBACK_FRAMES`` frames at once, and the core keeps at most as many full
segments in flight and peeks again only once they are down to half
(``TcpConn.inflight_segments``): each peek brings at least as many new bytes
as it copies again.  ``PASST_NO_PEEK_OFF=1`` in the environment takes this path on any
kernel, so that every machine tests it.  Acknowledged bytes are discarded
at once on this path: the peek counts from the head of the buffer.

Data from the guest to the socket
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The dispatcher hands us runs of consecutive frames of one flow
(``from_tap_batch``); their payloads are written with ``send()`` and the
whole run is acknowledged once, as far as the kernel took it, with the
socket's free send space (``SO_SNDBUF`` minus ``SIOCOUTQ``) as our window.
That query (a ``getsockopt`` and an ``ioctl``) is made only near the edge:
while the last figure less what the socket took since stays above half the
send buffer, the core advertises that estimate, which can only be short of
the truth.  When the window gets small we watch the socket for ``EPOLLOUT``
(polling it also marks the socket as short of space, which lets the kernel
grow its send buffer) and send a window update when room comes back.  Every
ACK that leaves the window small polls again, even while we already watch:
the edge comes only if the socket is marked short of space, and a write the
socket took whole (held data, after the previous edge) does not mark it.
Without that a sender with a window smaller than its segment waited for its
zero-window probe, 200 ms at a time (namespace -> host fell to a third).
Sockets have ``TCP_NODELAY``: the guest's own TCP already coalesces small
writes.

Buffer sizes
~~~~~~~~~~~~
The kernel sizes a socket's send buffer for its congestion window, and on a
path with a short round trip (a local peer) that stays small, some tens of
KiB: plenty for the kernel, but our window to the guest is that free space,
and a guest (a slow TCG one above all) needs a window worth its own round
trip through us to keep sending.  As upstream does, when the system allows
large buffers (``net.core.wmem_max``/``rmem_max`` of at least
``BIG_BUFFER``, read once at start-up), every connection socket asks for
the largest send and receive buffers it may have: the guest then sees a
window of megabytes, and the receive buffer, which is our retransmission
queue toward the guest, can hold as much as the guest's window.  With the
common smaller limits the kernel's own autotuning does better than a fixed
size, so we leave it alone.

A little new data (a request: ``TcpConn.ack_can_wait``) is acknowledged
within ``ACK_DELAY`` rather than at once: the answer usually comes first and
its data frame carries the ACK, which saves a tap write (and the guest's
processing of a bare ACK) per exchange.  Bulk data, a window near its edge
and held data are acknowledged at the end of their batch, as before.  The
waiting flows share one loop timer (``TcpState.ack_waiting``): a flow joins
the list, the timer is armed only if it isn't, and when it fires every flow
still waiting gets its ACK, so an exchange costs no timer of its own.

Held data, across connections
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
What the guest sent and a full socket refused is held in the core, within
one ``HoldBudget`` for all flows (``tcp_core.HOLD_BUDGET``, 32 MiB): many
stalled connections make windows shrink and the guest retransmit later,
not this process grow.  With 300 connections whose remote never reads,
pasta's RSS peaks under 110 MiB (from 62; it grew to 356 MiB before the
budget) and is back within a few MiB once they close
(``test/e2e/test_tcp_memory.py``).

Timers
~~~~~~
The core asks for one timer per connection (``TIMER``).  Re-arming happens
on most ACKs, so it is lazy: the flow keeps its deadline, and a loop timer
is scheduled only when the deadline moves earlier than the one pending;
a loop timer that fires early just schedules the next.

Faults
~~~~~~
A bug in the handling of one flow (an exception from its socket event, its
timer or one of its segments) resets that flow alone (``_fault``: RST to
both sides, ``tcp.fault`` counted, the traceback logged at debug level);
the loop and every other flow go on.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import mmap
import os
import random
import resource
import socket
import struct
import traceback
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from passt import buffers, log
from passt.checksum import Buffer
from passt.flow.nat import AddressMapping, outbound_addresses, packed
from passt.flow.table import FlowTableFull, SockAddr, TapKey
from passt.host.hostnet import read_sysctl_int
from passt.loop import ERR, ET, HUP, IN, OUT, RDHUP
from passt.packet import ACK, PSH, RST, SYN, Packet, ParseError, TcpFrameTemplate, parse_tcp
from passt.tcp.core import (
    CLOSED,
    WINDOW_DEFAULT,
    Action,
    ArmTimer,
    Clamp,
    Close,
    Discard,
    HoldBudget,
    Peek,
    Rewind,
    SendData,
    ShutWr,
    SockSend,
    TcpConn,
    ToGuest,
    WantOut,
    rst_for_stray,
)
from passt.tcp.splice import reset_and_close

if TYPE_CHECKING:
    from passt.context import Ctx
    from passt.loop import EventLoop, Timer

SO_PEEK_OFF = 42
SIOCOUTQ = 0x5411
TCP_WINDOW_CLAMP = 10
MTU_DEFAULT = 65520
FRAMES_PER_READ = 16  # frames peeked per read round
FALLBACK_FRAMES = 32  # ... without SO_PEEK_OFF, and full segments in flight, at most
FRAME_MAX = 14 + 40 + 20 + 65535  # Ethernet, IPv6, TCP headers and the largest payload
NO_PEEK_OFF_ENV = "PASST_NO_PEEK_OFF"  # "1": behave as on a kernel without SO_PEEK_OFF
DISCARD_CHUNK = 256 << 20  # virtual size of the never-touched MSG_TRUNC target
DISCARD_LATER = 16 << 10  # acknowledged bytes left in the receive buffer, at most
DISCARD_LATER_ACKS = 32  # ... and acknowledgements of them (each left a buffer a peek walks)
BIG_BUFFER = 4 << 20  # net.core.[wr]mem_max from which sockets get the largest buffers
_WMEM_MAX_FILE = "/proc/sys/net/core/wmem_max"
_RMEM_MAX_FILE = "/proc/sys/net/core/rmem_max"
FD_RESERVE = 64  # descriptors left for listeners, the tap, pipes...
READ_ROUNDS = 16  # reads per socket event, to stay fair to other flows
ACK_DELAY = 0.002  # seconds a small request's ACK waits for the answer to carry it
SOCK_EVENTS = IN | RDHUP | ET
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_TRUNC = socket.MSG_TRUNC | socket.MSG_DONTWAIT
_INT = struct.Struct("i")
_INT_MAX = 0x7FFFFFFF
_UNSPECIFIED4 = bytes(4)
_UNSPECIFIED6 = bytes(16)
_BROADCAST4 = b"\xff" * 4


# ---------------------------------------------------------------- state


class TcpState:
    """``ctx.tcp``: what all TCP flows share (buffers, addresses, limits)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        net = ctx.net  # a hostnet.NetInfo
        conf = ctx.conf  # read leniently: tests give only what they exercise
        self.nat = AddressMapping.build(net, conf)
        self.mtu = net.mtu or MTU_DEFAULT  # 0: none advertised, the tap's default
        self.our_mac = net.mac
        self.guest4 = packed(net.addr4)
        self.guest6 = packed(net.addr6)
        self.ifname6 = net.ifname6 or ""
        bind = outbound_addresses(getattr(conf, "outbound", None))
        self.bind4, self.bind6 = bind.get(4), bind.get(16)
        self.bind_if4 = getattr(conf, "outbound_if4", None) or None
        self.bind_if6 = getattr(conf, "outbound_if6", None) or None
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_conns = max(1, min(ctx.flows.max_flows, nofile - FD_RESERVE))
        self.conns = 0
        self.peek_off = _peek_off_supported()
        self.frames_per_read = FRAMES_PER_READ if self.peek_off else FALLBACK_FRAMES
        self.inflight_segments = 0 if self.peek_off else FALLBACK_FRAMES
        self.big_sndbuf = read_sysctl_int(_WMEM_MAX_FILE) >= BIG_BUFFER
        self.big_rcvbuf = read_sysctl_int(_RMEM_MAX_FILE) >= BIG_BUFFER
        skip = FALLBACK_FRAMES * (self.mtu - 40)  # what is in flight, at most
        self.skip_view = None if self.peek_off else memoryview(mmap.mmap(-1, skip))
        self.hold_budget = HoldBudget()
        self.discard_map = mmap.mmap(-1, DISCARD_CHUNK)
        pool = 2 * FRAMES_PER_READ if self.peek_off else FALLBACK_FRAMES  # one peek's at least
        self.pool = buffers.pool(pool, FRAME_MAX)
        self.pool_next = 0  # pool buffers from here on are free until the next send
        self.chunks: list[tuple[memoryview, int]] = []  # peeked, waiting for DATA
        self.out: list[Buffer] = []  # frames of the event being handled
        self.ack_waiting: list[TcpFlow] = []  # delayed ACKs (see _flush_ack)
        self.ack_timer: Timer | None = None
        self.rng = random.SystemRandom()

    def mss_limit(self, v6: bool) -> int:
        """Largest TCP payload in one frame: MTU minus IP and TCP headers."""
        return self.mtu - (60 if v6 else 40)


def _peek_off_supported() -> bool:
    """Whether TCP sockets take SO_PEEK_OFF (Linux 6.9 and later), unless the
    environment asks for the path of kernels without it."""
    if os.environ.get(NO_PEEK_OFF_ENV) == "1":
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        except OSError:
            return False
    return True


def init(ctx: Ctx) -> TcpState:
    """Set up ``ctx.tcp`` and take inbound connections from ``ctx.fwd``, if any."""
    state = TcpState(ctx)
    ctx.tcp = state
    fwd = ctx.fwd
    if fwd is not None:
        fwd.handlers.tcp_tap = lambda sock, peer, local, port: on_accept(
            ctx, sock, peer, local, port
        )
    return state


def close(ctx: Ctx) -> None:
    """Reset every TCP flow (shutting down)."""
    for key, flow in ctx.flows.items():
        if key[0] == "tcp":
            _run(flow, flow.core.abort())
    _send_out(ctx)


# ---------------------------------------------------------------- flows


class TcpFlow:
    """One connection: its core, socket, frame template and timer."""

    __slots__ = (
        "ctx", "core", "sock", "fd", "key", "tpl", "v6", "epoll_mask", "deadline",
        "timer", "timer_at", "rdhup", "connecting", "freed", "hlen", "ack_waits",
        "undiscarded", "undiscarded_acks",
    )  # fmt: skip

    def __init__(self, ctx: Ctx, core: TcpConn, sock: socket.socket, key: TapKey) -> None:
        self.ctx = ctx
        self.core = core
        self.sock = sock
        self.fd = sock.fileno()
        self.key = key
        self.v6 = len(key[1]) == 16
        self.hlen = 14 + (40 if self.v6 else 20) + 20  # headers of a data frame
        self.tpl = _template(ctx, key)
        self.epoll_mask = 0
        self.deadline: float | None = None
        self.timer: Timer | None = None
        self.timer_at = 0.0
        self.ack_waits = False  # on TcpState.ack_waiting (see _flush_ack)
        self.undiscarded = 0  # acknowledged bytes still in the receive buffer
        self.undiscarded_acks = 0  # ... from this many acknowledgements
        self.rdhup = False  # the peer's FIN may be queued: read until EOF or EAGAIN
        self.connecting = False
        self.freed = False

    def __repr__(self) -> str:
        _, gaddr, gport, raddr, rport = self.key
        family = socket.AF_INET6 if self.v6 else socket.AF_INET
        return (
            f"<tcp {socket.inet_ntop(family, gaddr)}:{gport} <-> "
            f"{socket.inet_ntop(family, raddr)}:{rport} {self.core.state_name()}>"
        )


def _template(ctx: Ctx, key: TapKey) -> TcpFrameTemplate:
    """Headers of frames to the guest: from the remote address to the guest's."""
    _, guest_addr, guest_port, remote_addr, remote_port = key
    state: TcpState = ctx.tcp
    return TcpFrameTemplate(
        ctx.guest_mac, state.our_mac, remote_addr, guest_addr, remote_port, guest_port,
        partial_csum=ctx.partial_csum,
    )


def guest_mac_changed(ctx: Ctx) -> None:
    """The guest's MAC changed: rebuild every flow's frame headers."""
    for key, flow in ctx.flows.items():
        if key[0] == "tcp":
            flow.tpl = _template(ctx, flow.key)


def _register(ctx: Ctx, flow: TcpFlow, mask: int) -> bool:
    """Add the flow to the table and its socket to the loop; False if refused."""
    state: TcpState = ctx.tcp
    if state.conns >= state.max_conns:
        ctx.stats["tcp.refused_limit"] += 1
        return False
    try:
        ctx.flows.add(flow.key, flow)
    except (FlowTableFull, KeyError):
        ctx.stats["tcp.refused_table"] += 1
        return False
    state.conns += 1
    flow.epoll_mask = mask
    assert ctx.loop is not None
    ctx.loop.add(flow.fd, mask, partial(_on_sock_event, flow), partial(_fault, flow))
    return True


def _detach(flow: TcpFlow) -> None:
    """Out of the loop and the flow table, its timer forgotten; the socket stays open."""
    ctx = flow.ctx
    flow.freed = True
    assert ctx.loop is not None
    ctx.loop.remove(flow.fd)
    if flow.timer is not None:
        flow.timer.cancel()
        flow.timer = None
    flow.ack_waits = False
    flow.deadline = None
    if ctx.flows.remove(flow.key) is not None:
        ctx.tcp.conns -= 1


def _free(flow: TcpFlow, rst: bool) -> None:
    """Forget a connection entirely: socket, loop registration, timer, flow entry."""
    _detach(flow)
    sock = flow.sock
    if rst:
        reset_and_close(sock)
    else:
        _discard_acknowledged(flow)  # unread data would turn our FIN into a reset
        sock.close()
    flow.ctx.stats["tcp.closed_rst" if rst else "tcp.closed"] += 1
    if log.DEBUG:
        log.debug("TCP: %r closed%s", flow, " (reset)" if rst else "")


def forget(flow: TcpFlow) -> socket.socket:
    """A connection migrated away: drop it without a word to the guest or the
    socket's peer; the socket (in repair mode) is the caller's."""
    _detach(flow)
    flow.ctx.stats["tcp.migrated_out"] += 1
    return flow.sock


def adopt(ctx: Ctx, core: TcpConn, sock: socket.socket, key: TapKey) -> TcpFlow | None:
    """A connection migrated to us, its socket restored (and given ``prepare_socket``'s
    options before its queues were filled): carry on (None if refused)."""
    state: TcpState = ctx.tcp
    core.inflight_segments = state.inflight_segments
    core.budget = state.hold_budget
    flow = TcpFlow(ctx, core, sock, key)
    if not _register(ctx, flow, SOCK_EVENTS):
        return None
    ctx.stats["tcp.migrated_in"] += 1
    if log.DEBUG:
        log.debug("TCP: %r migrated in", flow)
    _run(flow, core.resume())
    _send_out(ctx)
    return flow


def flush_discards(flow: TcpFlow) -> None:
    """Discard what the guest acknowledged, so the receive queue starts at ``snd_una``."""
    _discard_acknowledged(flow)


def _fault(flow: TcpFlow, error: Exception) -> None:
    """Handling this flow raised (a bug): reset it, and it alone, and go on."""
    ctx = flow.ctx
    ctx.stats["tcp.fault"] += 1
    log.debug("TCP: %r reset after a fault: %s", flow, "".join(traceback.format_exception(error)))
    if flow.freed:
        return
    try:
        _run(flow, flow.core.abort())
    except Exception:  # the core itself is confused: reset by hand
        core = flow.core
        ctx.tcp.out.append(flow.tpl.build(core.snd_nxt, core.rcv_nxt, RST | ACK, 0))
    if not flow.freed:
        _free(flow, rst=True)
    _send_out(ctx)


# ---------------------------------------------------------------- actions


def _run(flow: TcpFlow, acts: list[Action]) -> None:
    """Carry out the core's actions, in order."""
    for act in acts:
        if flow.freed:
            return  # closed by a nested action: nothing left to act on
        match act:
            case ToGuest(flags, seq, ack, window, options):
                flow.ctx.tcp.out.append(flow.tpl.build(seq, ack, flags, window, b"", options))
            case SendData(seq, length):
                _frames_from_chunks(flow, seq, length)
            case SockSend(payload):
                _sock_send(flow, payload)
            case Discard(n):
                _acknowledged(flow, n)
            case ArmTimer(seconds):
                _set_timer(flow, seconds)
            case Peek():
                _read_sock(flow)
            case Clamp(window):
                _setsockopt(flow, socket.IPPROTO_TCP, TCP_WINDOW_CLAMP, min(window, 1 << 30))
            case Rewind():
                flow.ctx.stats["tcp.retransmit"] += 1
                if flow.ctx.tcp.peek_off:
                    _discard_acknowledged(flow)  # offset 0 must be the first unacknowledged byte
                    _setsockopt(flow, socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            case WantOut(on):
                _watch_out(flow, on)
            case ShutWr():
                try:
                    flow.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            case Close(rst):
                _free(flow, rst)


def _send_out(ctx: Ctx) -> None:
    """Send the frames the current event produced, in one call; the frame
    buffers are free again once it returns (a backend copies what it keeps)."""
    state: TcpState = ctx.tcp
    out = state.out
    state.pool_next = 0
    if not out:
        return
    state.out = []
    tap = ctx.tap
    if tap is None:
        ctx.stats["drop.tcp_no_tap"] += len(out)
        return
    tap.send_frames(out)


def _setsockopt(flow: TcpFlow, level: int, option: int, value: int) -> None:
    try:
        flow.sock.setsockopt(level, option, value)
    except OSError:
        pass


def _watch_out(flow: TcpFlow, on: bool) -> None:
    """Watch for writability: modifying the registration polls the socket again,
    which makes the kernel report room when there is some now, or as soon as
    there is (it marks the socket as short of space)."""
    mask = SOCK_EVENTS | OUT if on else SOCK_EVENTS
    if flow.connecting or (not on and mask == flow.epoll_mask):
        return
    flow.epoll_mask = mask
    assert flow.ctx.loop is not None
    flow.ctx.loop.modify(flow.fd, mask)


def _send_space(sock: socket.socket) -> tuple[int, int]:
    """(free room, size) of the socket's send buffer: the free room is our window
    to the guest."""
    try:
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        queued = _INT.unpack(fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0, 0
    space = sndbuf - queued
    return (space if space > 0 else 0), sndbuf


# ---------------------------------------------------------------- socket side


def _read_sock(flow: TcpFlow) -> None:
    """Peek new data (within the guest's window) and send it; detect end of file."""
    core = flow.core
    state: TcpState = flow.ctx.tcp
    peek = _peek_frames if state.peek_off else _peek_frames_from_start
    for _ in range(READ_ROUNDS):
        if core.events & CLOSED:
            return
        budget = core.on_sock_readable()
        if not budget:
            _run(flow, core.on_window_full())
            return
        if state.pool_next + state.frames_per_read > len(state.pool):
            _send_out(flow.ctx)
        try:
            got, short = peek(flow, budget)
        except BlockingIOError:
            core.on_sock_drained()
            return
        except OSError:
            _run(flow, core.on_sock_error())
            return
        if not got:  # end of file, or (without SO_PEEK_OFF) nothing new
            if short or flow.rdhup:
                _run(flow, core.on_sock_eof())
            else:
                core.on_sock_drained()
            return
        _run(flow, core.on_sock_data(got))
        if short and not flow.rdhup:
            core.on_sock_drained()
            return


def _peek_frames(flow: TcpFlow, budget: int) -> tuple[int, bool]:
    """Peek up to ``budget`` new bytes straight into frame buffers, one frame per
    read (SO_PEEK_OFF moves on by itself); returns (bytes, whether a read came
    up short).  No bytes and a short read: end of file."""
    state: TcpState = flow.ctx.tcp
    recv_into = flow.sock.recv_into
    chunks = state.chunks
    chunks.clear()
    pool = state.pool
    hlen = flow.hlen
    mss = flow.core.mss
    total = 0
    for _ in range(FRAMES_PER_READ):
        want = min(mss, budget - total)
        if want <= 0:
            break
        buf = pool[state.pool_next]
        try:
            got = recv_into(buf[hlen:], want, _PEEK)
        except BlockingIOError:
            if total:
                return total, True
            raise
        if not got:
            return total, True
        state.pool_next += 1
        chunks.append((buf, got))
        total += got
        if got < want:
            return total, True
    return total, False


def _peek_frames_from_start(flow: TcpFlow, budget: int) -> tuple[int, bool]:
    """The same without SO_PEEK_OFF: one peek from the first unacknowledged byte,
    what is in flight into the skip map and the new bytes into frame buffers
    (``TcpConn.inflight_segments`` keeps them within the map); returns (new bytes,
    whether the read came up short).  No bytes at all: end of file."""
    core = flow.core
    state: TcpState = flow.ctx.tcp
    skip_view = state.skip_view
    assert skip_view is not None
    in_flight = (core.snd_nxt - core.snd_una) & 0xFFFFFFFF
    buffers: list[Buffer] = [skip_view[:in_flight]] if in_flight else []
    pool = state.pool
    hlen = flow.hlen
    mss = core.mss
    first = state.pool_next
    wanted = 0
    for buf in pool[first:first + FALLBACK_FRAMES]:
        want = min(mss, budget - wanted)
        if want <= 0:
            break
        buffers.append(buf[hlen:hlen + want])
        wanted += want
    peeked = flow.sock.recvmsg_into(buffers, 0, _PEEK)[0]
    if not peeked:
        return 0, True
    got = peeked - in_flight
    if got <= 0:  # nothing new: drained, or the end of file is next
        return 0, flow.rdhup
    chunks = state.chunks
    chunks.clear()
    left = got
    for buf in pool[first:first + FALLBACK_FRAMES]:
        size = min(mss, left)
        chunks.append((buf, size))
        left -= size
        if not left:
            break
    state.pool_next = first + len(chunks)
    return got, got < wanted


def _frames_from_chunks(flow: TcpFlow, seq: int, length: int) -> None:
    """Headers for the frame buffers just peeked: ``length`` bytes from ``seq``."""
    core = flow.core
    state: TcpState = flow.ctx.tcp
    write_headers = flow.tpl.write_headers
    out = state.out
    hlen = flow.hlen
    ack = core.rcv_nxt
    window = core.window_field()
    chunks = state.chunks
    last = len(chunks) - 1
    for i, (buf, size) in enumerate(chunks):
        frame_end = hlen + size
        write_headers(buf, seq, ack, ACK | PSH if i == last else ACK, window, buf[hlen:frame_end])
        out.append(buf[:frame_end])
        seq = (seq + size) & 0xFFFFFFFF
    chunks.clear()
    flow.ack_waits = False  # the data carries the ACK


def _sock_send(flow: TcpFlow, payload: Buffer) -> None:
    core = flow.core
    try:
        sent = flow.sock.send(payload, _SEND_FLAGS)
    except BlockingIOError:
        sent = 0
    except OSError:
        _run(flow, core.on_sock_error())
        return
    if sent < len(payload):
        flow.ctx.stats["tcp.partial_send"] += 1
    acts = core.on_sock_accepted(sent, len(payload))
    if acts:
        _run(flow, acts)


def _acknowledged(flow: TcpFlow, length: int) -> None:
    """The guest acknowledged ``length`` more bytes: discard them now, or with the
    next ones if they are a trickle (see "Data from the socket to the guest")."""
    flow.undiscarded += length
    flow.undiscarded_acks += 1
    if (
        flow.undiscarded >= DISCARD_LATER or flow.undiscarded_acks >= DISCARD_LATER_ACKS
        or not flow.ctx.tcp.peek_off
    ):  # fmt: skip
        _discard_acknowledged(flow)


def _discard_acknowledged(flow: TcpFlow) -> None:
    if flow.undiscarded:
        _discard(flow, flow.undiscarded)
        flow.undiscarded = flow.undiscarded_acks = 0


def _discard(flow: TcpFlow, length: int) -> None:
    """Drop acknowledged bytes from the receive buffer without copying them."""
    state: TcpState = flow.ctx.tcp
    sock = flow.sock
    target = state.discard_map
    while length > 0:
        chunk = min(length, DISCARD_CHUNK)
        try:
            got = sock.recv_into(target, chunk, _TRUNC)
        except OSError:
            return
        if got <= 0:
            return
        length -= got


def _on_sock_event(flow: TcpFlow, events: int) -> None:
    core = flow.core
    if core.events & CLOSED:
        return
    if flow.connecting:
        _connect_done(flow, events)
    elif events & ERR and flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        _run(flow, core.on_sock_error())
    else:
        if events & (RDHUP | HUP):
            flow.rdhup = True
        if events & (IN | RDHUP | HUP):
            _read_sock(flow)
        if events & OUT and not core.events & CLOSED:
            _run(flow, core.on_sock_writable(_send_space(flow.sock)[0]))
            _flush_ack(flow)
    _send_out(flow.ctx)


def _connect_done(flow: TcpFlow, events: int) -> None:
    error = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error or events & (ERR | HUP) and not events & OUT:
        flow.ctx.stats["tcp.connect_failed"] += 1
        _run(flow, flow.core.on_connect_failed())
        return
    if not events & OUT:
        return
    flow.connecting = False
    flow.epoll_mask = SOCK_EVENTS
    assert flow.ctx.loop is not None
    flow.ctx.loop.modify(flow.fd, SOCK_EVENTS)
    _run(flow, flow.core.on_connected())
    if events & (IN | RDHUP):
        flow.rdhup = bool(events & RDHUP)


# ---------------------------------------------------------------- timers


def _set_timer(flow: TcpFlow, seconds: float | None) -> None:
    """(Re)arm the flow's timer lazily (see "Timers" above)."""
    if seconds is None:
        flow.deadline = None
        return
    loop: EventLoop = flow.ctx.loop  # type: ignore[assignment]
    deadline = loop.now() + seconds
    flow.deadline = deadline
    if flow.timer is None or flow.timer_at > deadline:
        if flow.timer is not None:
            flow.timer.cancel()
        flow.timer_at = deadline
        flow.timer = loop.call_at(deadline, partial(_on_timer, flow), partial(_fault, flow))


def _on_timer(flow: TcpFlow) -> None:
    flow.timer = None
    deadline = flow.deadline
    if deadline is None or flow.core.events & CLOSED:
        return
    loop: EventLoop = flow.ctx.loop  # type: ignore[assignment]
    if loop.now() < deadline:
        flow.timer_at = deadline
        flow.timer = loop.call_at(deadline, partial(_on_timer, flow), partial(_fault, flow))
        return
    flow.deadline = None
    _run(flow, flow.core.on_timer())
    _send_out(flow.ctx)


# ---------------------------------------------------------------- guest side


def from_tap(ctx: Ctx, pkt: Packet) -> None:
    """One TCP frame from the guest."""
    from_tap_batch(ctx, (pkt,))


def from_tap_batch(ctx: Ctx, pkts: Sequence[Packet]) -> None:
    """Consecutive frames of one flow from the guest; one ACK for the run."""
    flow: TcpFlow | None = None
    key: TapKey | None = None
    for pkt in pkts:
        try:
            seg = parse_tcp(pkt.l4)
        except ParseError as bad:
            ctx.stats["drop." + bad.reason] += 1
            continue
        # IP frames only come here: their addresses are set.
        k = cast(TapKey, ("tcp", pkt.src, seg.sport, pkt.dst, seg.dport))
        if k != key:
            if flow is not None:
                _flush_ack(flow)
            key = k
            flow = ctx.flows.get(k)
        if flow is None or flow.core.events & CLOSED:
            flow = _new_from_guest(ctx, pkt, seg, k)
            continue
        try:
            _run(flow, flow.core.on_segment(seg))
        except Exception as e:
            _fault(flow, e)
    if flow is not None:
        _flush_ack(flow)
    _send_out(ctx)


def _flush_ack(flow: TcpFlow) -> None:
    """Acknowledge what the socket took, now or (a small request) after
    ``ACK_DELAY`` unless data to the guest carries the ACK first; the socket's
    free space is queried only when the core's estimate is not safe enough
    (``TcpConn.space_query_needed``)."""
    try:
        _flush_ack_now_or_later(flow)
    except Exception as e:
        _fault(flow, e)


def _flush_ack_now_or_later(flow: TcpFlow) -> None:
    core = flow.core
    if not core.ack_due or core.events & CLOSED:
        return
    if core.space_query_needed():
        core.note_send_space(*_send_space(flow.sock))
    if core.ack_can_wait():
        if not flow.ack_waits:
            _wait_for_ack_timer(flow)
        return
    flow.ack_waits = False
    _run(flow, core.flush_ack())


def _wait_for_ack_timer(flow: TcpFlow) -> None:
    """Put the flow on the delayed-ACK list, arming the shared timer if needed."""
    ctx = flow.ctx
    state: TcpState = ctx.tcp
    flow.ack_waits = True
    state.ack_waiting.append(flow)
    if state.ack_timer is None:
        loop: EventLoop = ctx.loop  # type: ignore[assignment]
        state.ack_timer = loop.call_later(ACK_DELAY, partial(_on_ack_timer, ctx))


def _on_ack_timer(ctx: Ctx) -> None:
    """The shared delayed-ACK timer: acknowledge for every flow still waiting."""
    state: TcpState = ctx.tcp
    state.ack_timer = None
    waiting, state.ack_waiting = state.ack_waiting, []
    for flow in waiting:
        if not flow.ack_waits:
            continue  # data carried its ACK, or the flow is gone
        flow.ack_waits = False
        core = flow.core
        if core.ack_due and not core.events & CLOSED:
            try:
                _run(flow, core.flush_ack())
            except Exception as e:
                _fault(flow, e)
    _send_out(ctx)


def _new_from_guest(ctx: Ctx, pkt: Packet, seg: Any, key: TapKey) -> TcpFlow | None:
    """A segment of no known connection: a SYN opens one, anything else gets an RST."""
    if seg.flags & (SYN | ACK) != SYN:
        _reply_rst(ctx, pkt, seg)
        return None
    flow = _connect(ctx, pkt, seg, key)
    if flow is None:
        _reply_rst(ctx, pkt, seg)
    return flow


def _reply_rst(ctx: Ctx, pkt: Packet, seg: Any) -> None:
    answer = rst_for_stray(seg)
    if answer is None or pkt.src is None or pkt.dst is None:
        return
    ctx.stats["tcp.rst_stray"] += 1
    flags, seq, ack = answer
    state: TcpState = ctx.tcp
    tpl = TcpFrameTemplate(ctx.guest_mac, state.our_mac, pkt.dst, pkt.src, seg.dport, seg.sport,
                           partial_csum=ctx.partial_csum)
    state.out.append(tpl.build(seq, ack, flags, 0))


def _connect(ctx: Ctx, pkt: Packet, syn: Any, key: TapKey) -> TcpFlow | None:
    """Outbound: a socket connecting to where the guest's SYN goes; None if refused."""
    state: TcpState = ctx.tcp
    dst = pkt.dst
    assert dst is not None  # the dispatcher routes only IP frames here
    target = _outbound_target(state, dst)
    if target is None or syn.dport == 0:
        ctx.stats["tcp.refused_addr"] += 1
        return None
    family = socket.AF_INET6 if len(dst) == 16 else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    except OSError as e:
        ctx.stats["tcp.refused_socket"] += 1
        log.debug("TCP: no socket for new connection: %s", e.strerror)
        return None
    isn = state.rng.getrandbits(32)
    core, acts = TcpConn.outbound(
        syn, isn, state.mss_limit(family == socket.AF_INET6), state.hold_budget
    )
    core.inflight_segments = state.inflight_segments
    flow = TcpFlow(ctx, core, sock, key)
    try:
        prepare_socket(state, sock, family, outbound=True)
        address: SockAddr = (target, syn.dport)
        if family == socket.AF_INET6:
            address = (target, syn.dport, 0, _scope_id(state, target))
        error = sock.connect_ex(address)
        if error == errno.EINPROGRESS and _connected(sock):
            error = 0
    except OSError as e:
        error = e.errno or 1
    if error not in (0, errno.EINPROGRESS):
        sock.close()
        ctx.stats["tcp.connect_failed"] += 1
        return None
    flow.connecting = error != 0
    if not _register(ctx, flow, SOCK_EVENTS | OUT if flow.connecting else SOCK_EVENTS):
        sock.close()
        return None
    ctx.stats["tcp.conns_out"] += 1
    if len(dst) == 16:
        state.guest6 = pkt.src  # the address the guest uses (SLAAC picks its own)
    if log.DEBUG:
        log.debug("TCP: %r connecting", flow)
    _run(flow, acts)
    if not flow.connecting:
        _run(flow, core.on_connected())
    return flow


def _connected(sock: socket.socket) -> bool:
    """Whether a connect() that said EINPROGRESS completed already: toward a
    local peer (loopback, a veth) the kernel often runs the whole handshake
    before the call returns, and then the SYN-ACK to the guest need not wait
    for a loop turn and an ``EPOLLOUT``."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _outbound_target(state: TcpState, dst: bytes) -> str | None:
    """Where a connection to ``dst`` (as the guest sees it) really goes, or None."""
    v6 = len(dst) == 16
    dst = state.nat.outbound(dst)
    if dst[0] == 0xFF if v6 else 224 <= dst[0] <= 239 or dst == _BROADCAST4:
        return None  # multicast or (IPv4) broadcast
    if dst == (_UNSPECIFIED6 if v6 else _UNSPECIFIED4):
        return None
    return socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, dst)


def _scope_id(state: TcpState, target: str) -> int:
    if not target.lower().startswith("fe80") or not state.ifname6:
        return 0
    try:
        return socket.if_nametoindex(state.ifname6)
    except OSError:
        return 0


def prepare_socket(state: TcpState, sock: socket.socket, family: int, outbound: bool) -> None:
    """Options every connection socket gets (and outbound binding)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if state.big_sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _INT_MAX)
    if state.big_rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _INT_MAX)
    if state.peek_off:
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    if not outbound:
        return
    ifname = state.bind_if6 if family == socket.AF_INET6 else state.bind_if4
    if ifname:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    bind = state.bind6 if family == socket.AF_INET6 else state.bind4
    if bind:
        sock.bind((bind, 0))


# ---------------------------------------------------------------- inbound


def on_accept(ctx: Ctx, sock: socket.socket, peer: SockAddr, local: SockAddr, target_port: int) -> None:
    """A connection accepted on a forwarded port: open it toward the guest."""
    state: TcpState = ctx.tcp
    v6 = sock.family == socket.AF_INET6
    guest = state.guest6 if v6 else state.guest4
    if guest is None:
        ctx.stats["tcp.refused_family"] += 1
        reset_and_close(sock)
        return
    remote = state.nat.inbound(ipaddress.ip_address(peer[0].split("%")[0]).packed)
    if remote is None:
        ctx.stats["tcp.refused_addr"] += 1
        reset_and_close(sock)
        return
    key = ("tcp", guest, target_port, remote, peer[1])
    try:  # (the socket comes non-blocking: setblocking() is an ioctl seccomp refuses)
        prepare_socket(state, sock, sock.family, outbound=False)
    except OSError:
        reset_and_close(sock)
        return
    window = _send_space(sock)[0] or WINDOW_DEFAULT
    core, acts = TcpConn.inbound(
        state.rng.getrandbits(32), state.mss_limit(v6), window, state.hold_budget
    )
    core.inflight_segments = state.inflight_segments
    flow = TcpFlow(ctx, core, sock, key)
    if not _register(ctx, flow, SOCK_EVENTS):
        reset_and_close(sock)
        return
    ctx.stats["tcp.conns_in"] += 1
    if log.DEBUG:
        log.debug("TCP: %r accepted", flow)
    _run(flow, acts)
    _send_out(ctx)
