"""A minimal DHCPv6 client exchange, as bytes in and out (no I/O here).

Theory of operation: the guest's busybox has no DHCPv6 client, and the
check is about what passt's server answers, not about a client's
scripts.  So the test builds a Solicit here (client identifier from the
interface's MAC, one IA_NA, Rapid Commit, a request for DNS servers), the
guest sends it with socat from port 546 to ff02::1:2 port 547 on its
interface and writes whatever comes back to a file, and the reply is
parsed here.  With Rapid Commit a server may answer with a Reply straight
away; without it, an Advertise: both carry the offered address.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

SOLICIT, ADVERTISE, REPLY = 1, 2, 7
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR = 1, 2, 3, 5
OPT_ORO, OPT_ELAPSED_TIME, OPT_STATUS_CODE, OPT_RAPID_COMMIT = 6, 8, 13, 14
OPT_DNS_SERVERS, OPT_DOMAIN_LIST = 23, 24


def _option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def solicit(mac: str, xid: int = 0x2A2A2A, iaid: int = 1) -> bytes:
    """A Solicit from the client with link-layer address ``mac``."""
    duid_ll = struct.pack("!HH", 3, 1) + bytes.fromhex(mac.replace(":", ""))
    return b"".join(
        [
            struct.pack("!I", (SOLICIT << 24) | (xid & 0xFFFFFF)),
            _option(OPT_CLIENTID, duid_ll),
            _option(OPT_IA_NA, struct.pack("!III", iaid, 0, 0)),
            _option(OPT_ELAPSED_TIME, b"\0\0"),
            _option(OPT_RAPID_COMMIT, b""),
            _option(OPT_ORO, struct.pack("!HH", OPT_DNS_SERVERS, OPT_DOMAIN_LIST)),
        ]
    )


@dataclass
class Answer:
    """What a server's Advertise or Reply offered."""

    msg_type: int
    xid: int
    addresses: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    status: int | None = None
    has_server_id: bool = False


def _options(data: bytes) -> list[tuple[int, bytes]]:
    options, offset = [], 0
    while offset + 4 <= len(data):
        code, length = struct.unpack_from("!HH", data, offset)
        body = data[offset + 4 : offset + 4 + length]
        if len(body) != length:
            raise ValueError(f"option {code} truncated")
        options.append((code, body))
        offset += 4 + length
    return options


def _ipv6(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


def parse(message: bytes) -> Answer:
    """Parse a server message; ValueError if it is not a DHCPv6 message."""
    if len(message) < 4:
        raise ValueError(f"DHCPv6 message too short: {len(message)} bytes")
    header = struct.unpack_from("!I", message)[0]
    answer = Answer(msg_type=header >> 24, xid=header & 0xFFFFFF)
    for code, body in _options(message[4:]):
        if code == OPT_SERVERID:
            answer.has_server_id = True
        elif code == OPT_DNS_SERVERS:
            answer.dns += [_ipv6(body[i : i + 16]) for i in range(0, len(body) - 15, 16)]
        elif code == OPT_STATUS_CODE and len(body) >= 2:
            answer.status = struct.unpack_from("!H", body)[0]
        elif code == OPT_IA_NA and len(body) >= 12:
            answer.addresses += [
                _ipv6(inner[:16])
                for inner_code, inner in _options(body[12:])
                if inner_code == OPT_IAADDR and len(inner) >= 24
            ]
    return answer
