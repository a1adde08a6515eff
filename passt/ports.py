"""Port-forwarding specifications (``-t``, ``-u``, ``-T``, ``-U``) → ``PortFwd``.

Theory of operation
-------------------
Each of the four options describes one direction of one protocol: ``-t``/``-u``
make ports of the host reach the guest or namespace, ``-T``/``-U`` (pasta)
make ports of the namespace reach the host.  An option may be given several
times; each occurrence is parsed on its own by ``parse_port_spec`` into a
``PortFwd``, and ``merge_port_fwds`` adds them up into the one ``PortFwd``
the forwarding code reads.

The grammar, as upstream 2026's (``passt(1)``)::

    SPEC  := none | [ADDR[%IFNAME]/]ITEM[,ITEM]...
    ITEM  := all | auto | [~]PORTS[:PORTS]    (no :PORTS after ~)
    PORTS := PORT | PORT-PORT                 (PORT: 1 to 65535, decimal)

* ``none``: forward nothing.  ``all`` (first, passt and pasta's ``-t``/``-u``):
  every non-ephemeral port that nobody has bound on the host.  ``auto``
  (pasta only): follow the ports bound on the other side; with port items
  (``80-82,auto``) only those ports, when bound (kept as ``auto`` with every
  other port excluded; target ports are not supported there).
* A list forwards ports and ranges; ``:PORTS`` delivers them to other port
  numbers on the other side (a range maps onto a range of the same length).
* ``~PORTS`` excludes ports from the other items of the *same* option; a list
  made only of exclusions means "every port but those": ``all`` in passt,
  ``auto`` in pasta.  Extension: the keyword may also be written first,
  ``all,~22`` / ``auto,~22``.
* ``ADDR/`` binds the listening sockets to an IPv4 or IPv6 address (no
  brackets); ``ADDR%IFNAME/`` also binds them to an interface, and
  ``%IFNAME/`` (extension, as later upstream versions) to an interface only.
  ``-T``/``-U`` take no address: they listen on the namespace's loopback.

As upstream, one port is forwarded at most once per option, whatever the
address: two occurrences forwarding the same port are refused
("Overlapping port specifier"), and the keywords exclude any other
occurrence of the same option.

Representation
--------------
``PortFwd.mode`` is ``"none"``, ``"all"``, ``"auto"`` or ``"spec"``.  For
``spec``, ``ranges`` lists what is forwarded (exclusions already cut out, so
the ranges never overlap), each ``PortRange`` with its target and bind
address/interface.  For ``all`` and ``auto`` the candidates are every port
(1-65535) but ``excluded``, bound to ``addr``/``ifname`` if given; the
forwarding code narrows them to the non-ephemeral free ports (``all``) or to
the ports bound on the other side (``auto``): both are facts of the running
host, not of the command line.

``target(port)`` and ``port in fwd`` are O(1): a read-only 65536-entry table
of target ports (0: not forwarded) is built once per ``PortFwd``.  Nothing
here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from array import array
from collections.abc import Iterator, Sequence

from passt.record import field, record

__all__ = [
    "ConfError", "PortRange", "PortFwd", "parse_port_spec", "merge_port_fwds",
    "default_port_fwd", "valid_ifname", "shown", "NUM_PORTS", "FWD_MODES",
]

NUM_PORTS = 1 << 16
IFNAMSIZ = 16               # interface names: at most IFNAMSIZ - 1 bytes
FWD_MODES = ("none", "all", "auto", "spec")
KEYWORDS = {"passt": "all", "pasta": "auto"}    # the "every port" word of each program
NS_OPTIONS = frozenset({"-T", "-U", "--tcp-ns", "--udp-ns"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DECIMAL = re.compile(r"[0-9]+")
_ZERO_TABLE = memoryview(bytes(2 * NUM_PORTS)).cast("H")


def identity_table() -> bytes:
    """``array("H", range(NUM_PORTS)).tobytes()`` in a tenth of the time (2.8 ms,
    at every start): low and high bytes laid out by two slice assignments."""
    table = bytearray(2 * NUM_PORTS)
    low, high = (0, 1) if sys.byteorder == "little" else (1, 0)
    table[low::2] = bytes(range(256)) * 256
    table[high::2] = b"".join(bytes((h,)) * 256 for h in range(256))
    return bytes(table)


_IDENTITY = identity_table()


class ConfError(Exception):
    """A command-line error; ``str(e)`` is one line naming the option and the problem."""


def shown(value: str) -> str:
    """``value`` as it goes into a one-line message: quoted if empty or unusual."""
    if value and value.isprintable() and not any(c.isspace() for c in value):
        return value
    return repr(value)


def valid_ifname(name: str) -> bool:
    """Whether ``name`` can be a Linux network interface name (as ``dev_valid_name``)."""
    raw = name.encode(errors="surrogateescape")
    if not raw or len(raw) >= IFNAMSIZ or name in (".", ".."):
        return False
    return not any(c in name for c in "/:\0") and not any(c.isspace() for c in name)


@record(frozen=True, slots=True)
class PortRange:
    """Ports ``first``..``last`` forwarded to ``target``..``target + last - first``."""

    first: int
    last: int
    target: int
    addr: IPAddress | None = None
    ifname: str | None = None

    @property
    def target_last(self) -> int:
        return self.target + self.last - self.first

    def ports(self) -> range:
        return range(self.first, self.last + 1)

    def target_of(self, port: int) -> int:
        return port - self.first + self.target


@record(frozen=True, slots=True)
class PortFwd:
    """One direction of one protocol: what to forward, where, and with which target.

    ``specs`` keeps the option values this was parsed from (empty: the default,
    the option was not given).  Compare and hash by content; the lookup tables
    are derived.
    """

    mode: str = "none"
    ranges: tuple[PortRange, ...] = ()
    excluded: tuple[tuple[int, int], ...] = ()
    addr: IPAddress | None = None
    ifname: str | None = None
    specs: tuple[str, ...] = ()
    _targets: memoryview = field(init=False, repr=False, compare=False)
    _where: memoryview = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in FWD_MODES:
            raise ValueError(f"unknown forwarding mode {self.mode!r}")
        if self.mode != "spec" and self.ranges:
            raise ValueError(f"mode {self.mode!r} takes no ranges")
        if self.mode == "none":
            targets, where = _ZERO_TABLE, _ZERO_TABLE
        elif self.mode == "spec":
            tab = array("H", bytes(2 * NUM_PORTS))
            idx = array("H", bytes(2 * NUM_PORTS))
            for i, r in enumerate(self.ranges):
                if not (1 <= r.first <= r.last < NUM_PORTS and 1 <= r.target
                        and r.target_last < NUM_PORTS):
                    raise ValueError(f"bad port range {r}")
                if any(idx[r.first:r.last + 1]):
                    raise ValueError(f"overlapping port range {r}")
                tab[r.first:r.last + 1] = array("H", range(r.target, r.target_last + 1))
                idx[r.first:r.last + 1] = array("H", [i + 1]) * (r.last - r.first + 1)
            targets = memoryview(tab.tobytes()).cast("H")
            where = memoryview(idx.tobytes()).cast("H")
        else:
            tab = array("H", _IDENTITY)
            tab[0] = 0
            for first, last in self.excluded:
                tab[first:last + 1] = array("H", bytes(2 * (last - first + 1)))
            targets, where = memoryview(tab.tobytes()).cast("H"), _ZERO_TABLE
        object.__setattr__(self, "_targets", targets)
        object.__setattr__(self, "_where", where)

    def target(self, port: int) -> int | None:
        """Port on the other side that ``port`` is forwarded to, ``None`` if not forwarded.

        For ``all`` and ``auto`` the port is a candidate (see the module notes).
        """
        if not 0 < port < NUM_PORTS:
            return None
        return self._targets[port] or None

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and 0 < port < NUM_PORTS and self._targets[port] != 0

    def allowed(self, port: int) -> bool:
        """``port in self``: a predicate for ``all``/``auto`` scans (exclusions applied)."""
        return port in self

    def range_of(self, port: int) -> PortRange | None:
        """The ``PortRange`` forwarding ``port`` (``spec`` mode), else ``None``."""
        if not 0 < port < NUM_PORTS:
            return None
        i = self._where[port]
        return self.ranges[i - 1] if i else None

    def binding(self, port: int) -> tuple[IPAddress | None, str | None] | None:
        """Bind address and interface for ``port``'s listener, ``None`` if not forwarded."""
        if port not in self:
            return None
        r = self.range_of(port)
        return (r.addr, r.ifname) if r is not None else (self.addr, self.ifname)

    def forwarded_ports(self) -> tuple[int, ...]:
        """Every forwarded (``spec``) or candidate (``all``, ``auto``) port, ascending."""
        if self.mode == "none":
            return ()
        if self.mode == "spec":
            return tuple(p for r in sorted(self.ranges, key=lambda r: r.first) for p in r.ports())
        return tuple(p for p in range(1, NUM_PORTS) if self._targets[p])

    def items(self) -> Iterator[tuple[int, int]]:
        """``(port, target)`` for every forwarded or candidate port, ascending."""
        for port in self.forwarded_ports():
            yield port, self._targets[port]


def default_port_fwd(mode: str) -> PortFwd:
    """The forwarding of an option not given: ``none`` for passt, ``auto`` for pasta."""
    return PortFwd("auto" if mode == "pasta" else "none")


# -- parsing ------------------------------------------------------------------


class _SpecError(Exception):
    """Internal: what is wrong with a spec, turned into a ``ConfError`` by the caller."""


def _port(text: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise _SpecError(f"bad port number {text!r}" if text else "missing port number")
    port = int(text)
    if not 0 < port < NUM_PORTS:
        raise _SpecError(f"port {port} out of range (1-65535)")
    return port


def _ports(text: str) -> tuple[int, int]:
    first_s, dash, last_s = text.partition("-")
    first = _port(first_s)
    if not dash:
        return first, first
    last = _port(last_s)
    if last < first:
        raise _SpecError(f"reversed range {first}-{last}")
    return first, last


def _item(text: str) -> tuple[int, int, int]:
    """``PORTS[:PORTS]`` → (first, last, target of first)."""
    src, colon, dst = text.partition(":")
    first, last = _ports(src)
    if not colon:
        return first, last, first
    tfirst, tlast = _ports(dst)
    if tlast - tfirst != last - first:
        raise _SpecError(f"target range {dst} is not as long as {src}")
    return first, last, tfirst


def _prefix(text: str, option: str) -> tuple[IPAddress | None, str | None]:
    """The ``ADDR[%IFNAME]`` before the ``/``."""
    if option in NS_OPTIONS:
        raise _SpecError("no bind address or interface with this option")
    addr_s, pct, ifname = text.partition("%")
    if pct and not valid_ifname(ifname):
        raise _SpecError(f"bad interface name {ifname!r}")
    if not addr_s:
        if not pct:
            raise _SpecError("missing address before '/'")
        return None, ifname
    try:
        addr = ipaddress.ip_address(addr_s)
    except ValueError:
        raise _SpecError(f"bad address {addr_s!r}") from None
    return addr, (ifname if pct else None)


def _merge_intervals(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for first, last in sorted(intervals):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return tuple((a, b) for a, b in out)


def _cut(first: int, last: int, target: int, excluded: Sequence[tuple[int, int]]
         ) -> Iterator[tuple[int, int, int]]:
    """Pieces of ``first``..``last`` (target ``target``) outside the sorted ``excluded``."""
    start = first
    for xa, xb in excluded:
        if xb < start or xa > last:
            continue
        if xa > start:
            yield start, xa - 1, target + start - first
        start = xb + 1
        if start > last:
            return
    yield start, last, target + start - first


def _parse(text: str, mode: str, option: str) -> PortFwd:
    if text == "none":
        return PortFwd("none", specs=(text,))
    addr: IPAddress | None = None
    ifname: str | None = None
    body = text
    if "/" in text:
        prefix, _, body = text.partition("/")
        addr, ifname = _prefix(prefix, option)
    if not body:
        raise _SpecError("empty specification")
    items = body.split(",")
    keyword = _keyword(items, mode, option)
    excl: list[tuple[int, int]] = []
    fwds: list[tuple[int, int, int]] = []
    for item in items:
        if not item:
            raise _SpecError("empty item in list")
        if item in ("none", "all", "auto"):
            raise _SpecError(f"'{item}' must be the whole specification")
        if item.startswith("~"):
            if ":" in item:
                raise _SpecError(f"exclusion {item} with a target")
            excl.append(_ports(item[1:]))
        else:
            fwds.append(_item(item))
    excl.sort()
    for (_, a_last), (b_first, _) in zip(excl, excl[1:], strict=False):
        if b_first <= a_last:
            raise _SpecError("overlapping excluded ranges")
    if keyword == "auto" and fwds:      # 80-82,auto: those ports, if bound on the other side
        if any(target != first for first, _, target in fwds):
            raise _SpecError("'auto' with target ports is not supported")
        excl += _complement([(first, last) for first, last, _ in fwds])
        fwds = []
    excluded = _merge_intervals(excl)
    if keyword is not None or not fwds:
        if fwds:
            raise _SpecError(f"'{keyword}' takes exclusions only")
        return PortFwd(keyword or KEYWORDS[mode], excluded=excluded, addr=addr, ifname=ifname,
                       specs=(text,))
    fwds.sort()
    for (_, a_last, _), (b_first, _, _) in zip(fwds, fwds[1:], strict=False):
        if b_first <= a_last:
            raise _SpecError("port given twice")
    ranges = tuple(PortRange(a, b, t, addr, ifname)
                   for first, last, target in fwds
                   for a, b, t in _cut(first, last, target, excluded))
    return PortFwd("spec", ranges, _not_covered(excluded, ranges), specs=(text,))


def _keyword(items: list[str], mode: str, option: str) -> str | None:
    """Take ``all`` (first) or ``auto`` (anywhere, pasta) out of ``items``."""
    if items[0] == "all":
        if mode == "pasta" and option in NS_OPTIONS:
            raise _SpecError("'all' is not supported for the namespace side here")
        return items.pop(0)
    if "auto" in items:
        if mode != "pasta":
            raise _SpecError("'auto' port forwarding is only allowed for pasta")
        items.remove("auto")
        return "auto"
    return None


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ports 1-65535 outside ``ranges``."""
    return [(a, b) for a, b, _ in _cut(1, NUM_PORTS - 1, 1, _merge_intervals(ranges))]


def _not_covered(excluded: Sequence[tuple[int, int]], ranges: Sequence[PortRange]
                 ) -> tuple[tuple[int, int], ...]:
    """The excluded ports that no range forwards (what ``~`` still keeps out)."""
    covered = sorted((r.first, r.last) for r in ranges)
    return _merge_intervals([(a, b) for x in _merge_intervals(list(excluded))
                             for a, b, _ in _cut(x[0], x[1], x[0], covered)])


def parse_port_spec(text: str, mode: str, option: str) -> PortFwd:
    """Parse one value of ``option`` (``-t``, ``--udp-ns``...) for ``mode`` (passt, pasta).

    Raises ``ConfError`` ("Invalid port specifier SPEC: why (option)").
    """
    if mode not in KEYWORDS:
        raise ValueError(f"unknown mode {mode!r}")
    try:
        return _parse(text, mode, option)
    except _SpecError as e:
        raise ConfError(f"Invalid port specifier {shown(text)}: {e} ({option})") from None


def merge_port_fwds(parts: Sequence[PortFwd], option: str, mode: str = "passt") -> PortFwd:
    """Add up the occurrences of one option, in order, as upstream: a keyword
    (``none``, ``all``, ``auto``, or exclusions only) stands alone, and no port
    is forwarded twice.  No parts: the default of ``mode``."""
    if not parts:
        return default_port_fwd(mode)
    acc = parts[0]
    for part in parts[1:]:
        acc = _merge2(acc, part, option)
    return acc


def _merge2(acc: PortFwd, part: PortFwd, option: str) -> PortFwd:
    spec = shown(part.specs[0]) if part.specs else part.mode
    if part.mode != "spec":
        raise ConfError(f"Port forwarding mode '{spec}' conflicts with previous mode ({option})")
    if acc.mode != "spec":
        raise ConfError(f"Specific ports cannot be specified together with all/none/auto: "
                        f"{spec} ({option})")
    for r in part.ranges:
        if any(acc._targets[r.first:r.last + 1]):
            raise ConfError(f"Overlapping port specifier {spec} ({option})")
    ranges = tuple(sorted(acc.ranges + part.ranges, key=lambda r: r.first))
    return PortFwd("spec", ranges, _not_covered([*acc.excluded, *part.excluded], ranges),
                   specs=acc.specs + part.specs)
