"""TCP connections across a migration: dump on the source, restore on the target.

Theory of operation
-------------------
A connection of the guest is two halves: our translation state toward the
guest (``tcp.core.TcpConn``: sequence numbers, windows, scales, MSS) and the
host socket, whose state lives in the kernel.  The first travels as fields
of ``wire.TcpFlowRecord``; the second is dumped with the socket in repair
mode (``TCP_REPAIR``, set by ``passt-repair`` through ``repair.py``) as
upstream does:

*source* (``dump``): only established connections migrate.  Acknowledged
bytes still in the receive queue are discarded first (``flush_discards``),
so that the queue starts at the guest's ``snd_una``, and ``SO_PEEK_OFF`` is
reset; then, in repair mode, ``TCP_INFO`` (state, options, window scales),
``TCP_MAXSEG``, ``TCP_TIMESTAMP``, ``TCP_REPAIR_WINDOW``, and per queue
(``TCP_REPAIR_QUEUE``) its length (``SIOCOUTQ``/``SIOCOUTQNSD``/``SIOCINQ``),
its bytes (``MSG_PEEK``) and the sequence of its end (``TCP_QUEUE_SEQ``),
the sequences being carried as those of the queues' first bytes.  The
socket then leaves the event loop (``tcp.tap.forget``): closed in repair
mode, which sends nothing, with ``--migrate-no-linger``, else kept open
and silent (upstream's default, for a target on another host).

*target* (``restore``): a socket per flow, ``SO_REUSEADDR``, our usual
buffer sizes, into repair mode (all at once), then per flow: send and
receive buffers large enough for the queues (a queue the socket's buffer
can't hold is refused even in repair mode: upstream's target, which does
not enlarge them, fails on a send queue of a few hundred KiB), bind to the source's local address and
port, set the timestamp and both queues' sequences, ``connect()`` (no SYN in
repair mode), refill the receive queue and the sent part of the send queue,
set the options (MSS, window scales, SACK, timestamps), shut down the
sending side silently if our FIN was acknowledged (``FIN_WAIT2``), set the
window parameters, leave repair mode, then send the part never sent
normally and ``shutdown`` if our FIN may not have gone out (``FIN_WAIT1``).
The flow goes into the table with a core rebuilt from the record
(``restored_core``), which acknowledges to the guest and sends again from
``snd_una`` whatever was in flight.  A flow that fails is dropped alone;
its guest side is reset by the guest's next segment.

A connection in the middle of its handshake, and spliced or UDP flows, do
not migrate (upstream's don't either): the guest retries or times out.
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct
from typing import TYPE_CHECKING, Any

from passt import log
from passt.migrate import wire
from passt.migrate.repair import REPAIR_OFF, REPAIR_ON, RepairChannel, RepairError
from passt.tcp import core as tcp_core
from passt.tcp import tap as tcp_tap

if TYPE_CHECKING:
    from passt.context import Ctx

TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS = 20, 21, 22
TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 24, 29
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
SIOCINQ, SIOCOUTQ, SIOCOUTQNSD = 0x541B, 0x5411, 0x894B
TCPOPT_MAXSEG, TCPOPT_WINDOW, TCPOPT_SACK_PERMITTED, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK = 1, 2
TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING = 4, 5, 8, 9, 11
RESTORE_CHUNK_MIN = 1024

_window = struct.Struct("=IIIII")  # struct tcp_repair_window
_u32 = struct.Struct("=I")

# Our core's events and upstream's, for the stream (wire.UPSTREAM_*).
_EVENTS = (
    (tcp_core.ESTABLISHED, wire.UPSTREAM_ESTABLISHED),
    (tcp_core.SOCK_FIN_RCVD, wire.UPSTREAM_SOCK_FIN_RCVD),
    (tcp_core.SOCK_FIN_SENT, wire.UPSTREAM_SOCK_FIN_SENT),
    (tcp_core.TAP_FIN_RCVD, wire.UPSTREAM_TAP_FIN_RCVD),
    (tcp_core.TAP_FIN_SENT, wire.UPSTREAM_TAP_FIN_SENT),
    (tcp_core.TAP_FIN_ACKED, wire.UPSTREAM_TAP_FIN_ACKED),
)


def to_upstream_events(events: int) -> int:
    return sum(theirs for ours, theirs in _EVENTS if events & ours)


def from_upstream_events(events: int) -> int:
    return sum(ours for ours, theirs in _EVENTS if events & theirs)


def migratable(ctx: Ctx) -> list[tcp_tap.TcpFlow]:
    """The flows that migrate: established TCP connections of the guest."""
    return [flow for key, flow in ctx.flows.items()
            if key[0] == "tcp" and isinstance(flow, tcp_tap.TcpFlow)
            and flow.core.events & tcp_core.ESTABLISHED
            and not flow.core.events & tcp_core.CLOSED]


# -- records from our state, and back -----------------------------------------------


def _sockaddr(addr: tuple[Any, ...]) -> tuple[bytes, int]:
    host = addr[0].split("%")[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host), addr[1]


def flow_record(flow: tcp_tap.TcpFlow) -> wire.TcpFlowRecord:
    """The flow and its translation state, as the stream carries them."""
    core = flow.core
    _, guest, guest_port, remote, remote_port = flow.key
    tap = wire.FlowSide(wire.inany(remote), wire.inany(guest), remote_port, guest_port)
    local, local_port = _sockaddr(flow.sock.getsockname())
    peer, peer_port = _sockaddr(flow.sock.getpeername())
    host = wire.FlowSide(wire.inany(local), wire.inany(peer), local_port, peer_port)
    inbound = bool(core.events & tcp_core.SOCK_ACCEPTED)
    return wire.TcpFlowRecord(
        pif=(wire.PIF_HOST, wire.PIF_TAP) if inbound else (wire.PIF_TAP, wire.PIF_HOST),
        sides=(host, tap) if inbound else (tap, host),
        events=to_upstream_events(core.events),
        ws_from_tap=core.ws_from_guest, ws_to_tap=core.ws_to_guest,
        tap_mss=core.mss, sndbuf=core.sndbuf & 0xFFFFFFFF,
        wnd_from_tap=min(core.snd_wnd >> core.ws_from_guest, 0xFFFF),
        wnd_to_tap=core.window_field(),
        seq_to_tap=_resume_from(core), seq_ack_from_tap=core.snd_una,
        seq_from_tap=core.rcv_nxt, seq_ack_to_tap=core.rcv_acked,
        seq_init_from_tap=(core.rcv_nxt - 1) & tcp_core.SEQ_MASK,
    )


def _resume_from(core: tcp_core.TcpConn) -> int:
    """Where the target goes on sending to the guest: from the oldest byte it has
    not acknowledged (frames on their way may be lost with the source; the guest
    drops what it has twice), unless our FIN is out, whose sequence must stay."""
    return core.snd_max if core.events & tcp_core.TAP_FIN_SENT else core.snd_una


def restored_core(rec: wire.TcpFlowRecord, mss_limit: int) -> tcp_core.TcpConn:
    """Our translation state from a record (ours or upstream's)."""
    core = tcp_core.TcpConn(rec.seq_ack_from_tap, mss_limit)
    origin = (tcp_core.SOCK_ACCEPTED if rec.pif[0] == wire.PIF_HOST else 0)
    core.events = origin | from_upstream_events(rec.events) | tcp_core.ESTABLISHED
    core.snd_una = core.recover = rec.seq_ack_from_tap
    core.snd_nxt = core.snd_max = rec.seq_to_tap
    if core.events & tcp_core.TAP_FIN_SENT:
        core.fin_seq = (rec.seq_to_tap - 1) & tcp_core.SEQ_MASK
    core.rcv_nxt = rec.seq_from_tap
    core.rcv_acked = rec.seq_ack_to_tap
    core.ws_from_guest = min(rec.ws_from_tap, 14)
    core.ws_to_guest = min(rec.ws_to_tap, 14)
    core.snd_wnd = rec.wnd_from_tap << core.ws_from_guest
    core.rcv_wnd = max(rec.wnd_to_tap << core.ws_to_guest, 1)
    core.mss = max(min(rec.tap_mss, mss_limit), 1)
    core.sndbuf = rec.sndbuf
    return core


# -- the source -----------------------------------------------------------------------


def _ioctl_int(sock: socket.socket, request: int) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), request, buf)
    return buf[0]


def _peek(sock: socket.socket, length: int) -> bytes:
    if not length:
        return b""
    try:
        data = sock.recv(length, socket.MSG_PEEK)
    except BlockingIOError:
        data = b""
    if len(data) < length:
        raise OSError(0, f"short read of a queue ({len(data)} of {length} bytes)")
    return data


def dump_socket(sock: socket.socket) -> wire.TcpSocketRecord:
    """A socket in repair mode: its state and queues (``OSError`` if it can't be)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    t = wire.TcpSocketRecord(tcpi_state=info[0], tcpi_options=info[5],
                             snd_ws=info[6] & 0xF, rcv_ws=info[6] >> 4)
    t.mss = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    if t.tcpi_options & TCPI_OPT_TIMESTAMPS:
        t.timestamp = sock.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP) & 0xFFFFFFFF
    t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, t.rcv_wup = _window.unpack(
        sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, _window.size))
    fin_in = t.tcpi_state in (TCP_CLOSE_WAIT, TCP_LAST_ACK)
    fin_out = t.tcpi_state in (TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_CLOSING)
    if fin_in:  # the peer's FIN counts in the window and the queue length: not data
        t.rcv_wup = (t.rcv_wup - 1) & 0xFFFFFFFF
        t.rcv_wnd += 1
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    sndq, notsent = _ioctl_int(sock, SIOCOUTQ), _ioctl_int(sock, SIOCOUTQNSD)
    if fin_out:
        sndq, notsent = max(sndq - 1, 0), max(notsent - 1, 0)
    if notsent > sndq or sndq > wire.QUEUE_MAX:
        raise OSError(0, f"send queue of {sndq} bytes, {notsent} not sent: can't migrate")
    t.send_queue = _peek(sock, sndq)
    t.notsent = notsent
    t.seq_snd = (_u32.unpack(sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
                 - sndq) & 0xFFFFFFFF
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    rcvq = _ioctl_int(sock, SIOCINQ)
    if rcvq and fin_in:
        rcvq -= 1
    if rcvq > wire.QUEUE_MAX:
        raise OSError(0, f"receive queue of {rcvq} bytes: can't migrate")
    t.recv_queue = _peek(sock, rcvq)
    t.seq_rcv = (_u32.unpack(sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
                 - rcvq) & 0xFFFFFFFF
    return t


def dump(ctx: Ctx, repair: RepairChannel, no_linger: bool,
         lingering: list[socket.socket]) -> list[tuple[wire.TcpFlowRecord, wire.TcpSocketRecord]]:
    """Every migratable flow, dumped and taken out of the loop (see the docstring)."""
    flows = migratable(ctx)
    if not flows:
        return []
    if not repair.wait():
        log.warn("No passt-repair helper: %d TCP connections won't migrate", len(flows))
        return []
    for flow in flows:
        tcp_tap.flush_discards(flow)
        if ctx.tcp.peek_off:
            flow.sock.setsockopt(socket.SOL_SOCKET, tcp_tap.SO_PEEK_OFF, -1)
    repair.set([f.fd for f in flows], REPAIR_ON)
    out = []
    for flow in flows:
        try:
            record = flow_record(flow)
        except OSError as e:  # not connected any more: nothing to migrate
            log.warn("TCP: %r: not migrated: %s", flow, e.strerror or e)
            continue
        try:
            state = dump_socket(flow.sock)
        except OSError as e:
            log.err("TCP: %r: can't dump: %s; the target drops it", flow, e.strerror or e)
            state = wire.TcpSocketRecord()
        out.append((record, state))
        sock = tcp_tap.forget(flow)
        if no_linger:
            sock.close()
        else:
            lingering.append(sock)
    return out


# -- the target -----------------------------------------------------------------------


def _family(side: wire.FlowSide) -> int:
    return socket.AF_INET if len(wire.from_inany(side.eaddr)) == 4 else socket.AF_INET6


def _address(addr: bytes, port: int) -> tuple[str, int]:
    addr = wire.from_inany(addr)
    family = socket.AF_INET if len(addr) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, addr), port


def _fill_queue(sock: socket.socket, data: bytes) -> None:
    view, chunk = memoryview(data), len(data)
    while view:
        try:
            sent = sock.send(view[:chunk])
        except OSError as e:
            if e.errno in (105, 12) and chunk >= RESTORE_CHUNK_MIN:  # ENOBUFS, ENOMEM
                chunk //= 2
                continue
            raise
        view = view[sent:]


def _room(sock: socket.socket, option: int, need: int) -> None:
    """A buffer that holds ``need`` bytes of queue (the kernel counts twice the
    figure set, half of it for its own overhead), as far as the system allows."""
    if sock.getsockopt(socket.SOL_SOCKET, option) // 2 < need:
        sock.setsockopt(socket.SOL_SOCKET, option, need)


def restore_socket(sock: socket.socket, host: wire.FlowSide, t: wire.TcpSocketRecord,
                   repair: RepairChannel) -> None:
    """A socket in repair mode, made into the source's connection; out of repair mode."""
    _room(sock, socket.SO_SNDBUF, len(t.send_queue))
    _room(sock, socket.SO_RCVBUF, len(t.recv_queue))
    sock.bind(_address(host.oaddr, host.oport))
    if t.tcpi_options & TCPI_OPT_TIMESTAMPS:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, _u32.pack(t.timestamp))
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, _u32.pack(t.seq_snd))
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, _u32.pack(t.seq_rcv))
    sock.connect(_address(host.eaddr, host.eport))
    _fill_queue(sock, t.recv_queue)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    sent = len(t.send_queue) - t.notsent
    _fill_queue(sock, t.send_queue[:sent])
    options = [(TCPOPT_WINDOW, t.snd_ws + (t.rcv_ws << 16)), (TCPOPT_MAXSEG, t.mss)]
    if t.tcpi_options & TCPI_OPT_SACK:
        options.append((TCPOPT_SACK_PERMITTED, 0))
    if t.tcpi_options & TCPI_OPT_TIMESTAMPS:
        options.append((TCPOPT_TIMESTAMP, 0))
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS,
                    b"".join(struct.pack("=II", c, v) for c, v in options))
    if t.tcpi_state == TCP_FIN_WAIT2:  # our FIN was acknowledged: don't send it again
        sock.shutdown(socket.SHUT_WR)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, _window.pack(
        t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, t.rcv_wup))
    repair.set([sock.fileno()], REPAIR_OFF)
    _fill_queue(sock, t.send_queue[sent:])
    if t.tcpi_state == TCP_FIN_WAIT1:  # it may not have gone out: send it
        sock.shutdown(socket.SHUT_WR)


def restore(ctx: Ctx, repair: RepairChannel,
            flows: list[tuple[wire.TcpFlowRecord, wire.TcpSocketRecord]]) -> int:
    """Flows of the stream, restored and in the loop; how many."""
    if not flows:
        return 0
    if not repair.wait(1.0):
        raise RepairError(0, "no passt-repair helper: can't restore TCP connections")
    socks = []
    for rec, _ in flows:
        family = _family(rec.side(wire.PIF_HOST))
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp_tap.prepare_socket(ctx.tcp, sock, family, outbound=False)  # buffers before queues
        socks.append(sock)
    repair.set([s.fileno() for s in socks], REPAIR_ON)
    restored = 0
    for (rec, state), sock in zip(flows, socks, strict=True):
        if _restore_one(ctx, repair, rec, state, sock):
            restored += 1
        else:
            sock.close()
    return restored


def _restore_one(ctx: Ctx, repair: RepairChannel, rec: wire.TcpFlowRecord,
                 state: wire.TcpSocketRecord, sock: socket.socket) -> bool:
    tap = rec.side(wire.PIF_TAP)
    guest, remote = wire.from_inany(tap.eaddr), wire.from_inany(tap.oaddr)
    key = ("tcp", guest, tap.eport, remote, tap.oport)
    if not state.tcpi_state:
        log.warn("TCP: flow to %s dropped as the source asked", _address(remote, tap.oport))
        return False
    try:
        restore_socket(sock, rec.side(wire.PIF_HOST), state, repair)
    except OSError as e:
        log.err("TCP: can't restore the connection to %s: %s", _address(remote, tap.oport),
                e.strerror or e)
        return False
    core = restored_core(rec, ctx.tcp.mss_limit(len(guest) == 16))
    return tcp_tap.adopt(ctx, core, sock, key) is not None
