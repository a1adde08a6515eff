"""The configuration protocol of upstream 2026's ``pesto`` (version 2), encoded and decoded.

Theory of operation
-------------------
A client connects to the UNIX socket given with ``-c``; the server speaks
first.  Integers are big-endian; rules are ``fwd_rule.Rule``'s 56 bytes::

    server: hello   "basil:s\\0"  u32 version (2)  u32 PIF_NAME_SIZE (128)  u32 IFNAMSIZ (16)
            per pif u8 pif  name[128] (NUL-terminated)  u32 caps  u32 count  count x rule
            end     u8 0
    client: per pif u8 pif  u32 count  count x rule      (the whole new table)
            end     u8 0                                  (or just close: no change)

The client sends back every table it was shown, changed or not; a table
replaces the running one.  Upstream's server then closes the connection
without a word.  Ours answers with one more message before closing, an
extension the upstream client never reads (it has shut the socket down by
then) and our client reads when it is there::

    server: reply   "basil:r\\0"  u32 status (0: applied)  u32 length  message (UTF-8)

Decoding works on the bytes received so far and returns ``None`` until a
message is complete, so that the server can take a request in pieces from
its event loop without ever blocking, and refuse anything malformed or
larger than the largest valid request (``ProtocolError``).
"""

from __future__ import annotations

import struct

from passt.control_socket.rules import (
    MAX_FWD_RULES,
    PIF_NAMES,
    PIF_NONE,
    RULE_SIZE,
    Rule,
    RuleError,
)
from passt.record import record

MAGIC = b"basil:s\0"
REPLY_MAGIC = b"basil:r\0"
VERSION = 2
PIF_NAME_SIZE = 128
IFNAMSIZ = 16

HELLO = struct.Struct("!8sIII")
PIF_INFO = struct.Struct(f"!B{PIF_NAME_SIZE}sII")
TABLE_HEAD = struct.Struct("!BI")
REPLY_HEAD = struct.Struct("!8sII")
REPLY_MESSAGE_MAX = 4096
# The largest request that can be valid: every table full, then the end byte.
REQUEST_MAX = len(PIF_NAMES) * (TABLE_HEAD.size + MAX_FWD_RULES * RULE_SIZE) + 1


class ProtocolError(Exception):
    """A message that does not follow the protocol; ``str(e)`` says how."""


@record(frozen=True, slots=True)
class PifTable:
    """One table as the server shows it."""

    pif: int
    name: str
    caps: int
    rules: tuple[Rule, ...]


@record(frozen=True, slots=True)
class Reply:
    """Our server's answer to a request (extension)."""

    ok: bool
    message: str


# -- encoding -----------------------------------------------------------------


def encode_hello(version: int = VERSION) -> bytes:
    return HELLO.pack(MAGIC, version, PIF_NAME_SIZE, IFNAMSIZ)


def encode_tables(tables: list[PifTable]) -> bytes:
    """What the server sends after the hello: every table, then the end byte."""
    out = []
    for t in tables:
        out.append(PIF_INFO.pack(t.pif, t.name.encode(), t.caps, len(t.rules)))
        out.extend(r.encode() for r in t.rules)
    out.append(bytes([PIF_NONE]))
    return b"".join(out)


def encode_request(tables: dict[int, list[Rule]]) -> bytes:
    """What a client sends: each new table by pif number, then the end byte."""
    out = []
    for pif, rules in tables.items():
        out.append(TABLE_HEAD.pack(pif, len(rules)))
        out.extend(r.encode() for r in rules)
    out.append(bytes([PIF_NONE]))
    return b"".join(out)


def encode_reply(reply: Reply) -> bytes:
    message = reply.message.encode()[:REPLY_MESSAGE_MAX]
    return REPLY_HEAD.pack(REPLY_MAGIC, 0 if reply.ok else 1, len(message)) + message


# -- decoding -----------------------------------------------------------------


class _Cursor:
    """Reads fixed-size pieces of ``data``; ``None`` from ``take`` means "not yet"."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = bytes(data)
        self.pos = 0

    def take(self, n: int) -> bytes | None:
        if self.pos + n > len(self.data):
            return None
        piece = self.data[self.pos:self.pos + n]
        self.pos += n
        return piece


def decode_hello(data: bytes) -> int | None:
    """The server's protocol version from its hello, ``None`` if incomplete.

    Raises ``ProtocolError`` for a hello this client cannot talk to, in the
    words of upstream's pesto.
    """
    if len(data) < HELLO.size:
        return None
    version: int
    magic, version, name_size, ifnamsiz = HELLO.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("Bad magic number from server")
    if version > VERSION:
        raise ProtocolError(f"Unknown server protocol version {version} > {VERSION}")
    if version == 0:
        raise ProtocolError("Unsupported experimental server protocol")
    if name_size != PIF_NAME_SIZE:
        raise ProtocolError(f"Server has unexpected pif name size ({name_size} not "
                            f"{PIF_NAME_SIZE})")
    if ifnamsiz != IFNAMSIZ:
        raise ProtocolError(f"Server has unexpected IFNAMSIZ ({ifnamsiz} not {IFNAMSIZ})")
    return version


def _rules(cur: _Cursor, count: int) -> list[Rule] | None:
    rules = []
    for _ in range(count):
        raw = cur.take(RULE_SIZE)
        if raw is None:
            return None
        try:
            rules.append(Rule.decode(raw))
        except RuleError as e:
            raise ProtocolError(str(e)) from None
    return rules


def decode_tables(data: bytes) -> tuple[list[PifTable], int] | None:
    """The tables after the hello, and the bytes they took; ``None`` if incomplete."""
    cur = _Cursor(data)
    tables: list[PifTable] = []
    while True:
        pif_b = cur.take(1)
        if pif_b is None:
            return None
        if pif_b[0] == PIF_NONE:
            return tables, cur.pos
        head = cur.take(PIF_INFO.size - 1)
        if head is None:
            return None
        _, raw_name, caps, count = PIF_INFO.unpack(pif_b + head)
        if raw_name[-1]:
            raise ProtocolError("Interface name was not NULL terminated")
        if count > MAX_FWD_RULES:
            raise ProtocolError("Too many forwarding rules")
        name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
        if any(t.pif == pif_b[0] or t.name == name for t in tables):
            raise ProtocolError("Received duplicate interface")
        rules = _rules(cur, count)
        if rules is None:
            return None
        tables.append(PifTable(pif_b[0], name, caps, tuple(rules)))


def decode_request(data: bytes, known: set[int] | frozenset[int]) -> dict[int, list[Rule]] | None:
    """A client's new tables by pif, ``None`` while incomplete.

    ``known``: the pifs that have a table here; anything else, a count over
    the maximum, a pif given twice or more than ``REQUEST_MAX`` bytes
    without an end raises ``ProtocolError``.  Bytes after the end are ignored,
    as upstream does.
    """
    cur = _Cursor(data[:REQUEST_MAX])
    tables: dict[int, list[Rule]] = {}
    while True:
        head1 = cur.take(1)
        if head1 is None:
            break
        pif = head1[0]
        if pif == PIF_NONE:
            return tables
        if pif not in known:
            raise ProtocolError("Received rules for non-existent table")
        if pif in tables:
            raise ProtocolError("Received rules twice for one table")
        rest = cur.take(TABLE_HEAD.size - 1)
        if rest is None:
            break
        (count,) = struct.unpack("!I", rest)
        if count > MAX_FWD_RULES:
            raise ProtocolError(f"Received {count} rules (maximum {MAX_FWD_RULES})")
        rules = _rules(cur, count)
        if rules is None:
            break
        tables[pif] = rules
    if len(data) >= REQUEST_MAX:
        raise ProtocolError(f"Request larger than {REQUEST_MAX} bytes")
    return None


def decode_reply(data: bytes) -> Reply | None:
    """Our server's reply, ``None`` if incomplete."""
    if len(data) < REPLY_HEAD.size:
        return None
    magic, status, length = REPLY_HEAD.unpack_from(data)
    if magic != REPLY_MAGIC or length > REPLY_MESSAGE_MAX:
        raise ProtocolError("Malformed reply from server")
    if len(data) < REPLY_HEAD.size + length:
        return None
    message = data[REPLY_HEAD.size:REPLY_HEAD.size + length].decode(errors="replace")
    return Reply(status == 0, message)
