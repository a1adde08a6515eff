"""DHCPv6 server for the one guest: its exact address, resolvers and search list.

Theory of operation
-------------------
SLAAC (``ndp``) gives the guest an address of its own making in the right
/64; DHCPv6 (RFC 8415) gives it *the* address, the host's, which is what
makes the guest's view of itself match the outside's.  Router
advertisements carry the Managed flag so that clients ask.  As with DHCPv4
there is one address, no pool and no lease state: lifetimes and renewal
times are infinite (upstream's choice), and every answer is built from
``NetInfo`` alone.

Messages and answers, as upstream, plus the RFC's courtesies it skips:

* Solicit → Advertise, or Reply when the client offers Rapid Commit (then
  the Reply carries Rapid Commit too).  A Solicit naming a server is
  discarded (RFC 8415 16.2).
* Request, Renew, Rebind → Reply with the address in each IA_NA the client
  sent (its IAID echoed).  An IA_NA asking for any other address gets
  NotOnLink instead, as upstream does, and the client starts over.
* Confirm → Reply with status Success if every address it lists is ours,
  NotOnLink otherwise.
* Information-Request → Reply with resolvers and search list only.
* Release, Decline → Reply with status Success (nothing to free).

Every answer carries our server identifier (a DUID-LL made of our MAC), the
client's identifier echoed, the DNS servers (option 23) and domain list
(option 24, uncompressed wire format) when they are to be advertised (see
``hostnet``).  A message naming a server that is not us (Request, Renew,
Release, Decline, Information-Request) is somebody else's and discarded;
Solicit, Confirm and Rebind must name none.

Answers go from our link-local address (``ndp.router_address``) port 547
to the client's address and port, at its MAC.  Whatever the guest sends,
parsing checks each option's length against what is left, so garbage is
counted as ``drop.dhcpv6_<reason>`` and never raises.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

from passt.checksum import Buffer
from passt.l2.common import answer, encode_domain_names, made_on_first_use, router_address
from passt.packet import Packet, ParseError, build_frame_udp, parse_udp

if TYPE_CHECKING:
    from passt.context import Ctx
    from passt.host.hostnet import NetInfo

SERVER_PORT = 547
CLIENT_PORT = 546

SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE = range(1, 10)
INFORMATION_REQUEST = 11

OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_IA_NA = 3
OPT_IAADDR = 5
OPT_STATUS_CODE = 13
OPT_RAPID_COMMIT = 14
OPT_DNS_SERVERS = 23
OPT_DOMAIN_LIST = 24
OPT_CLIENT_FQDN = 39

STATUS_SUCCESS = 0
STATUS_NOT_ON_LINK = 4

DUID_LL = 3
HWTYPE_ETHERNET = 1
INFINITE = 0xFFFFFFFF
MAX_DUID = 130  # RFC 8415 11.1: 2-byte type and at most 128 bytes
REPLY_TTL = 255

_HEADER = struct.Struct("!I")  # message type (8 bits), transaction id (24 bits)
_OPTION = struct.Struct("!HH")
_IA_HEADER = struct.Struct("!4sII")  # IAID, T1, T2
_IA_ADDR = struct.Struct("!16sII")  # address, preferred and valid lifetimes

Options = list[tuple[int, memoryview]]


# ---------------------------------------------------------------- parsing


def parse_options(buf: Buffer) -> Options:
    """(code, value) of every option in order; ``ParseError`` if one overruns."""
    view = memoryview(buf)
    end = len(view)
    options: Options = []
    i = 0
    while i < end:
        if i + 4 > end:
            raise ParseError("DHCPv6 option header truncated", "dhcpv6_option")
        code, length = _OPTION.unpack_from(view, i)
        if i + 4 + length > end:
            raise ParseError(f"DHCPv6 option {code} of {length} bytes overruns", "dhcpv6_option")
        options.append((code, view[i + 4 : i + 4 + length]))
        i += 4 + length
    return options


def _first(options: Options, code: int) -> memoryview | None:
    return next((value for c, value in options if c == code), None)


def _ia_addresses(ia: memoryview) -> Iterator[bytes]:
    """The addresses an IA_NA's IAADDR options name."""
    for code, value in parse_options(ia[_IA_HEADER.size :]):
        if code == OPT_IAADDR:
            if len(value) < _IA_ADDR.size:
                raise ParseError("IAADDR option too short", "dhcpv6_ia")
            yield bytes(value[:16])


def _ia_nas(options: Options) -> list[memoryview]:
    ias = [value for code, value in options if code == OPT_IA_NA]
    if any(len(ia) < _IA_HEADER.size for ia in ias):
        raise ParseError("IA_NA option too short", "dhcpv6_ia")
    return ias


# ---------------------------------------------------------------- encoding


def option(code: int, value: bytes) -> bytes:
    return _OPTION.pack(code, len(value)) + value


def status(code: int, message: str) -> bytes:
    return option(OPT_STATUS_CODE, struct.pack("!H", code) + message.encode())


# ---------------------------------------------------------------- the server


class Dhcpv6Server:
    """Answers for one guest address (see the module docstring); no I/O.

    ``partial_csum``: replies carry the UDP checksum partial, as every IPv6
    UDP frame to the guest then does (``Ctx.partial_csum``).
    """

    def __init__(self, net: NetInfo, partial_csum: bool = False) -> None:
        if net.addr6 is None:
            raise ValueError("DHCPv6 needs an IPv6 address for the guest")
        self.partial_csum = partial_csum
        self.mac = net.mac
        self.source = router_address(net)
        self.address = net.addr6.packed
        self.duid = struct.pack("!HH", DUID_LL, HWTYPE_ETHERNET) + net.mac
        self.server_id = option(OPT_SERVERID, self.duid)
        self.iaaddr = option(OPT_IAADDR, _IA_ADDR.pack(self.address, INFINITE, INFINITE))
        self.config = self._config_options(net)

    @staticmethod
    def _config_options(net: NetInfo) -> bytes:
        parts = []
        dns = b"".join(a.packed for a in net.dns if a.version == 6) if net.dhcp_dns else b""
        if dns:
            parts.append(option(OPT_DNS_SERVERS, dns))
        search = encode_domain_names(net.search) if net.dhcp_search else b""
        if search:
            parts.append(option(OPT_DOMAIN_LIST, search))
        fqdn = encode_domain_names((net.fqdn,)) if net.fqdn else b""
        if fqdn:    # RFC 4704: flags (none: we update no DNS), the name
            parts.append(option(OPT_CLIENT_FQDN, b"\x00" + fqdn))
        return b"".join(parts)

    def reply(self, eth_src: bytes, src: bytes, sport: int, message: Buffer) -> tuple[bytes, int]:
        """(frame, reply type) answering ``message``; ``ParseError`` to stay silent."""
        if len(message) < _HEADER.size:
            raise ParseError(f"DHCPv6 message of {len(message)} bytes", "dhcpv6_short")
        word = _HEADER.unpack_from(message)[0]
        kind, xid = word >> 24, word & 0xFFFFFF
        options = parse_options(memoryview(message)[_HEADER.size :])
        client_id = _first(options, OPT_CLIENTID)
        if client_id is None or not 2 < len(client_id) <= MAX_DUID:
            raise ParseError("DHCPv6 message without a valid client identifier", "dhcpv6_client")
        self._check_server_id(kind, _first(options, OPT_SERVERID))
        reply_type, body = self._answer(kind, options)
        payload = b"".join((
            _HEADER.pack(reply_type << 24 | xid), self.server_id,
            option(OPT_CLIENTID, bytes(client_id)), body, self.config,
        ))  # fmt: skip
        frame = build_frame_udp(
            eth_src, self.mac, self.source, src, SERVER_PORT, sport, payload, ttl=REPLY_TTL,
            partial_csum=self.partial_csum,
        )
        return frame, reply_type

    def _check_server_id(self, kind: int, server_id: memoryview | None) -> None:
        if kind in (SOLICIT, CONFIRM, REBIND):
            if server_id is not None:
                raise ParseError(f"DHCPv6 type {kind} naming a server", "dhcpv6_server_id")
        elif server_id is not None and server_id != self.duid:
            raise ParseError("DHCPv6 message for another server", "dhcpv6_other_server")

    def _answer(self, kind: int, options: Options) -> tuple[int, bytes]:
        """(reply type, options between the identifiers and the configuration)."""
        if kind == SOLICIT:
            leases = self._leases(options)
            if _first(options, OPT_RAPID_COMMIT) is not None:
                return REPLY, option(OPT_RAPID_COMMIT, b"") + leases
            return ADVERTISE, leases
        if kind in (REQUEST, RENEW, REBIND):
            return REPLY, self._leases(options)
        if kind == CONFIRM:
            ours = all(a == self.address for ia in _ia_nas(options) for a in _ia_addresses(ia))
            if ours:
                return REPLY, status(STATUS_SUCCESS, "all addresses still on link")
            return REPLY, status(STATUS_NOT_ON_LINK, "address not on link")
        if kind == INFORMATION_REQUEST:
            if _ia_nas(options):
                raise ParseError("Information-Request with an IA", "dhcpv6_ia")
            return REPLY, b""
        if kind in (RELEASE, DECLINE):
            return REPLY, status(STATUS_SUCCESS, "nothing to release")
        raise ParseError(f"DHCPv6 message type {kind} is not for a server", "dhcpv6_type")

    def _leases(self, options: Options) -> bytes:
        """One IA_NA per IA_NA asked for: our address, or NotOnLink for another one."""
        parts = []
        for ia in _ia_nas(options):
            iaid = bytes(ia[:4])
            if all(a == self.address for a in _ia_addresses(ia)):
                parts.append(option(OPT_IA_NA, _IA_HEADER.pack(iaid, INFINITE, INFINITE)
                                    + self.iaaddr))
            else:
                parts.append(option(OPT_IA_NA, _IA_HEADER.pack(iaid, 0, 0)
                                    + status(STATUS_NOT_ON_LINK, "address not on link")))
        return b"".join(parts)


# ---------------------------------------------------------------- the handler

_REPLY_NAMES = {ADVERTISE: "advertise", REPLY: "reply"}


def init(ctx: Ctx) -> Dhcpv6Server | None:
    """Build the server from ``ctx.net`` into ``ctx.dhcpv6`` (``None`` without IPv6)."""
    server = Dhcpv6Server(ctx.net, ctx.partial_csum) if ctx.net.addr6 is not None else None
    ctx.dhcpv6 = server
    return server


def respond(ctx: Ctx, pkt: Packet) -> tuple[bytes, str]:
    """The answer to a client message and its counter (see ``l2common``)."""
    server = made_on_first_use(ctx.dhcpv6, lambda: init(ctx),
                               ("DHCPv6 without IPv6", "dhcpv6_no_ipv6"))
    udp = parse_udp(pkt.l4)
    if pkt.src is None or pkt.src == bytes(16):
        raise ParseError("DHCPv6 from the unspecified address", "dhcpv6_source")
    frame, reply_type = server.reply(pkt.eth_src, pkt.src, udp.sport, udp.payload)
    return frame, "dhcpv6." + _REPLY_NAMES[reply_type]


def from_tap(ctx: Ctx, pkt: Packet) -> None:
    """Answer a client message routed to UDP port 547; count whatever is dropped."""
    answer(ctx, pkt, respond)
