"""rtnetlink, the little we need of it: dump links, addresses and routes; set
a link up, add an address, add a route; and, from sock_diag, the listening
TCP sockets.

Theory of operation
-------------------
Host discovery (``hostnet``) reads the host's links, addresses and routes,
and pasta's ``--config-net`` (``netns``) configures its tap the way ``ip``
would: eight kinds of message in all, each a fixed C header followed by
type-length-value attributes, behind a 16-byte ``nlmsghdr``.  A general
library (pyroute2) describes every message and attribute the kernel knows,
and importing it costs more than everything else pasta does before its
namespace is ready (70-170 ms and 16 MiB, measured in doc/performance.md,
"Start-up and memory"); this module is the kernel ABI for those eight
messages and nothing else, in a millisecond.

It is split as the rest of the package: building requests
(``request``, ``link_body``...) and decoding replies (``messages``,
``attributes``, ``decode_link``...) are pure functions over bytes, tested
without a kernel; ``Rtnl`` is the socket, a blocking ``NETLINK_ROUTE``
socket of the calling thread's network namespace (a netlink socket belongs
to the namespace of the thread that creates it: pasta creates one in its
namespace helper thread), which sends one request at a time and reads until
its answer is complete.  A request the kernel refuses raises ``RtnlError``,
an ``OSError`` with the kernel's ``errno``.

pasta's ``auto`` forwarding asks, every second and on both sides, which TCP
ports are listening.  ``/proc/net/tcp`` answers that by walking the
kernel's whole socket hash, connections included, whoever owns them (6 ms
here for 18 sockets, more on a busy host); sock_diag, asked for listeners
only, walks only the listeners' table.

Addresses travel as packed ``bytes`` (4 or 16), decoded records are
``NamedTuple``s; the caller (``hostnet``) turns them into ``ipaddress``
objects.  Requests are made as ``ip`` makes them: ``NLM_F_CREATE |
NLM_F_EXCL`` for new addresses and routes, so that an existing one is an
``EEXIST`` error, and an acknowledgement asked for every change.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from passt.record import NamedTuple

NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCPF_LISTEN = 1 << 10
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1

_HEADER = struct.Struct("=IHHII")       # nlmsghdr: length, type, flags, seq, port
_IFINFO = struct.Struct("=BxHiII")      # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")       # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")    # rtmsg: family, dst_len, src_len, tos, table,
#                                         protocol, scope, type, flags
_ATTR = struct.Struct("=HH")            # rtattr: length, type
_NEXTHOP = struct.Struct("=HBBi")       # rtnexthop: length, flags, hops, ifindex
_ERROR = struct.Struct("=i")            # nlmsgerr's error, then the request's header
_U32 = struct.Struct("=I")
_DIAG_REQ = struct.Struct("=BBBBI48x")  # inet_diag_req_v2, its inet_diag_sockid all zero
_DIAG_PORT = struct.Struct("!H")        # inet_diag_msg: the local port, at offset 4...
_DIAG_INODE_AT = 68                     # ... and the socket's inode (a u32) at 68

RECV_SIZE = 1 << 16  # more than a dump's batch (32 KiB at most)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class RtnlError(OSError):
    """The kernel refused a request (``errno`` is its error), or answered nonsense."""


class LinkInfo(NamedTuple):
    ifindex: int
    flags: int
    name: str
    mac: bytes


class AddrInfo(NamedTuple):
    family: int
    prefixlen: int
    scope: int
    ifindex: int
    local: bytes | None      # IFA_LOCAL: the address itself (IPv4)
    address: bytes | None    # IFA_ADDRESS: the address (IPv6), the peer's (IPv4 point-to-point)


class RouteInfo(NamedTuple):
    family: int
    dst_len: int
    table: int               # RTA_TABLE when present, rtmsg's 8-bit table otherwise
    protocol: int
    scope: int
    type: int
    dst: bytes | None
    gateway: bytes | None
    oif: int
    priority: int
    hops: tuple[tuple[int, bytes | None], ...]  # RTA_MULTIPATH: (ifindex, gateway) each


# -- building requests ---------------------------------------------------------


def _align(length: int) -> int:
    return (length + 3) & ~3


def attribute(kind: int, payload: bytes) -> bytes:
    """One ``rtattr``, padded to four bytes."""
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + bytes(_align(length) - length)


def request(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A whole message: ``nlmsghdr`` (``NLM_F_REQUEST`` added) and ``body``."""
    return _HEADER.pack(_HEADER.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body


def dump_body(kind: int, family: int = socket.AF_UNSPEC) -> bytes:
    """The fixed header of a dump request of ``kind`` (``RTM_GET*``) for ``family``."""
    if kind == RTM_GETLINK:
        return _IFINFO.pack(family, 0, 0, 0, 0)
    if kind == RTM_GETADDR:
        return _IFADDR.pack(family, 0, 0, 0, 0)
    return _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


def link_body(index: int = 0, name: str | None = None, up: bool = False,
              mtu: int | None = None, mac: bytes | None = None) -> bytes:
    """``ifinfomsg`` for a link by ``index`` (or by ``name``), setting what is given."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)
    if name is not None:
        body += attribute(IFLA_IFNAME, name.encode() + b"\0")
    if mtu is not None:
        body += attribute(IFLA_MTU, _U32.pack(mtu))
    if mac is not None:
        body += attribute(IFLA_ADDRESS, mac)
    return body


def addr_body(index: int, address: Address, prefixlen: int, flags: int = 0) -> bytes:
    """``ifaddrmsg`` adding ``address/prefixlen`` to link ``index`` (as ``ip addr add``)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    packed = address.packed
    return (_IFADDR.pack(family, prefixlen, flags, RT_SCOPE_UNIVERSE, index)
            + attribute(IFA_LOCAL, packed) + attribute(IFA_ADDRESS, packed))


def route_body(index: int, dst: Network, gateway: Address | None, protocol: int,
               metric: int = 0, flags: int = 0) -> bytes:
    """``rtmsg`` adding a main-table unicast route (as ``ip route add``: link scope
    without a gateway)."""
    family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
    body = _RTMSG.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, protocol, scope,
                       RTN_UNICAST, flags)
    if dst.prefixlen:
        body += attribute(RTA_DST, dst.network_address.packed)
    if gateway is not None:
        body += attribute(RTA_GATEWAY, gateway.packed)
    body += attribute(RTA_OIF, _U32.pack(index))
    if metric:
        body += attribute(RTA_PRIORITY, _U32.pack(metric))
    return body


def listeners_body(family: int) -> bytes:
    """``inet_diag_req_v2`` for the listening TCP sockets of ``family``: the
    kernel walks only its table of listeners, not every connection."""
    return _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, TCPF_LISTEN)


# -- decoding replies ------------------------------------------------------------


def messages(buf: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """``(type, flags, seq, payload)`` of each message in one datagram."""
    offset = 0
    while offset + _HEADER.size <= len(buf):
        length, kind, flags, seq, _port = _HEADER.unpack_from(buf, offset)
        if length < _HEADER.size or offset + length > len(buf):
            raise RtnlError(errno.EBADMSG, f"netlink message of length {length}")
        yield kind, flags, seq, buf[offset + _HEADER.size:offset + length]
        offset += _align(length)


def attributes(buf: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes from ``offset`` on, by type (the last of a repeated type)."""
    found = {}
    while offset + _ATTR.size <= len(buf):
        length, kind = _ATTR.unpack_from(buf, offset)
        if length < _ATTR.size:
            break
        found[kind & 0x3FFF] = buf[offset + _ATTR.size:offset + length]  # without NLA_F_* bits
        offset += _align(length)
    return found


def error_code(payload: bytes) -> int:
    """``NLMSG_ERROR``'s errno (0: an acknowledgement)."""
    code: int = _ERROR.unpack_from(payload)[0]
    return -code


def _u32(attrs: dict[int, bytes], kind: int) -> int:
    value = attrs.get(kind)
    return _U32.unpack_from(value)[0] if value and len(value) >= 4 else 0


def decode_link(payload: bytes) -> LinkInfo:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    attrs = attributes(payload, _IFINFO.size)
    name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    return LinkInfo(index, flags, name, attrs.get(IFLA_ADDRESS, b""))


def decode_addr(payload: bytes) -> AddrInfo:
    family, prefixlen, _flags, scope, index = _IFADDR.unpack_from(payload)
    attrs = attributes(payload, _IFADDR.size)
    return AddrInfo(family, prefixlen, scope, index, attrs.get(IFA_LOCAL),
                    attrs.get(IFA_ADDRESS))


def decode_route(payload: bytes) -> RouteInfo:
    (family, dst_len, _src_len, _tos, table, protocol, scope, kind,
     _flags) = _RTMSG.unpack_from(payload)
    attrs = attributes(payload, _RTMSG.size)
    return RouteInfo(family, dst_len, _u32(attrs, RTA_TABLE) or table, protocol, scope, kind,
                     attrs.get(RTA_DST), attrs.get(RTA_GATEWAY), _u32(attrs, RTA_OIF),
                     _u32(attrs, RTA_PRIORITY), _nexthops(attrs.get(RTA_MULTIPATH, b"")))


def decode_listener(payload: bytes) -> tuple[int, int]:
    """``(local port, inode)`` of one ``inet_diag_msg``."""
    return _DIAG_PORT.unpack_from(payload, 4)[0], _U32.unpack_from(payload, _DIAG_INODE_AT)[0]


def _nexthops(buf: bytes) -> tuple[tuple[int, bytes | None], ...]:
    hops = []
    offset = 0
    while offset + _NEXTHOP.size <= len(buf):
        length, _flags, _hops, index = _NEXTHOP.unpack_from(buf, offset)
        if length < _NEXTHOP.size:
            break
        attrs = attributes(buf[offset:offset + length], _NEXTHOP.size)
        hops.append((index, attrs.get(RTA_GATEWAY)))
        offset += _align(length)
    return tuple(hops)


# -- the socket ----------------------------------------------------------------------


class Rtnl:
    """A netlink socket of the calling thread's network namespace: ``NETLINK_ROUTE``,
    or ``NETLINK_SOCK_DIAG`` for ``tcp_listeners``."""

    def __init__(self, protocol: int = NETLINK_ROUTE) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   protocol)
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def transact(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return ``(type, payload)`` of every answer until it is
        complete: ``NLMSG_DONE`` ends a dump, the acknowledgement (asked for every
        other request) anything else.  Raises ``RtnlError``."""
        self._seq += 1
        seq = self._seq
        if flags & NLM_F_DUMP != NLM_F_DUMP:
            flags |= NLM_F_ACK
        self._sock.send(request(kind, flags, seq, body))
        answers: list[tuple[int, bytes]] = []
        while True:
            data, _ancillary, msg_flags, _addr = self._sock.recvmsg(RECV_SIZE)
            if msg_flags & socket.MSG_TRUNC:
                raise RtnlError(errno.EMSGSIZE, "netlink answer truncated")
            for got, _flags, got_seq, payload in messages(data):
                if got_seq != seq:
                    continue
                if got == NLMSG_DONE:
                    return answers
                if got == NLMSG_ERROR:
                    code = error_code(payload)
                    if code:
                        raise RtnlError(code, os.strerror(code))
                    return answers
                answers.append((got, payload))

    def dump(self, kind: int, family: int = socket.AF_UNSPEC) -> list[bytes]:
        return [payload for _type, payload in
                self.transact(kind, NLM_F_DUMP, dump_body(kind, family))]

    def change(self, kind: int, body: bytes, create: bool = False) -> None:
        """A request that changes something (``RtnlError`` if refused)."""
        self.transact(kind, NLM_F_CREATE | NLM_F_EXCL if create else 0, body)

    # -- what hostnet and netns ask for

    def links(self) -> list[LinkInfo]:
        return [decode_link(p) for p in self.dump(RTM_GETLINK)]

    def addrs(self) -> list[AddrInfo]:
        return [decode_addr(p) for p in self.dump(RTM_GETADDR)]

    def routes(self, family: int) -> list[RouteInfo]:
        return [decode_route(p) for p in self.dump(RTM_GETROUTE, family)]

    def tcp_listeners(self, family: int) -> list[tuple[int, int]]:
        """``(port, inode)`` of every listening TCP socket of ``family`` (a
        ``NETLINK_SOCK_DIAG`` socket)."""
        return [decode_listener(payload) for _type, payload in
                self.transact(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, listeners_body(family))]

    def link(self, name: str) -> LinkInfo:
        """The link called ``name`` (``RtnlError`` ``ENODEV`` if there is none)."""
        (answer,) = self.transact(RTM_GETLINK, 0, link_body(name=name))
        return decode_link(answer[1])

    def set_link(self, index: int, up: bool = False, mtu: int | None = None,
                 mac: bytes | None = None) -> None:
        self.change(RTM_NEWLINK, link_body(index, up=up, mtu=mtu, mac=mac))

    def add_addr(self, index: int, address: Address, prefixlen: int, flags: int = 0) -> None:
        self.change(RTM_NEWADDR, addr_body(index, address, prefixlen, flags), create=True)

    def add_route(self, index: int, dst: Network, gateway: Address | None, protocol: int,
                  metric: int = 0, flags: int = 0) -> None:
        self.change(RTM_NEWROUTE, route_body(index, dst, gateway, protocol, metric, flags),
                    create=True)
