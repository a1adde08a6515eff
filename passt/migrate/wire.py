"""The device state stream of a live migration: encoding and decoding, no I/O.

Theory of operation
-------------------
When QEMU live-migrates a guest whose network is a vhost-user passt, it asks
the source passt for its *device state* (``SET_DEVICE_STATE_FD``, direction
save), carries the bytes to the target QEMU with the rest of the guest, and
hands them to the target passt (direction load).  The state is what the
guest needs to keep its connections: the addresses and MAC it uses, and per
TCP connection the flow (both sides' addresses and ports), our translation
state toward the guest (sequence numbers, windows, scales, MSS) and the host
socket's state dumped in ``TCP_REPAIR`` mode (sequences, windows, options,
and the contents of its send and receive queues).

The format is upstream passt's version 2 (``migrate.c``, ``flow.c``,
``tcp.c``'s ``tcp_flow_migrate_*``), byte for byte, so that a guest can move
between upstream's passt and ours in either direction (``doc/migration.md``):

====================  =====  ===============================================
record                bytes  fields
====================  =====  ===============================================
header                16     magic 0xB1BB1D1B0BB1D1B0 (u64), version,
                             compat_version (u32), all big-endian
observed addresses    42     IPv6, IPv6 link-local (16 each), IPv4 (4), MAC
flow count            4      u32 big-endian: TCP connections that follow
flow, count times     112    ``TcpFlowRecord``: pif[2] (u8), two flowsides
                             (our address, endpoint address: 16 each,
                             IPv4 as ::ffff:a.b.c.d; our port, endpoint port:
                             u16 *little-endian*, upstream copies host-order
                             structs), retries, ws_from_tap, ws_to_tap,
                             events (u8), tap_mss, sndbuf (u32 BE), flags,
                             dup_ack (u8), wnd_from_tap, wnd_to_tap (u16 BE),
                             seq_to_tap, seq_ack_from_tap, seq_from_tap,
                             seq_ack_to_tap, seq_init_from_tap (u32 BE)
socket, count times   52+    ``TcpSocketRecord``: seq_snd, seq_rcv, sndq,
                             notsent, rcvq, mss, timestamp, snd_wl1, snd_wnd,
                             max_window, rcv_wnd, rcv_wup (u32 BE), snd_ws,
                             rcv_ws, tcpi_state, tcpi_options (u8), then the
                             send queue (sndq bytes) and the receive queue
                             (rcvq bytes); ``tcpi_state`` 0 means "drop this
                             flow" and no queues follow
====================  =====  ===============================================

``events`` are upstream's bits (``UPSTREAM_*`` below), not our core's: the
TCP glue (``migrate/tcp.py``) translates.  The target refuses, with one
line saying why (``StateError``), a stream with another magic, a version
range that does not include ours (``VERSION``), or one that ends early or
goes on after the last record: nothing is applied from a stream that does
not decode whole.
"""

from __future__ import annotations

import struct

from passt.record import field, record

MAGIC = 0xB1BB1D1B0BB1D1B0
VERSION = 2  # upstream's v1 had the MSS in the wrong byte order: not supported there either
QUEUE_MAX = 64 << 20  # upstream's TCP_MIGRATE_{SND,RCV}_QUEUE_MAX

PIF_NONE, PIF_HOST, PIF_TAP, PIF_SPLICE = range(4)

# Upstream's connection events (tcp_conn.h), as carried in the stream.
UPSTREAM_SOCK_ACCEPTED = 1 << 0
UPSTREAM_TAP_SYN_RCVD = 1 << 1
UPSTREAM_ESTABLISHED = 1 << 2
UPSTREAM_SOCK_FIN_RCVD = 1 << 3
UPSTREAM_SOCK_FIN_SENT = 1 << 4
UPSTREAM_TAP_FIN_RCVD = 1 << 5
UPSTREAM_TAP_FIN_SENT = 1 << 6
UPSTREAM_TAP_FIN_ACKED = 1 << 7

_header = struct.Struct(">QII")
_addrs = struct.Struct(">16s16s4s6s")
_count = struct.Struct(">I")
_side = struct.Struct("<16s16sHH")
_flow_head = struct.Struct("<BB")
_flow_tail = struct.Struct(">BBBBIIBBHHIIIII")
_ext = struct.Struct(">IIIIIIIIIIIIBBBB")
FLOW_RECORD_SIZE = _flow_head.size + 2 * _side.size + _flow_tail.size
assert FLOW_RECORD_SIZE == 112, FLOW_RECORD_SIZE


class StateError(ValueError):
    """A device state stream we cannot take; one line."""


@record(frozen=True)
class FlowSide:
    """One side of a flow, as upstream's ``struct flowside``: 16-byte addresses."""

    oaddr: bytes  # our address, from passt's point of view
    eaddr: bytes  # the endpoint's
    oport: int
    eport: int


@record
class TcpFlowRecord:
    """A connection's flow and its translation toward the guest (``tcp_tap_transfer``)."""

    pif: tuple[int, int]
    sides: tuple[FlowSide, FlowSide]
    events: int
    ws_from_tap: int
    ws_to_tap: int
    tap_mss: int
    sndbuf: int
    wnd_from_tap: int  # the guest's last window field, unscaled
    wnd_to_tap: int  # ours, as sent
    seq_to_tap: int
    seq_ack_from_tap: int
    seq_from_tap: int
    seq_ack_to_tap: int
    seq_init_from_tap: int
    retries: int = 0
    flags: int = 0
    seq_dup_ack_approx: int = 0

    def side(self, pif: int) -> FlowSide:
        """The side facing ``pif`` (``PIF_TAP`` or ``PIF_HOST``)."""
        return self.sides[self.pif.index(pif)]


@record
class TcpSocketRecord:
    """The host socket in repair mode (``tcp_tap_transfer_ext``) and its queues."""

    seq_snd: int = 0  # sequence of the send queue's first byte
    seq_rcv: int = 0  # ... of the receive queue's
    notsent: int = 0  # bytes at the send queue's end not sent yet
    mss: int = 0
    timestamp: int = 0
    snd_wl1: int = 0
    snd_wnd: int = 0
    max_window: int = 0
    rcv_wnd: int = 0
    rcv_wup: int = 0
    snd_ws: int = 0
    rcv_ws: int = 0
    tcpi_state: int = 0  # 0: the source could not dump it, drop the flow
    tcpi_options: int = 0
    send_queue: bytes = b""
    recv_queue: bytes = b""


@record
class DeviceState:
    """Everything the stream carries."""

    addr6: bytes = bytes(16)
    addr6_ll: bytes = bytes(16)
    addr4: bytes = bytes(4)
    mac: bytes = bytes(6)
    flows: list[tuple[TcpFlowRecord, TcpSocketRecord]] = field(default_factory=list)


def inany(addr: bytes) -> bytes:
    """A 4- or 16-byte address as upstream's ``inany_addr`` (IPv4 mapped)."""
    return b"\0" * 10 + b"\xff\xff" + addr if len(addr) == 4 else addr


def from_inany(addr: bytes) -> bytes:
    """The 4- or 16-byte address an ``inany_addr`` holds."""
    return addr[12:] if addr[:12] == b"\0" * 10 + b"\xff\xff" else addr


# -- encoding -----------------------------------------------------------------------


def encode(state: DeviceState) -> bytes:
    """The whole stream, as the source sends it."""
    out = [_header.pack(MAGIC, VERSION, VERSION),
           _addrs.pack(state.addr6, state.addr6_ll, state.addr4, state.mac),
           _count.pack(len(state.flows))]
    out += [_encode_flow(f) for f, _ in state.flows]
    for _, s in state.flows:
        out += _encode_socket(s)
    return b"".join(out)


def _encode_flow(f: TcpFlowRecord) -> bytes:
    sides = b"".join(_side.pack(s.oaddr, s.eaddr, s.oport, s.eport) for s in f.sides)
    return (_flow_head.pack(*f.pif) + sides + _flow_tail.pack(
        f.retries, f.ws_from_tap, f.ws_to_tap, f.events, f.tap_mss, f.sndbuf, f.flags,
        f.seq_dup_ack_approx, f.wnd_from_tap, f.wnd_to_tap, f.seq_to_tap, f.seq_ack_from_tap,
        f.seq_from_tap, f.seq_ack_to_tap, f.seq_init_from_tap))


def _encode_socket(s: TcpSocketRecord) -> list[bytes]:
    if not s.tcpi_state:
        return [_ext.pack(*[0] * 16)]
    head = _ext.pack(s.seq_snd, s.seq_rcv, len(s.send_queue), s.notsent, len(s.recv_queue),
                     s.mss, s.timestamp, s.snd_wl1, s.snd_wnd, s.max_window, s.rcv_wnd,
                     s.rcv_wup, s.snd_ws, s.rcv_ws, s.tcpi_state, s.tcpi_options)
    return [head, s.send_queue, s.recv_queue]


# -- decoding -----------------------------------------------------------------------


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if len(self.data) - self.pos < n:
            raise StateError(f"device state ends inside the {what} "
                             f"({len(self.data) - self.pos} of {n} bytes)")
        view = self.data[self.pos:self.pos + n]
        self.pos += n
        return view


def check_header(data: bytes) -> None:
    """Refuse a stream that is not ours or of a version we don't speak."""
    magic, version, compat = _header.unpack(data)
    if magic != MAGIC or not version or not compat:
        raise StateError(f"invalid device state (magic {magic:#018x}, version {version})")
    if not compat <= VERSION <= version:
        raise StateError(f"unsupported device state version {version} (compatible down to "
                         f"{compat}); this passt speaks version {VERSION}")


def decode(data: bytes) -> DeviceState:
    """The stream the target received, whole; ``StateError`` if it is not."""
    cur = _Cursor(data)
    check_header(bytes(cur.take(_header.size, "header")))
    addr6, ll, addr4, mac = _addrs.unpack(cur.take(_addrs.size, "observed addresses"))
    (count,) = _count.unpack(cur.take(_count.size, "flow count"))
    if count > len(data) // FLOW_RECORD_SIZE:
        raise StateError(f"device state announces {count} flows in {len(data)} bytes")
    flows = [_decode_flow(cur.take(FLOW_RECORD_SIZE, f"flow {i}")) for i in range(count)]
    sockets = [_decode_socket(cur, i) for i in range(count)]
    if cur.pos != len(data):
        raise StateError(f"{len(data) - cur.pos} bytes of device state after the last flow")
    return DeviceState(addr6, ll, addr4, mac, list(zip(flows, sockets, strict=True)))


def _decode_flow(b: memoryview) -> TcpFlowRecord:
    pif = _flow_head.unpack_from(b)
    sides = tuple(FlowSide(*_side.unpack_from(b, _flow_head.size + i * _side.size))
                  for i in range(2))
    (retries, ws_from, ws_to, events, mss, sndbuf, flags, dup, wnd_from, wnd_to, seq_to,
     ack_from, seq_from, ack_to, init_from) = _flow_tail.unpack_from(
        b, _flow_head.size + 2 * _side.size)
    if sorted(pif) != [PIF_HOST, PIF_TAP]:
        raise StateError(f"flow between interfaces {pif[0]} and {pif[1]}: only tap-host "
                         "TCP flows migrate")
    return TcpFlowRecord((pif[0], pif[1]), (sides[0], sides[1]), events, ws_from, ws_to, mss,
                         sndbuf, wnd_from, wnd_to, seq_to, ack_from, seq_from, ack_to,
                         init_from, retries, flags, dup)


def _decode_socket(cur: _Cursor, index: int) -> TcpSocketRecord:
    (seq_snd, seq_rcv, sndq, notsent, rcvq, mss, ts, wl1, snd_wnd, max_window, rcv_wnd,
     rcv_wup, snd_ws, rcv_ws, state, options) = _ext.unpack(
        cur.take(_ext.size, f"socket state of flow {index}"))
    if not state:
        return TcpSocketRecord()
    if sndq > QUEUE_MAX or rcvq > QUEUE_MAX or notsent > sndq:
        raise StateError(f"flow {index}: bad queues (send {sndq}, not sent {notsent}, "
                         f"receive {rcvq})")
    send = bytes(cur.take(sndq, f"send queue of flow {index}"))
    recv = bytes(cur.take(rcvq, f"receive queue of flow {index}"))
    return TcpSocketRecord(seq_snd, seq_rcv, notsent, mss, ts, wl1, snd_wnd, max_window,
                           rcv_wnd, rcv_wup, snd_ws, rcv_ws, state, options, send, recv)
