"""Forwarding rules as upstream 2026 keeps them: the tables ``pesto`` shows and changes.

Theory of operation
-------------------
Upstream 2026 describes what a running passt or pasta forwards as one table
of rules per *initiating interface* ("pif"): ``HOST`` (``-t``/``-u``: the
host's ports reach the guest or namespace) and, for pasta, ``SPLICE``
(``-T``/``-U``: the namespace's ports reach the host).  A rule forwards a
range of ports of one protocol, from one bind address (or any address of
both families: ``DUAL_STACK_ANY``) and optionally one interface, to a range
of the same length on the other side.  Two flags qualify it: ``WEAK`` (best
effort: ports that cannot be bound are skipped, as ``all`` does) and
``SCAN`` (only while the port is bound on the other side: ``auto``).

This module is that model, free of I/O: ``Rule`` (and its 56-byte wire
form, ``struct fwd_rule``), ``Table`` with upstream's validation on add
(``fwd_rule_add``: port ranges, flags, families and protocols the instance
has, no two rules overlapping) and exact-match delete, the port-spec parser
that turns ``-t 8080:80`` into rules (the grammar is ``ports.py``'s, so
the messages are ours; the rules are upstream's), and the one-line format
``pesto`` prints (``fwd_rule_fmt``).

``rules_from_portfwd`` is the bridge from the command line: the tables a
running instance starts with are derived from its ``Conf`` the same way a
client derives them from its own options.
"""

from __future__ import annotations

import ipaddress
import struct

from passt.ports import NUM_PORTS, ConfError, PortFwd, parse_port_spec
from passt.record import field, record

PIF_NONE = 0
PIF_HOST = 1
PIF_TAP = 2
PIF_SPLICE = 3
PIF_NAMES = {PIF_HOST: "HOST", PIF_TAP: "TAP", PIF_SPLICE: "SPLICE"}

CAP_IPV4 = 1 << 0
CAP_IPV6 = 1 << 1
CAP_TCP = 1 << 2
CAP_UDP = 1 << 3
CAP_SCAN = 1 << 4
CAP_IFNAME = 1 << 5

DUAL_STACK_ANY = 1 << 0
WEAK = 1 << 1
SCAN = 1 << 2
ALLOWED_FLAGS = DUAL_STACK_ANY | WEAK | SCAN

IPPROTO_TCP = 6
IPPROTO_UDP = 17
PROTO_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP"}

IFNAMSIZ = 16
MAX_FWD_RULES = 255                 # FWD_RULE_BITS = 8
RULE_WIRE = struct.Struct("!16s16s16sHHHBB")
RULE_SIZE = RULE_WIRE.size          # 56, as upstream's unpadded struct fwd_rule

ANY6 = ipaddress.IPv6Address("::")
ANY4 = ipaddress.IPv6Address("::ffff:0.0.0.0")
EPHEMERAL_DEFAULT = (49152, 65535)  # RFC 6335, when the sysctl cannot be read


class RuleError(ValueError):
    """A rule or spec that cannot go into a table; ``str(e)`` is one line."""


def inany(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """An address as upstream's ``union inany_addr``: IPv4 mapped into IPv6."""
    if addr.version == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
    return addr


def plain(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The inverse of ``inany``: a mapped address as IPv4."""
    return addr.ipv4_mapped or addr


@record(frozen=True, slots=True)
class Rule:
    """``struct fwd_rule``: ports ``first``-``last`` of ``proto`` go to ``to``... ."""

    proto: int
    first: int
    last: int
    to: int
    addr: ipaddress.IPv6Address = ANY6
    taddr: ipaddress.IPv6Address = ANY6
    ifname: str = ""
    flags: int = 0

    @property
    def dual_stack(self) -> bool:
        return bool(self.flags & DUAL_STACK_ANY)

    def target_of(self, port: int) -> int:
        return port - self.first + self.to

    def ports(self) -> range:
        return range(self.first, self.last + 1)

    def encode(self) -> bytes:
        name = self.ifname.encode()
        return RULE_WIRE.pack(self.addr.packed, self.taddr.packed, name.ljust(IFNAMSIZ, b"\0"),
                              self.first, self.last, self.to, self.proto, self.flags)

    @classmethod
    def decode(cls, data: bytes) -> Rule:
        """A rule from its wire form; raises ``RuleError`` for an unterminated name."""
        addr, taddr, name, first, last, to, proto, flags = RULE_WIRE.unpack(data)
        if name[-1]:
            raise RuleError("Interface name was not NULL terminated")
        ifname = name.split(b"\0", 1)[0].decode(errors="surrogateescape")
        return cls(proto, first, last, to, ipaddress.IPv6Address(addr),
                   ipaddress.IPv6Address(taddr), ifname, flags)

    def __str__(self) -> str:
        """As upstream's ``fwd_rule_fmt`` (pesto's output, trailing space included)."""
        addr = "*" if self.dual_stack else str(plain(self.addr))
        iface = f"%{self.ifname}" if self.ifname else ""
        taddr = "" if self.taddr == ANY6 else f"{plain(self.taddr)}:"
        weak = " (best effort)" if self.flags & WEAK else ""
        scan = " (auto-scan)" if self.flags & SCAN else ""
        proto = PROTO_NAMES.get(self.proto, "?")
        if self.first == self.last:
            ports, targets = f"{self.first}", f"{self.to}"
        else:
            ports = f"{self.first}-{self.last}"
            targets = f"{self.to}-{self.to + self.last - self.first}"
        return f"{proto} [{addr}]{iface}:{ports}  =>  {taddr}{targets} {weak}{scan}"

    def conflicts(self, other: Rule) -> bool:
        """Same protocol, overlapping addresses and overlapping ports."""
        if self.proto != other.proto:
            return False
        if not (self.dual_stack or other.dual_stack or self.addr == other.addr):
            return False
        return not (self.last < other.first or other.last < self.first)


@record(slots=True)
class Table:
    """The rules of one pif, and what that pif can forward (``CAP_*``)."""

    caps: int
    rules: list[Rule] = field(default_factory=list)

    def add(self, new: Rule) -> None:
        """Validate ``new`` as upstream's ``fwd_rule_add`` does, then append it."""
        self.check(new)
        for rule in self.rules:
            if new.conflicts(rule):
                raise RuleError(f"Forwarding configuration conflict: {new} versus {rule}")
        if len(self.rules) >= MAX_FWD_RULES:
            raise RuleError(f"Too many rules (maximum {MAX_FWD_RULES})")
        self.rules.append(new)

    def check(self, new: Rule) -> None:
        if not 0 < new.first <= new.last < NUM_PORTS:
            raise RuleError(f"Rule has invalid port range {new.first}-{new.last}")
        if not 0 < new.to or new.to + new.last - new.first >= NUM_PORTS:
            raise RuleError("Forwarding rule attempts to map to port 0")
        if new.flags & ~ALLOWED_FLAGS:
            raise RuleError(f"Rule has invalid flags 0x{new.flags & ~ALLOWED_FLAGS:x}")
        v4 = new.addr.ipv4_mapped is not None
        if new.dual_stack:
            if new.addr != ANY6:
                raise RuleError(f"Dual stack rule has non-wildcard address {new.addr}")
            needed = [("IPv4", CAP_IPV4), ("IPv6", CAP_IPV6)]
        else:
            needed = [("IPv4", CAP_IPV4)] if v4 else [("IPv6", CAP_IPV6)]
        for name, cap in needed:
            if not self.caps & cap:
                raise RuleError(f"{name} forward, but {name} not enabled")
        proto_cap = {IPPROTO_TCP: CAP_TCP, IPPROTO_UDP: CAP_UDP}.get(new.proto)
        if proto_cap is None:
            raise RuleError(f"Unsupported protocol 0x{new.proto:x} for forwarding rule")
        if not self.caps & proto_cap:
            raise RuleError(f"Can't add {PROTO_NAMES[new.proto]} forwarding rule, "
                            f"{PROTO_NAMES[new.proto]} not enabled")
        if new.flags & SCAN and not self.caps & CAP_SCAN:
            raise RuleError("'auto' port forwarding is only allowed for pasta")
        if new.taddr != ANY6:
            if new.taddr.is_multicast or plain(new.taddr).is_multicast:
                raise RuleError(f"Multicast target address {plain(new.taddr)} for forwarding rule")
            if new.dual_stack:
                raise RuleError(f"Dual stack forward to {plain(new.taddr)} unsupported")
            if (new.taddr.ipv4_mapped is None) != (not v4):
                raise RuleError(f"Forward from {plain(new.addr)} to {plain(new.taddr)} "
                                "unsupported")

    def delete(self, old: Rule) -> None:
        """Remove the rule equal to ``old``; a rule that overlaps it without matching
        it, or none at all, is an error (upstream's ``fwd_rule_del``)."""
        for i, rule in enumerate(self.rules):
            if rule == old:
                del self.rules[i]
                return
            if old.conflicts(rule):
                raise RuleError(f"Specifier {old} conflicts with rule {rule}, "
                                "but doesn't match it, can't delete")
        raise RuleError(f"Couldn't find forwarding rule to delete: {old}")

    def clear(self) -> None:
        self.rules.clear()


# -- from port specs to rules -------------------------------------------------


def _ranges_except(excluded: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ports 1-65535 outside the (unsorted, maybe overlapping) ``excluded``."""
    out, start = [], 1
    for first, last in sorted(excluded):
        if first > start:
            out.append((start, first - 1))
        start = max(start, last + 1)
    if start < NUM_PORTS:
        out.append((start, NUM_PORTS - 1))
    return out


def _has_includes(spec: str) -> bool:
    """Whether an ``auto`` spec names ports (``80-82,auto``) rather than only exclusions."""
    body = spec.rpartition("/")[2]
    return any(item and item not in ("auto", "all") and not item.startswith("~")
               for item in body.split(","))


def rules_from_portfwd(pf: PortFwd, proto: int, ns_side: bool, caps: int,
                       ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT) -> list[Rule]:
    """The rules upstream would make from the option(s) ``pf`` was parsed from.

    ``ns_side``: ``-T``/``-U``, which listen on the namespace's loopback
    (``lo``, both families).  ``all`` and exclusion-only specs skip the
    ephemeral ports and are best effort, as upstream's.
    """
    if pf.mode == "none":
        return []
    if pf.mode == "spec":
        pieces = [(r.first, r.last, r.target, r.addr, r.ifname, 0) for r in pf.ranges]
    else:
        scan = SCAN if pf.mode == "auto" else 0
        excluded = list(pf.excluded)
        flags = scan
        if not (scan and any(_has_includes(s) for s in pf.specs)):
            excluded.append(ephemeral)
            flags |= WEAK
        pieces = [(a, b, a, pf.addr, pf.ifname, flags) for a, b in _ranges_except(excluded)]
    rules = []
    for first, last, target, addr, ifname, flags in pieces:
        for bind in _bind_addrs(addr, caps):
            rules.append(Rule(proto, first, last, target, bind or ANY6, ANY6,
                              "lo" if ns_side else (ifname or ""),
                              flags | (DUAL_STACK_ANY if bind is None else 0)))
    return rules


def _bind_addrs(addr: object, caps: int) -> list[ipaddress.IPv6Address | None]:
    """Bind addresses of the rules for one piece; ``None`` stands for dual stack
    (no address given and both families enabled)."""
    if addr is not None:
        return [inany(addr)]  # type: ignore[arg-type]
    if caps & CAP_IPV4 and caps & CAP_IPV6:
        return [None]
    return [ANY4 if caps & CAP_IPV4 else ANY6]


OPTION_PROTO = {"t": (IPPROTO_TCP, False), "u": (IPPROTO_UDP, False),
                "T": (IPPROTO_TCP, True), "U": (IPPROTO_UDP, True)}
_LONG = {"t": "--tcp-ports", "u": "--udp-ports", "T": "--tcp-ns", "U": "--udp-ns"}


def rules_from_spec(option: str, spec: str, caps: int,
                    ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT) -> list[Rule]:
    """Rules for ``-t``/``-u``/``-T``/``-U SPEC`` against a pif with ``caps``.

    ``none`` gives no rules.  Raises ``RuleError`` with a one-line reason.
    """
    proto, ns_side = OPTION_PROTO[option]
    # Exclusions alone mean "all but those" (best effort), as upstream's pesto
    # has it, not ``auto`` as on pasta's command line.
    mode = "pasta" if caps & CAP_SCAN and "auto" in spec else "passt"
    try:
        pf = parse_port_spec(spec, mode, _LONG[option])
    except ConfError as e:
        raise RuleError(str(e)) from None
    return rules_from_portfwd(pf, proto, ns_side, caps, ephemeral)


def apply_spec(table: Table, option: str, spec: str, delete: bool,
               ephemeral: tuple[int, int] = EPHEMERAL_DEFAULT) -> None:
    """Add (or ``delete``) the rules of one spec to ``table``, all or nothing."""
    rules = rules_from_spec(option, spec, table.caps, ephemeral)
    if spec == "none" and not delete:
        proto = OPTION_PROTO[option][0]
        if any(r.proto == proto for r in table.rules):
            raise RuleError(f"-{option} none conflicts with previous options")
    work = Table(table.caps, list(table.rules))
    for rule in rules:
        if delete:
            work.delete(rule)
        else:
            work.add(rule)
    table.rules[:] = work.rules


def read_ephemeral(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The host's ephemeral port range (RFC 6335's if it cannot be read)."""
    try:
        with open(path) as f:
            first, last = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return EPHEMERAL_DEFAULT
    if not 0 < first <= last < NUM_PORTS:
        return EPHEMERAL_DEFAULT
    return first, last
