"""Parse and build the frames of the tap side: Ethernet, ARP, IPv4, IPv6, ICMP, UDP, TCP.

Theory of operation
-------------------
Every frame the guest sends passes through ``parse_frame`` once, and every
frame we send it is made by a builder here, so both directions are on the
hot path.  Python's cost is per call and per object, not per byte, hence:

* Parsing never copies a payload.  ``parse_frame`` takes the frame as a
  ``memoryview`` and hands out slices of it; only small fields (addresses,
  MACs) become ``bytes``, because they are dictionary keys.  Fixed headers
  are read with precompiled ``struct.Struct`` formats, one call per header.
* Parsing is layered and lazy.  ``parse_frame`` reads Ethernet and IP,
  walks IPv4 options (by skipping them: IHL is honoured) and IPv6 extension
  headers, and locates the L4 header; the handler that owns the protocol
  then calls ``parse_tcp``/``parse_udp``/``parse_icmp``/``parse_arp`` on
  ``pkt.l4``.  No checksum is computed while parsing: a handler that wants
  to drop corrupt frames calls ``verify_ipv4_header``/``verify_l4``.
* Results are named tuples: cheap to create, immutable, attribute access in C.
* Whatever the bytes, parsing raises nothing but ``ParseError`` (a
  ``ValueError``), whose ``reason`` is a short token the dispatcher can count
  as ``drop.<reason>``.  Every length read from the wire is checked before
  use, and every loop over options or extension headers advances by at least
  one byte, so no input can make it loop forever.
* Lengths are trimmed: ``pkt.l4`` ends where the IP total (IPv4) or payload
  (IPv6) length says, never at the frame's padding; a frame shorter than its
  IP length is an error, not a partial packet.
* A fragment (IPv4: MF set or offset not zero; IPv6: a Fragment header with M
  set or offset not zero) sets ``pkt.fragment``; we do not reassemble, and
  for a non-first fragment ``pkt.l4`` is not an L4 header.  An IPv6 "atomic
  fragment" (offset 0, M clear) is a whole packet (RFC 6946) and is not
  flagged.  Unknown ethertypes are not errors: they parse with
  ``ip_version == 0`` and ``l4`` set to the Ethernet payload (this is how
  ARP arrives: ``parse_arp(pkt.l4)``).

Building
--------
Builders return ``bytes``.  L4 builders take the IP ``src`` and ``dst``
first (raw 4- or 16-byte addresses) for the pseudo-header checksum; the
ICMPv4 builder takes them too, unused by the checksum, so that ICMP and
ICMPv6 share one signature.  The IP family of a ``build_frame_*`` helper
follows the length of ``src``.  Checksums are computed from the header
*fields* (all congruent modulo 0xffff, see ``checksum``) plus one
``csum_partial`` over the payload, so building a header never re-reads it.
``build_frame_*`` concatenate Ethernet, IP and L4 headers and the payload in
one ``join``: the payload is copied exactly once.

Fast path for TCP data: ``TcpFrameTemplate``
--------------------------------------------
The TCP driver sends up to 64 KiB per frame on a connection whose addresses,
ports and MACs never change.  ``TcpFrameTemplate(eth_dst, eth_src, src, dst,
sport, dport)`` prepares the Ethernet + IP + TCP header once, with the
constant parts of both checksums pre-summed.  Then, per segment::

    frame = tpl.build(seq, ack, flags, window, payload)     # bytes, ready to send
    hdr = tpl.headers(seq, ack, flags, window, payload)     # bytearray, headers only
    tpl.write_headers(frame_buf, seq, ack, flags, window, payload)  # in place

``build`` copies the 54-byte (IPv4) or 74-byte (IPv6) header, patches the
IP length (and IPv4 header checksum), sequence, acknowledgement, flags,
window and TCP checksum with one ``struct.pack_into``, sums the payload
(NumPy for large payloads) and joins.  ``headers`` returns the patched
headers without the payload, for callers that can write scatter-gather
(``sendmsg([hdr, payload])``) and avoid even that copy; ``write_headers``
patches them over the start of a frame buffer whose payload was read in
place behind them (the TCP driver's peeks), allocating nothing.  ``options`` (a
multiple of 4 bytes, e.g. from ``tcp_options``) may be passed for SYN
segments; the data offset follows.  ``payload`` is any buffer, typically a
``memoryview`` of the socket's peek buffer.
"""

from __future__ import annotations

import struct

from passt.checksum import Buffer, csum_fold, csum_partial, needs_csum_field, pseudo_sum
from passt.record import NamedTuple

# Ethertypes and IP protocol numbers.
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

# TCP flags (the low byte of the offset/flags word).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

ARP_REQUEST = 1
ARP_REPLY = 2

# IPv6 extension headers we walk, and the two that end the walk (ESP, no
# next header) simply by not being listed here.
IPV6_HOP_BY_HOP = 0
IPV6_ROUTING = 43
IPV6_FRAGMENT = 44
IPV6_AH = 51
IPV6_DEST_OPTS = 60
IPV6_ESP = 50
IPV6_NO_NEXT = 59
_IPV6_EXT = frozenset((IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AH, IPV6_DEST_OPTS))

# TCP option kinds, and the exact length of those we read.
TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WSCALE = 3
TCPOPT_SACK_PERM = 4
TCPOPT_TIMESTAMP = 8
_TCPOPT_SIZE = {TCPOPT_MSS: 4, TCPOPT_WSCALE: 3, TCPOPT_SACK_PERM: 2, TCPOPT_TIMESTAMP: 10}
TCP_MAX_WSCALE = 14  # RFC 7323 2.3: larger shift counts are read as 14
_NOP_NOP_TS = 0x0101080A  # how Linux lays out timestamps on data segments

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")  # ver/ihl tos len id frag ttl proto csum src dst
_IPV6 = struct.Struct("!IHBB16s16s")  # ver/class/label plen next hop src dst
_IPV6_FRAG = struct.Struct("!BxH")  # next header, offset/flags (identification ignored)
_TCP = struct.Struct("!HHIIHHHH")  # sport dport seq ack off/flags window csum urg
_TCP_PATCH = struct.Struct("!IIHHH")  # seq ack off/flags window csum, at TCP offset 4
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")  # type code csum ident seq
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_U16 = struct.Struct("!H")
_TS = struct.Struct("!II")
_TS_WORD = struct.Struct("!III")  # the first option word and the two timestamps

_unpack_eth = _ETH.unpack_from
_unpack_ipv4 = _IPV4.unpack_from
_unpack_ipv6 = _IPV6.unpack_from
_unpack_tcp = _TCP.unpack_from
_unpack_udp = _UDP.unpack_from
_unpack_icmp = _ICMP.unpack_from
_unpack_ts = _TS.unpack_from
_unpack_ts_word = _TS_WORD.unpack_from
# Named tuples built without the Python-level __new__ they generate: per-frame saving.
_new = tuple.__new__
# The named tuples' memoryview fields are annotated through this alias: mypyc
# (make mypyc) evaluates a named tuple's annotations by their name among the
# module's globals, where the builtin memoryview is not.
View = memoryview

_IPV4_DF = 0x4000
_IPV4_FRAG_MASK = 0x3FFF  # MF flag and fragment offset
_IPV6_FRAG_MASK = 0xFFF9  # fragment offset and M flag (bits 1-2 are reserved)


class ParseError(ValueError):
    """A frame or message we cannot read; ``reason`` is a short token for drop counters."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class Packet(NamedTuple):
    """A parsed frame: Ethernet and IP fields, and where the L4 message is."""

    frame: View
    eth_dst: bytes
    eth_src: bytes
    ethertype: int
    ip_version: int  # 4, 6, or 0 when the ethertype is not IP
    src: bytes | None
    dst: bytes | None
    proto: int  # upper-layer protocol after IPv6 extension headers, 0 if not IP
    ttl: int  # TTL or hop limit
    fragment: bool
    l3_offset: int
    l4_offset: int
    l4: View  # L4 header and payload, trimmed to the IP length


class TcpSegment(NamedTuple):
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int  # FIN SYN RST PSH ACK URG (plus ECE 0x40, CWR 0x80)
    window: int  # unscaled, as on the wire
    mss: int | None
    wscale: int | None  # clamped to 14
    sack_ok: bool
    ts_val: int | None
    ts_ecr: int | None
    payload: View


class UdpDatagram(NamedTuple):
    sport: int
    dport: int
    payload: View  # trimmed to the UDP length


class IcmpMessage(NamedTuple):
    """ICMP or ICMPv6; ``ident``/``seq`` are the two halves of the 4-byte 'rest of header'."""

    type: int
    code: int
    ident: int
    seq: int
    body: View


class ArpMessage(NamedTuple):
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


# ---------------------------------------------------------------- parsing


def parse_frame(buf: Buffer) -> Packet:
    """Read Ethernet and IP headers and locate the L4 message (see module docstring)."""
    frame = buf if type(buf) is memoryview else memoryview(buf)
    if len(frame) < ETH_HLEN:
        raise ParseError(f"frame of {len(frame)} bytes has no Ethernet header", "short_frame")
    eth_dst, eth_src, ethertype = _unpack_eth(frame)
    if ethertype == ETH_P_IP:
        return _parse_ipv4(frame, eth_dst, eth_src)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(frame, eth_dst, eth_src)
    payload = frame[ETH_HLEN:]
    return _new(Packet, (
        frame, eth_dst, eth_src, ethertype, 0, None, None, 0, 0, False, ETH_HLEN, ETH_HLEN, payload
    ))  # fmt: skip


def _parse_ipv4(frame: memoryview, eth_dst: bytes, eth_src: bytes) -> Packet:
    size = len(frame)
    if size < ETH_HLEN + 20:
        raise ParseError(f"IPv4 frame of {size} bytes is too short", "ipv4_short")
    ver_ihl, _tos, total, _id, frag, ttl, proto, _csum, src, dst = _unpack_ipv4(frame, ETH_HLEN)
    if ver_ihl >> 4 != 4:
        raise ParseError(f"IPv4 ethertype with IP version {ver_ihl >> 4}", "ipv4_version")
    hlen = (ver_ihl & 0x0F) << 2
    end = ETH_HLEN + total
    if hlen < 20 or total < hlen or end > size:
        raise ParseError(
            f"IPv4 header length {hlen}, total length {total}, frame {size} bytes", "ipv4_length"
        )
    l4_offset = ETH_HLEN + hlen
    return _new(Packet, (
        frame, eth_dst, eth_src, ETH_P_IP, 4, src, dst, proto, ttl,
        bool(frag & _IPV4_FRAG_MASK), ETH_HLEN, l4_offset, frame[l4_offset:end],
    ))  # fmt: skip


def _parse_ipv6(frame: memoryview, eth_dst: bytes, eth_src: bytes) -> Packet:
    size = len(frame)
    if size < ETH_HLEN + 40:
        raise ParseError(f"IPv6 frame of {size} bytes is too short", "ipv6_short")
    vcl, plen, proto, hop, src, dst = _unpack_ipv6(frame, ETH_HLEN)
    if vcl >> 28 != 6:
        raise ParseError(f"IPv6 ethertype with IP version {vcl >> 28}", "ipv6_version")
    offset = ETH_HLEN + 40
    end = offset + plen
    if end > size:
        raise ParseError(f"IPv6 payload length {plen}, frame {size} bytes", "ipv6_length")
    fragment = False
    if proto in _IPV6_EXT:
        proto, offset, fragment = _walk_ipv6_extensions(frame, proto, offset, end)
    return _new(Packet, (
        frame, eth_dst, eth_src, ETH_P_IPV6, 6, src, dst, proto, hop, fragment,
        ETH_HLEN, offset, frame[offset:end],
    ))  # fmt: skip


def _walk_ipv6_extensions(
    frame: memoryview, proto: int, offset: int, end: int
) -> tuple[int, int, bool]:
    """Skip extension headers; return (upper-layer protocol, its offset, fragment?).

    Every extension header is at least 8 bytes long, so the walk ends.  After
    a non-first fragment the bytes are fragment data, not headers: stop there.
    """
    fragment = False
    while proto in _IPV6_EXT:
        if offset + 8 > end:
            raise ParseError(f"IPv6 extension header {proto} truncated", "ipv6_ext")
        if proto == IPV6_FRAGMENT:
            proto, frag = _IPV6_FRAG.unpack_from(frame, offset)
            offset += 8
            if frag & _IPV6_FRAG_MASK:
                fragment = True
                if frag >> 3:
                    break
            continue
        length = (frame[offset + 1] + 2) << 2 if proto == IPV6_AH else (frame[offset + 1] + 1) << 3
        proto = frame[offset]
        offset += length
        if offset > end:
            raise ParseError(f"IPv6 extension header {proto} overruns payload", "ipv6_ext")
    return proto, offset, fragment


def parse_tcp(l4: Buffer) -> TcpSegment:
    """Read a TCP header and the options we use; ``payload`` is a view, not a copy."""
    size = len(l4)
    if size < 20:
        raise ParseError(f"TCP segment of {size} bytes is too short", "tcp_short")
    sport, dport, seq, ack, off_flags, window, _csum, _urg = _unpack_tcp(l4)
    hlen = (off_flags >> 12) << 2
    if hlen < 20 or hlen > size:
        raise ParseError(f"TCP data offset {hlen} in a {size}-byte segment", "tcp_offset")
    view = l4 if type(l4) is memoryview else memoryview(l4)
    mss = wscale = ts_val = ts_ecr = None
    sack_ok = False
    if hlen > 20:
        if hlen == 32:
            word, ts_val, ts_ecr = _unpack_ts_word(view, 20)
            if word != _NOP_NOP_TS:
                mss, wscale, sack_ok, ts_val, ts_ecr = _parse_tcp_options(view, hlen)
        else:
            mss, wscale, sack_ok, ts_val, ts_ecr = _parse_tcp_options(view, hlen)
    return _new(TcpSegment, (
        sport, dport, seq, ack, off_flags & 0xFF, window,
        mss, wscale, sack_ok, ts_val, ts_ecr, view[hlen:],
    ))  # fmt: skip


def _parse_tcp_options(
    view: memoryview, end: int
) -> tuple[int | None, int | None, bool, int | None, int | None]:
    """Walk the options area (bytes 20..end): MSS, window scale, SACK-permitted, timestamps."""
    mss = wscale = ts_val = ts_ecr = None
    sack_ok = False
    i = 20
    while i < end:
        kind = view[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise ParseError(f"TCP option {kind} has no length byte", "tcp_option")
        length = view[i + 1]
        if length < 2 or i + length > end or _TCPOPT_SIZE.get(kind, length) != length:
            raise ParseError(f"TCP option {kind} with bad length {length}", "tcp_option")
        if kind == TCPOPT_MSS:
            mss = _U16.unpack_from(view, i + 2)[0]
        elif kind == TCPOPT_WSCALE:
            wscale = min(view[i + 2], TCP_MAX_WSCALE)
        elif kind == TCPOPT_SACK_PERM:
            sack_ok = True
        elif kind == TCPOPT_TIMESTAMP:
            ts_val, ts_ecr = _unpack_ts(view, i + 2)
        i += length
    return mss, wscale, sack_ok, ts_val, ts_ecr


def parse_udp(l4: Buffer) -> UdpDatagram:
    """Read a UDP header; the payload is trimmed to the UDP length."""
    size = len(l4)
    if size < 8:
        raise ParseError(f"UDP datagram of {size} bytes is too short", "udp_short")
    sport, dport, length, _csum = _unpack_udp(l4)
    if length < 8 or length > size:
        raise ParseError(f"UDP length {length} in a {size}-byte datagram", "udp_length")
    view = l4 if type(l4) is memoryview else memoryview(l4)
    return UdpDatagram(sport, dport, view[8:length])


def parse_icmp(l4: Buffer) -> IcmpMessage:
    """Read an ICMP (or ICMPv6: same layout) header; ``body`` follows the first 8 bytes."""
    size = len(l4)
    if size < 8:
        raise ParseError(f"ICMP message of {size} bytes is too short", "icmp_short")
    icmp_type, code, _csum, ident, seq = _unpack_icmp(l4)
    view = l4 if type(l4) is memoryview else memoryview(l4)
    return IcmpMessage(icmp_type, code, ident, seq, view[8:])


parse_icmpv6 = parse_icmp  # the first 8 bytes have the same layout


def parse_arp(buf: Buffer) -> ArpMessage:
    """Read an Ethernet/IPv4 ARP message (the Ethernet payload, i.e. ``pkt.l4``)."""
    if len(buf) < _ARP.size:
        raise ParseError(f"ARP message of {len(buf)} bytes is too short", "arp_short")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf)
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        raise ParseError(f"ARP for hardware {htype}, protocol {ptype:#x}", "arp_type")
    return ArpMessage(op, sha, spa, tha, tpa)


# ---------------------------------------------------------------- checksums of parsed packets


def verify_ipv4_header(pkt: Packet) -> bool:
    """True if ``pkt`` is IPv4 and its header checksum is right."""
    if pkt.ip_version != 4:
        return False
    return csum_fold(csum_partial(pkt.frame[pkt.l3_offset : pkt.l4_offset])) == 0


def verify_l4(pkt: Packet) -> bool:
    """True if the TCP, UDP, ICMP or ICMPv6 checksum of ``pkt`` is right.

    False for fragments (the checksum covers the whole datagram) and other
    protocols.  A zero UDP checksum over IPv4 means "none" and is accepted.
    """
    proto, l4 = pkt.proto, pkt.l4
    if pkt.fragment or pkt.src is None or pkt.dst is None:
        return False
    if proto == IPPROTO_UDP:
        if len(l4) < 8:
            return False
        length, csum = _U16.unpack_from(l4, 4)[0], _U16.unpack_from(l4, 6)[0]
        if length < 8 or length > len(l4):
            return False
        if csum == 0 and pkt.ip_version == 4:
            return True
        l4 = l4[:length]
    elif proto == IPPROTO_ICMP and pkt.ip_version == 4:
        return csum_fold(csum_partial(l4)) == 0
    elif proto not in (IPPROTO_TCP, IPPROTO_ICMPV6):
        return False
    return csum_fold(csum_partial(l4, pseudo_sum(pkt.src, pkt.dst, proto, len(l4)))) == 0


# ---------------------------------------------------------------- building headers


def _ipv4_header(
    src: bytes, dst: bytes, proto: int, payload_len: int,
    ttl: int = 64, ident: int = 0, tos: int = 0, df: bool = True, options: bytes = b"",
) -> bytes:  # fmt: skip
    if len(options) & 3:
        raise ValueError("IPv4 options must be padded to a multiple of 4 bytes")
    hlen = 20 + len(options)
    total = hlen + payload_len
    ver_ihl = 0x40 | hlen >> 2
    frag = _IPV4_DF if df else 0
    acc = (ver_ihl << 8 | tos) + total + ident + frag + (ttl << 8 | proto)
    acc += int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    if options:
        acc = csum_partial(options, acc)
    header = _IPV4.pack(ver_ihl, tos, total, ident, frag, ttl, proto, csum_fold(acc), src, dst)
    return header + options if options else header


def _ipv6_header(
    src: bytes, dst: bytes, proto: int, payload_len: int,
    ttl: int = 64, tclass: int = 0, flow_label: int = 0,
) -> bytes:  # fmt: skip
    vcl = 0x60000000 | tclass << 20 | flow_label
    return _IPV6.pack(vcl, payload_len, proto, ttl, src, dst)


def _ip_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int) -> bytes:
    """The IP header of the family ``src`` belongs to (4 or 16 bytes)."""
    if len(src) == 4:
        return _ipv4_header(src, dst, proto, payload_len, ttl)
    return _ipv6_header(src, dst, proto, payload_len, ttl)


def _ethertype_of(src: bytes) -> int:
    return ETH_P_IP if len(src) == 4 else ETH_P_IPV6


def _tcp_header_len(options: bytes) -> int:
    """20 bytes plus the options, which must fill whole 32-bit words."""
    if len(options) & 3:
        raise ValueError("TCP options must be padded to a multiple of 4 bytes")
    return 20 + len(options)


def _tcp_checksum(
    acc: int, seq: int, ack: int, off_flags: int, window: int, options: bytes, payload: Buffer
) -> int:
    """Finish a TCP checksum: ``acc`` holds the pseudo-header and the ports."""
    # 2**16 == 1 (mod 0xffff): 32-bit fields add to the sum as they are.
    acc += seq + ack + off_flags + window
    if options:
        acc = csum_partial(options, acc)
    if payload:
        acc = csum_partial(payload, acc)
    return csum_fold(acc)


def _tcp_header(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
    flags: int, window: int, payload: Buffer, options: bytes,
) -> bytes:  # fmt: skip
    hlen = _tcp_header_len(options)
    off_flags = hlen << 10 | flags  # data offset in words, in the top 4 bits
    acc = pseudo_sum(src, dst, IPPROTO_TCP, hlen + len(payload)) + sport + dport
    csum = _tcp_checksum(acc, seq, ack, off_flags, window, options, payload)
    return _TCP.pack(sport, dport, seq, ack, off_flags, window, csum, 0) + options


def _udp_header(src: bytes, dst: bytes, sport: int, dport: int, payload: Buffer,
                partial: bool = False) -> bytes:
    """``partial``: the pseudo-header's sum alone, for the receiver to complete."""
    length = 8 + len(payload)
    pseudo = pseudo_sum(src, dst, IPPROTO_UDP, length)
    if partial:
        return _UDP.pack(sport, dport, length, needs_csum_field(pseudo))
    acc = pseudo + sport + dport + length
    if payload:
        acc = csum_partial(payload, acc)
    return _UDP.pack(sport, dport, length, csum_fold(acc) or 0xFFFF)  # 0 means "no checksum"


def _icmp_header(
    pseudo: int, icmp_type: int, code: int, ident: int, seq: int, body: Buffer
) -> bytes:
    acc = pseudo + (icmp_type << 8 | code) + ident + seq
    if body:
        acc = csum_partial(body, acc)
    return _ICMP.pack(icmp_type, code, csum_fold(acc), ident, seq)


def _icmpv6_pseudo(src: bytes, dst: bytes, body: Buffer) -> int:
    return pseudo_sum(src, dst, IPPROTO_ICMPV6, 8 + len(body))


def _icmp_any_header(
    src: bytes, dst: bytes, icmp_type: int, code: int, ident: int, seq: int, body: Buffer
) -> tuple[int, bytes]:
    """(protocol, header) of an ICMP message for the family of ``src``."""
    if len(src) == 4:
        return IPPROTO_ICMP, _icmp_header(0, icmp_type, code, ident, seq, body)
    return IPPROTO_ICMPV6, _icmp_header(
        _icmpv6_pseudo(src, dst, body), icmp_type, code, ident, seq, body
    )


# ---------------------------------------------------------------- public builders


def build_eth(dst: bytes, src: bytes, ethertype: int, payload: Buffer) -> bytes:
    """An Ethernet frame (no FCS, no padding: tap devices need neither)."""
    return b"".join((_ETH.pack(dst, src, ethertype), payload))


def build_arp(
    op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes
) -> bytes:
    """An Ethernet/IPv4 ARP message (the Ethernet payload)."""
    return _ARP.pack(1, ETH_P_IP, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip)


def build_ipv4(
    src: bytes, dst: bytes, proto: int, payload: Buffer, *,
    ttl: int = 64, ident: int = 0, tos: int = 0, df: bool = True, options: bytes = b"",
) -> bytes:  # fmt: skip
    """An IPv4 packet with its header checksum; ``options`` padded to 4 bytes."""
    header = _ipv4_header(src, dst, proto, len(payload), ttl, ident, tos, df, options)
    return b"".join((header, payload))


def build_ipv6(
    src: bytes, dst: bytes, proto: int, payload: Buffer, *,
    ttl: int = 64, tclass: int = 0, flow_label: int = 0,
) -> bytes:  # fmt: skip
    """An IPv6 packet; ``proto`` is the next header, ``ttl`` the hop limit."""
    return b"".join((_ipv6_header(src, dst, proto, len(payload), ttl, tclass, flow_label), payload))


def build_tcp(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
    window: int, payload: Buffer = b"", *, options: bytes = b"",
) -> bytes:  # fmt: skip
    """A TCP segment with its checksum over the pseudo-header of ``src``/``dst``."""
    header = _tcp_header(src, dst, sport, dport, seq, ack, flags, window, payload, options)
    return b"".join((header, payload))


def build_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: Buffer = b"") -> bytes:
    """A UDP datagram with its checksum (never 0: 0 would mean "none")."""
    return b"".join((_udp_header(src, dst, sport, dport, payload), payload))


def build_icmp(
    src: bytes, dst: bytes, icmp_type: int, code: int, ident: int, seq: int, body: Buffer = b""
) -> bytes:
    """An ICMPv4 message; ``src``/``dst`` only mirror ``build_icmpv6`` (no pseudo-header)."""
    return b"".join((_icmp_header(0, icmp_type, code, ident, seq, body), body))


def build_icmpv6(
    src: bytes, dst: bytes, icmp_type: int, code: int, ident: int, seq: int, body: Buffer = b""
) -> bytes:
    """An ICMPv6 message with its checksum over the IPv6 pseudo-header."""
    header = _icmp_header(_icmpv6_pseudo(src, dst, body), icmp_type, code, ident, seq, body)
    return b"".join((header, body))


def tcp_options(
    mss: int | None = None, wscale: int | None = None, sack_ok: bool = False,
    ts: tuple[int, int] | None = None,
) -> bytes:  # fmt: skip
    """TCP options laid out as Linux does, padded with NOPs to a multiple of 4 bytes.

    ``ts`` is ``(ts_val, ts_ecr)``.
    """
    parts = []
    if mss is not None:
        parts.append(struct.pack("!BBH", TCPOPT_MSS, 4, mss))
    if ts is not None:
        lead = b"\x04\x02" if sack_ok else b"\x01\x01"  # SACK-permitted or two NOPs
        parts.append(lead + struct.pack("!BBII", TCPOPT_TIMESTAMP, 10, ts[0], ts[1]))
    elif sack_ok:
        parts.append(b"\x01\x01\x04\x02")
    if wscale is not None:
        parts.append(struct.pack("!BBBB", TCPOPT_NOP, TCPOPT_WSCALE, 3, wscale))
    return b"".join(parts)


def build_frame_ip(
    eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, proto: int, l4: Buffer, *,
    ttl: int = 64,
) -> bytes:  # fmt: skip
    """Ethernet + IPv4 or IPv6 (by the length of ``src``) around a ready L4 message."""
    return b"".join((
        _ETH.pack(eth_dst, eth_src, _ethertype_of(src)),
        _ip_header(src, dst, proto, len(l4), ttl),
        l4,
    ))  # fmt: skip


def _frame(
    eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, proto: int,
    l4_header: bytes, payload: Buffer, ttl: int,
) -> bytes:  # fmt: skip
    """Join Ethernet, IP and L4 headers and the payload: one copy of the payload."""
    return b"".join((
        _ETH.pack(eth_dst, eth_src, _ethertype_of(src)),
        _ip_header(src, dst, proto, len(l4_header) + len(payload), ttl),
        l4_header,
        payload,
    ))  # fmt: skip


def build_frame_tcp(
    eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, sport: int, dport: int,
    seq: int, ack: int, flags: int, window: int, payload: Buffer = b"", *,
    options: bytes = b"", ttl: int = 64,
) -> bytes:  # fmt: skip
    """A whole TCP frame (see ``TcpFrameTemplate`` for the per-connection fast path)."""
    header = _tcp_header(src, dst, sport, dport, seq, ack, flags, window, payload, options)
    return _frame(eth_dst, eth_src, src, dst, IPPROTO_TCP, header, payload, ttl)


def build_frame_udp(
    eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, sport: int, dport: int,
    payload: Buffer = b"", *, ttl: int = 64, partial_csum: bool = False,
) -> bytes:  # fmt: skip
    """A whole UDP frame, IPv4 or IPv6 by the length of ``src``; ``partial_csum``:
    the checksum field holds the pseudo-header's sum alone (``Ctx.partial_csum``)."""
    header = _udp_header(src, dst, sport, dport, payload, partial_csum)
    return _frame(eth_dst, eth_src, src, dst, IPPROTO_UDP, header, payload, ttl)


def build_frame_icmp(
    eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, icmp_type: int, code: int,
    ident: int, seq: int, body: Buffer = b"", *, ttl: int = 64,
) -> bytes:  # fmt: skip
    """A whole ICMP (IPv4 ``src``) or ICMPv6 (IPv6 ``src``) frame."""
    proto, header = _icmp_any_header(src, dst, icmp_type, code, ident, seq, body)
    return _frame(eth_dst, eth_src, src, dst, proto, header, body, ttl)


def build_frame_arp(
    eth_dst: bytes, eth_src: bytes, op: int,
    sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes,
) -> bytes:  # fmt: skip
    """A whole ARP frame."""
    return _ETH.pack(eth_dst, eth_src, ETH_P_ARP) + build_arp(
        op, sender_mac, sender_ip, target_mac, target_ip
    )


# ---------------------------------------------------------------- TCP fast path


class TcpFrameTemplate:
    """Headers of one TCP connection toward the guest, patched per segment.

    See "Fast path for TCP data" in the module docstring.
    """

    __slots__ = ("_header", "_tcp_offset", "_ipv4", "_ip_acc", "_tcp_acc", "_pseudo", "_partial")

    def __init__(
        self, eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, sport: int, dport: int,
        *, ttl: int = 64, partial_csum: bool = False,
    ) -> None:  # fmt: skip
        """``partial_csum``: the TCP checksum field holds the pseudo-header's sum
        alone, for a receiver told to complete it (``Ctx.partial_csum``)."""
        self._partial = partial_csum
        self._ipv4 = len(src) == 4
        self._header = build_frame_tcp(
            eth_dst, eth_src, src, dst, sport, dport, 0, 0, 0, 0, ttl=ttl
        )
        self._tcp_offset = len(self._header) - 20
        # Constant parts of the sums: the IPv4 header but its total length,
        # the pseudo-header but its length, and the ports.
        ip_header = bytearray(self._header[ETH_HLEN : self._tcp_offset])
        if self._ipv4:
            ip_header[2:4] = ip_header[10:12] = b"\0\0"  # total length, checksum
        self._ip_acc = csum_partial(ip_header)
        self._pseudo = pseudo_sum(src, dst, IPPROTO_TCP, 0)
        self._tcp_acc = self._pseudo + sport + dport

    def headers(
        self, seq: int, ack: int, flags: int, window: int, payload: Buffer = b"",
        options: bytes = b"",
    ) -> bytearray:  # fmt: skip
        """Ethernet + IP + TCP headers (and ``options``) for a segment carrying ``payload``."""
        header = bytearray(self._header)
        if options:
            header += options
        self._patch(header, _tcp_header_len(options), seq, ack, flags, window, options, payload)
        return header

    def write_headers(
        self, frame: Buffer, seq: int, ack: int, flags: int, window: int, payload: Buffer
    ) -> None:
        """``headers(...)`` (no options) written over the start of ``frame``, whose
        ``payload`` follows them: no buffer made per segment."""
        header = self._header
        frame[: len(header)] = header  # type: ignore[index]
        self._patch(frame, 20, seq, ack, flags, window, b"", payload)

    def _patch(
        self, header: Buffer, tcp_hlen: int, seq: int, ack: int, flags: int, window: int,
        options: bytes, payload: Buffer,
    ) -> None:  # fmt: skip
        """Fill in lengths, sequence numbers, flags, window and checksums."""
        tcp_len = tcp_hlen + len(payload)
        if self._ipv4:
            total = self._tcp_offset - ETH_HLEN + tcp_len
            _U16.pack_into(header, ETH_HLEN + 2, total)
            _U16.pack_into(header, ETH_HLEN + 10, csum_fold(self._ip_acc + total))
        else:
            _U16.pack_into(header, ETH_HLEN + 4, tcp_len)
        off_flags = tcp_hlen << 10 | flags
        if self._partial:
            csum = needs_csum_field(self._pseudo + tcp_len)
        else:
            csum = _tcp_checksum(self._tcp_acc + tcp_len, seq, ack, off_flags, window, options,
                                 payload)
        _TCP_PATCH.pack_into(header, self._tcp_offset + 4, seq, ack, off_flags, window, csum)

    def build(
        self, seq: int, ack: int, flags: int, window: int, payload: Buffer = b"",
        options: bytes = b"",
    ) -> bytes:  # fmt: skip
        """The whole frame: ``headers(...)`` followed by ``payload``, in one copy."""
        return b"".join((self.headers(seq, ack, flags, window, payload, options), payload))
