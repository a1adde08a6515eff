"""DHCPv4 server for the one guest: its address, router, resolvers, search list, MTU.

Theory of operation
-------------------
The guest (or pasta's namespace, without ``--config-net``) configures IPv4
the way it would on any LAN: it broadcasts a DHCPDISCOVER.  There is exactly
one address to hand out, the guest's (``NetInfo.addr4``, normally the
host's own), so the "server" has no pool and no lease database: every
DISCOVER gets an OFFER of that address and every REQUEST for it an ACK, with
an infinite lease (as upstream does: nothing to renew, nothing to expire).
A REQUEST for another address (a lease the guest remembers from elsewhere)
gets a NAK, so that the client starts over and learns the right one; a
REQUEST naming another server is none of our business; an INFORM gets the
configuration without a lease.  Upstream answers DISCOVER and REQUEST only;
NAK and INFORM are the RFC 2131 behaviour it lacks, and cost a few lines.

Everything the replies carry is fixed for the life of the process, so
``DhcpServer`` encodes every option value once, at start; a reply is the
fixed BOOTP header with the request's identifiers patched in, plus the
options in the client's preferred order (upstream's rule: the message type
first, then what the client's parameter request list asks for, in its
order, then everything else by number).  Options that do not fit in the
client's maximum message size (option 57, 576 bytes by default) are left
out, least wanted first, and counted; a value longer than 255 bytes (a long
search list) is split over several options as RFC 3396 says.  Replies are
padded to the 300 bytes of a BOOTP message, as some clients require.

The options: subnet mask (1), router (3), DNS servers (6, unless the
resolvers are not to be advertised, see ``hostnet``), interface MTU (26,
unless ``--mtu 0``), lease time (51, infinite), server identifier (54, the
gateway address, which is also the reply's source), domain search list
(119, RFC 3397, uncompressed: compression is optional and the list is
short), host name (12, ``-H``) and client FQDN (81, ``--fqdn``, RFC 4702, in
wire format, as upstream 2026), and, only when the gateway lies outside the
guest's subnet (a /32 guest, say), classless static routes (121) to reach it
at all.

Addressing follows RFC 2131 4.1: a client that already has an address
(``ciaddr``) gets a unicast to it; a client that asked for broadcast gets a
broadcast (Ethernet broadcast too); any other reply is sent to the offered
address at the client's MAC, which is all a link with one guest needs.

Nothing a guest sends may raise: every length is checked, option parsing
stops at the end of the buffer, and anything we cannot or will not answer
is counted as ``drop.dhcp_<reason>``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from passt.checksum import Buffer
from passt.l2.common import answer, encode_domain_names, made_on_first_use
from passt.packet import Packet, ParseError, build_frame_udp, parse_udp
from passt.record import NamedTuple

if TYPE_CHECKING:
    from passt.context import Ctx
    from passt.host.hostnet import NetInfo

SERVER_PORT = 67
CLIENT_PORT = 68

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC = b"\x63\x82\x53\x63"

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_MTU = 26
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_MSG_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_LIST = 55
OPT_MAX_SIZE = 57
OPT_CLIENT_FQDN = 81
OPT_SEARCH = 119
OPT_CLASSLESS_ROUTES = 121
OPT_END = 255

INFINITE = 0xFFFFFFFF
FLAG_BROADCAST = 0x8000
REPLY_TTL = 255  # as upstream

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s")
_SNAME_FILE = bytes(64 + 128)
OPTIONS_OFFSET = _BOOTP.size + len(_SNAME_FILE) + len(MAGIC)  # 240
MIN_OPTIONS = 300 - OPTIONS_OFFSET  # a BOOTP message is at least 300 bytes
DEFAULT_MAX_MESSAGE = 576  # RFC 2131: what every client accepts
_IP_UDP_HLEN = 20 + 8
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

BROADCAST_MAC = b"\xff" * 6
_ANY4 = bytes(4)
_BROADCAST4 = b"\xff" * 4


class DhcpRequest(NamedTuple):
    """The fields of a client message we answer from."""

    msg_type: int
    htype: int
    hlen: int
    xid: int
    flags: int
    ciaddr: bytes
    giaddr: bytes
    chaddr: bytes  # the whole 16-byte field, echoed as it came
    options: dict[int, bytes]


class DhcpReply(NamedTuple):
    frame: bytes
    msg_type: int
    left_out: int  # options that did not fit in the client's maximum message size


# ---------------------------------------------------------------- parsing


def parse_options(buf: Buffer) -> dict[int, bytes]:
    """Options up to END (or the end of ``buf``); repeated codes are joined (RFC 3396)."""
    options: dict[int, bytes] = {}
    view = memoryview(buf)
    end = len(view)
    i = 0
    while i < end:
        code = view[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            break
        if i + 1 >= end:
            raise ParseError(f"DHCP option {code} has no length byte", "dhcp_option")
        length = view[i + 1]
        if i + 2 + length > end:
            raise ParseError(f"DHCP option {code} of {length} bytes overruns", "dhcp_option")
        value = bytes(view[i + 2 : i + 2 + length])
        options[code] = options[code] + value if code in options else value
        i += 2 + length
    return options


def parse_request(payload: Buffer) -> DhcpRequest:
    """A BOOTREQUEST with DHCP options; ``ParseError`` for anything else."""
    if len(payload) < OPTIONS_OFFSET:
        raise ParseError(f"DHCP message of {len(payload)} bytes", "dhcp_short")
    op, htype, hlen, _hops, xid, _secs, flags, ciaddr, _yi, _si, giaddr, chaddr = (
        _BOOTP.unpack_from(payload)
    )
    if op != BOOTREQUEST:
        raise ParseError(f"BOOTP op {op} from a client", "dhcp_op")
    if bytes(payload[OPTIONS_OFFSET - 4 : OPTIONS_OFFSET]) != MAGIC:
        raise ParseError("no DHCP magic cookie: plain BOOTP", "dhcp_magic")
    if hlen > len(chaddr):
        raise ParseError(f"hardware address length {hlen}", "dhcp_hlen")
    options = parse_options(memoryview(payload)[OPTIONS_OFFSET:])
    msg_type = options.get(OPT_MSG_TYPE, b"")
    if len(msg_type) != 1:
        raise ParseError("DHCP message without a valid message type", "dhcp_msg_type")
    return DhcpRequest(msg_type[0], htype, hlen, xid, flags, ciaddr, giaddr, chaddr, options)


# ---------------------------------------------------------------- encoding


def encode_option(code: int, value: bytes) -> bytes:
    """One option, split into 255-byte pieces if longer (RFC 3396)."""
    if not value:
        return bytes((code, 0))
    return b"".join(
        bytes((code, len(value[i : i + 255]))) + value[i : i + 255]
        for i in range(0, len(value), 255)
    )


def _classless_routes(gateway: bytes) -> bytes:
    """RFC 3442: the gateway as an on-link /32, then the default route through it."""
    return bytes((32,)) + gateway + _ANY4 + bytes((0,)) + gateway


# ---------------------------------------------------------------- the server


class DhcpServer:
    """Answers for one guest address; options encoded once (see module docstring)."""

    def __init__(self, net: NetInfo) -> None:
        if net.addr4 is None or net.gw4 is None:
            raise ValueError("DHCP needs an IPv4 address and gateway for the guest")
        self.mac = net.mac
        self.address = net.addr4.packed
        self.server_id = net.gw4.packed
        self.lease_options = self._lease_options(net, net.gw4)
        self.nak_options = {OPT_SERVER_ID: self.server_id}

    def _lease_options(self, net: NetInfo, gateway: IPv4Address) -> dict[int, bytes]:
        """Option values of OFFER and ACK, by code, in ascending order."""
        subnet = IPv4Network((self.address, net.prefix4), strict=False)
        options = {
            OPT_SUBNET_MASK: subnet.netmask.packed,
            OPT_ROUTER: self.server_id,
            OPT_LEASE_TIME: _U32.pack(INFINITE),
            OPT_SERVER_ID: self.server_id,
        }
        if net.dhcp_dns:
            dns = b"".join(a.packed for a in net.dns if a.version == 4)
            if dns:
                options[OPT_DNS] = dns
        if net.mtu:
            options[OPT_MTU] = _U16.pack(net.mtu)
        if net.dhcp_search:
            search = encode_domain_names(net.search)
            if search:
                options[OPT_SEARCH] = search
        if gateway not in subnet:
            options[OPT_CLASSLESS_ROUTES] = _classless_routes(self.server_id)
        if net.hostname:
            options[OPT_HOSTNAME] = net.hostname.encode()
        fqdn = encode_domain_names((net.fqdn,)) if net.fqdn else b""
        if fqdn:    # RFC 4702: flags E (wire format), RCODE1 and RCODE2 255, as upstream
            options[OPT_CLIENT_FQDN] = b"\x04\xff\xff" + fqdn
        return dict(sorted(options.items()))

    def reply(self, eth_src: bytes, req: DhcpRequest) -> DhcpReply:
        """The answer to ``req`` from the client at ``eth_src``.

        Raises ``ParseError`` with the reason a request goes unanswered.
        """
        msg_type, yiaddr, options = self._decide(req)
        payload, left_out = self._payload(req, msg_type, yiaddr, options)
        dst_ip, dst_mac = self._destination(req, msg_type, yiaddr, eth_src)
        frame = build_frame_udp(
            dst_mac, self.mac, self.server_id, dst_ip, SERVER_PORT, CLIENT_PORT, payload,
            ttl=REPLY_TTL,
        )  # fmt: skip
        return DhcpReply(frame, msg_type, left_out)

    def _decide(self, req: DhcpRequest) -> tuple[int, bytes, dict[int, bytes]]:
        """(reply type, yiaddr, options) for ``req``; ``ParseError`` to stay silent."""
        kind = req.msg_type
        if kind == DISCOVER:
            return OFFER, self.address, self.lease_options
        if kind == REQUEST:
            server = req.options.get(OPT_SERVER_ID)
            if server is not None and server != self.server_id:
                raise ParseError("REQUEST for another server", "dhcp_other_server")
            wanted = req.options.get(OPT_REQUESTED_IP) or req.ciaddr
            if wanted != self.address:
                return NAK, _ANY4, self.nak_options
            return ACK, self.address, self.lease_options
        if kind == INFORM:
            informed = {k: v for k, v in self.lease_options.items() if k != OPT_LEASE_TIME}
            return ACK, _ANY4, informed
        raise ParseError(f"DHCP message type {kind} needs no answer", "dhcp_msg_type")

    def _payload(
        self, req: DhcpRequest, msg_type: int, yiaddr: bytes, options: dict[int, bytes]
    ) -> tuple[bytes, int]:
        """The BOOTREPLY and how many options did not fit."""
        header = _BOOTP.pack(
            BOOTREPLY, req.htype, req.hlen, 0, req.xid, 0, req.flags,
            req.ciaddr if msg_type != NAK else _ANY4, yiaddr, _ANY4, req.giaddr, req.chaddr,
        )  # fmt: skip
        body, left_out = pack_options(
            msg_type, options, req.options.get(OPT_PARAM_LIST, b""), _max_options(req)
        )
        return b"".join((header, _SNAME_FILE, MAGIC, body)), left_out

    @staticmethod
    def _destination(
        req: DhcpRequest, msg_type: int, yiaddr: bytes, eth_src: bytes
    ) -> tuple[bytes, bytes]:
        """(IP, MAC) the reply goes to, per RFC 2131 4.1."""
        if req.ciaddr != _ANY4 and msg_type != NAK:
            return req.ciaddr, eth_src
        if req.flags & FLAG_BROADCAST or msg_type == NAK:
            return _BROADCAST4, BROADCAST_MAC
        return yiaddr, eth_src


def _max_options(req: DhcpRequest) -> int:
    """Room for options (END included) within the client's maximum message size."""
    raw = req.options.get(OPT_MAX_SIZE, b"")
    size = _U16.unpack(raw)[0] if len(raw) == 2 else 0
    return max(size, DEFAULT_MAX_MESSAGE) - _IP_UDP_HLEN - OPTIONS_OFFSET


def pack_options(
    msg_type: int, options: dict[int, bytes], wanted: Sequence[int], room: int
) -> tuple[bytes, int]:
    """Message type first, then ``wanted`` in order, then the rest; END; padding.

    Returns the options area and the number of options that did not fit.
    """
    order = [code for code in dict.fromkeys(wanted) if code in options]
    order += [code for code in options if code not in order]
    parts = [bytes((OPT_MSG_TYPE, 1, msg_type))]
    used = 3 + 1  # message type, END
    left_out = 0
    for code in order:
        encoded = encode_option(code, options[code])
        if used + len(encoded) > room:
            left_out += 1
            continue
        parts.append(encoded)
        used += len(encoded)
    parts.append(bytes((OPT_END,)))
    if used < MIN_OPTIONS:
        parts.append(bytes(MIN_OPTIONS - used))
    return b"".join(parts), left_out


# ---------------------------------------------------------------- the handler

_REPLY_NAMES = {OFFER: "offer", ACK: "ack", NAK: "nak"}


def init(ctx: Ctx) -> DhcpServer | None:
    """Build the server from ``ctx.net`` into ``ctx.dhcp`` (``None`` without IPv4)."""
    server = DhcpServer(ctx.net) if ctx.net.addr4 is not None else None
    ctx.dhcp = server
    return server


def respond(ctx: Ctx, pkt: Packet) -> tuple[bytes, str]:
    """The answer to a client message and its counter (see ``l2common``)."""
    server = made_on_first_use(ctx.dhcp, lambda: init(ctx), ("DHCP without IPv4", "dhcp_no_ipv4"))
    reply = server.reply(pkt.eth_src, parse_request(parse_udp(pkt.l4).payload))
    ctx.stats["dhcp.options_left_out"] += reply.left_out
    return reply.frame, "dhcp." + _REPLY_NAMES[reply.msg_type]


def from_tap(ctx: Ctx, pkt: Packet) -> None:
    """Answer a client message routed to UDP port 67; count whatever is dropped."""
    answer(ctx, pkt, respond)
