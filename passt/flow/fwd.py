"""Forwarded ports: listening sockets, dispatch of what they receive, ``auto``.

Theory of operation
-------------------
Every forwarded port is a listening socket (TCP) or a bound socket (UDP) on
one side: in the host's network namespace for ``-t``/``-u`` (and for passt),
inside pasta's target namespace for ``-T``/``-U``.  A socket belongs to the
namespace of the thread that creates it, so namespace-side sockets are made
through ``ns_call(fn, *args)``, a callable that runs ``fn`` on a helper
thread that has joined the namespace (``host/netns.py`` provides it; tests
provide their own).  Everything else (accepting, receiving) happens on the
main thread: once created, a socket works from any thread.

Listeners bind each family separately (``IPV6_V6ONLY``), so that a peer's
address is always in its own family and the tables of ``/proc/net`` show
exactly what we own; without a bind address, host-side listeners bind the
wildcard address and namespace-side ones the loopback address (``-T``/``-U``
only exist to reach the host's loopback).  A bind address may be given by
the spec (with ``--freebind``, ``IP_FREEBIND`` lets it be one that is not
configured yet, as upstream 2026), and an interface (``SO_BINDTODEVICE``).

What a listener receives is handed to a callback chosen by the peer: a
loopback peer is local traffic, which pasta splices socket to socket
(``tcp_splice``, ``udp_splice``); any other peer takes the tap path (the TCP
and UDP translators).  Upstream 2026's switches: ``--no-splice`` sends the
host's loopback peers through the tap too, ``--splice-only`` refuses every
other peer, and a spliced ``-t``/``-u`` connection goes to the namespace's
own address unless ``--host-lo-to-ns-lo`` (``splice_targets``).  The callbacks live in a small registry,
``Handlers``, filled by whoever implements them, so that this module depends
on none of them:

* ``tcp_tap(sock, peer, local, target_port)``
* ``tcp_splice(sock, peer, origin, target_port)``
* ``udp_tap(listener, data, peer)`` and ``udp_splice(listener, data, peer)``,
  where ``data`` is a memoryview valid only during the call and replies go
  out through ``listener.sock`` (so that they come from the forwarded port).

Accepted sockets are handed over non-blocking.  A connection or datagram
nobody takes is closed or dropped, and counted.

``auto`` (pasta) follows the ports bound on the *other* side: about once a
second we read ``/proc/net/{tcp,tcp6,udp,udp6}`` of that namespace (through
descriptors opened there once: a ``/proc/thread-self/net`` file keeps
showing the namespace it was opened in), keep the listening TCP sockets and
the bound, unconnected UDP sockets, drop those that are ours (our own
listeners appear in the same tables: we know their inode numbers), apply
the ``~`` exclusions, and open or close our listeners to match.  As upstream
does, with ``-t auto`` and no ``-u``, UDP follows the TCP ports too.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from passt import buffers, log
from passt import loop as ev
from passt.flow.table import SockAddr
from passt.host import rtnl
from passt.ports import PortFwd
from passt.record import record

NsCall = Callable[..., Any]

HOST = "host"
NS = "ns"
TCP = "tcp"
UDP = "udp"

IP_FREEBIND = 15
IPV6_FREEBIND = 78
ACCEPT_BATCH = 64
RECV_BATCH = 64
ACCEPT_PAUSE = 0.1
SCAN_INTERVAL = 1.0
TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
DATAGRAM_MAX = 65536

T = TypeVar("T")

_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ANY: dict[int, str] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
_PROC_FILES: dict[tuple[str, int], str] = {
    (TCP, socket.AF_INET): "tcp", (TCP, socket.AF_INET6): "tcp6",
    (UDP, socket.AF_INET): "udp", (UDP, socket.AF_INET6): "udp6",
}


def is_loopback(addr: str) -> bool:
    """Whether a socket-API address string is a loopback address (any family)."""
    return addr.startswith("127.") or addr == "::1" or addr.startswith("::ffff:127.")


# -- what to listen on ----------------------------------------------------


@record(frozen=True, slots=True)
class Listen:
    """One socket to open: protocol, side, family, bind address, port, interface."""

    proto: str
    origin: str
    family: int
    addr: str
    port: int
    ifname: str | None = None


def default_listens(proto: str, origin: str, port: int,
                    families: Iterable[int]) -> list[Listen]:
    """Listens for a port without a bind address: wildcard on the host, loopback in the ns."""
    table = _ANY if origin == HOST else LOOPBACK
    return [Listen(proto, origin, f, table[f], port) for f in families]


def listens_for(proto: str, origin: str, port: int, addr: str | None, ifname: str | None,
                families: Iterable[int]) -> list[Listen]:
    """Listens for one forwarded port of a spec, honouring its bind address and interface."""
    if not addr:
        return [Listen(proto, origin, lst.family, lst.addr, port, ifname)
                for lst in default_listens(proto, origin, port, families)]
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return [Listen(proto, origin, family, addr, port, ifname)]


def open_listen_socket(listen: Listen, backlog: int = 128, freebind: bool = False
                       ) -> socket.socket:
    """Create, configure and bind the socket for ``listen`` (runs in its namespace);
    ``freebind``: the address need not be configured (``--freebind``)."""
    kind = socket.SOCK_STREAM if listen.proto == TCP else socket.SOCK_DGRAM
    s = socket.socket(listen.family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if listen.proto == TCP:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if listen.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if freebind:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        elif freebind:
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        if listen.ifname:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, listen.ifname.encode())
        s.bind((listen.addr, listen.port))
        if listen.proto == TCP:
            s.listen(backlog)
    except BaseException:
        s.close()
        raise
    return s


# -- dispatch -------------------------------------------------------------


@record(slots=True)
class Handlers:
    """Who takes what a listener receives; ``None`` means nobody (drop)."""

    tcp_tap: Callable[[socket.socket, SockAddr, SockAddr, int], None] | None = None
    tcp_splice: Callable[[socket.socket, SockAddr, str, int], None] | None = None
    udp_tap: Callable[[Listener, memoryview, SockAddr], None] | None = None
    udp_splice: Callable[[Listener, memoryview, SockAddr], None] | None = None


class Listener:
    """An open forwarded-port socket and what to do with what it receives."""

    __slots__ = ("listen", "sock", "fd", "family", "origin", "port", "target_port",
                 "inode", "fwd")

    def __init__(self, fwd: Forwarder, listen: Listen, sock: socket.socket,
                 target_port: int) -> None:
        self.fwd = fwd
        self.listen = listen
        self.sock = sock
        self.fd = sock.fileno()
        self.family = listen.family
        self.origin = listen.origin
        self.port = listen.port
        self.target_port = target_port
        self.inode = os.fstat(self.fd).st_ino

    def on_accept(self, _mask: int) -> None:
        """Accept what is pending (bounded batch; the listener is level-triggered)."""
        sock = self.sock
        handlers = self.fwd.handlers
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = sock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                return
            except OSError as e:
                self.fwd.stats[f"accept_error.{e.errno}"] += 1
                if e.errno in _RESOURCE_ERRORS:
                    self.pause()
                    return
                continue  # the peer gave up during the handshake: next one
            conn = socket.socket(self.family, socket.SOCK_STREAM, 0, fileno=fd)
            conn.setblocking(False)
            if handlers.tcp_splice is not None and self.splices(peer[0]):
                handlers.tcp_splice(conn, peer, self.origin, self.target_port)
            elif handlers.tcp_tap is not None and self.origin == HOST and self.fwd.tap_inbound:
                handlers.tcp_tap(conn, peer, conn.getsockname(), self.target_port)
            else:
                self.fwd.stats["tcp_unhandled"] += 1
                conn.close()

    def splices(self, peer: str) -> bool:
        """Whether traffic from ``peer`` takes the spliced path (loopback to loopback;
        from the host only unless ``--no-splice``)."""
        return is_loopback(peer) and (self.origin != HOST or self.fwd.splice_inbound)

    def pause(self) -> None:
        """Out of descriptors or memory: stop accepting for a moment.

        The connection stays in the backlog and the listener, being
        level-triggered, would report it again at once: without a pause
        we would spin until a descriptor is freed.
        """
        loop = self.fwd.loop
        loop.modify(self.fd, 0)
        loop.call_later(ACCEPT_PAUSE, self.resume)

    def resume(self) -> None:
        if self.fwd.listeners.get(self.listen) is self:
            self.fwd.loop.modify(self.fd, ev.IN)

    def on_datagram(self, _mask: int) -> None:
        """Receive pending datagrams (bounded batch) and hand each to its handler."""
        sock = self.sock
        fwd = self.fwd
        view = fwd.dgram_buf
        handlers = fwd.handlers
        for _ in range(RECV_BATCH):
            try:
                n, peer = sock.recvfrom_into(view)
            except BlockingIOError:
                return
            except OSError:  # a queued ICMP error from an earlier reply
                continue
            if handlers.udp_splice is not None and self.splices(peer[0]):
                handlers.udp_splice(self, view[:n], peer)
            elif handlers.udp_tap is not None and self.origin == HOST and fwd.tap_inbound:
                handlers.udp_tap(self, view[:n], peer)
            else:
                fwd.stats["udp_unhandled"] += 1


class Forwarder:
    """The set of open forwarded-port sockets, on both sides."""

    def __init__(self, loop: ev.EventLoop, ns_call: NsCall | None = None) -> None:
        self.loop = loop
        self.ns_call = ns_call
        self.handlers = Handlers()
        self.listeners: dict[Listen, Listener] = {}
        self.stats: Counter[str] = Counter()
        self.dgram_buf = buffers.zeroed(DATAGRAM_MAX)
        self.udp_splice: Any = None
        self.scanner: AutoScanner | None = None
        self.splice_inbound = True      # --no-splice: host loopback through the tap
        self.tap_inbound = True         # --splice-only: nothing but loopback
        self.freebind = False           # --freebind

    def own_inodes(self) -> set[int]:
        return {lst.inode for lst in self.listeners.values()}

    def open(self, listen: Listen, target_port: int) -> Listener:
        """Open ``listen`` (in its namespace) and start serving it; raises ``OSError``."""
        if listen.origin == NS:
            if self.ns_call is None:
                raise OSError("no namespace to open a listener in")
            sock = self.ns_call(open_listen_socket, listen, 128, self.freebind)
        else:
            sock = open_listen_socket(listen, freebind=self.freebind)
        listener = Listener(self, listen, sock, target_port)
        callback = listener.on_accept if listen.proto == TCP else listener.on_datagram
        self.loop.add(listener.fd, ev.IN, callback)
        self.listeners[listen] = listener
        return listener

    def open_all(self, listens: Iterable[tuple[Listen, int]]) -> list[tuple[Listen, OSError]]:
        """Open each ``(listen, target_port)``; returns the failures instead of stopping."""
        failures = []
        for listen, target_port in listens:
            if listen in self.listeners:
                continue
            try:
                self.open(listen, target_port)
            except OSError as e:
                failures.append((listen, e))
        return failures

    def close_listener(self, listen: Listen) -> None:
        listener = self.listeners.pop(listen, None)
        if listener is not None:
            self.loop.remove(listener.fd)
            listener.sock.close()

    def ports(self, proto: str, origin: str) -> set[int]:
        return {lst.port for lst in self.listeners if lst.proto == proto and lst.origin == origin}

    def close(self) -> None:
        for listen in list(self.listeners):
            self.close_listener(listen)


# -- auto: following the ports bound on the other side ---------------------


def bound_ports(table: str, state: str, exclude_inodes: set[int] | frozenset[int]) -> set[int]:
    """Local ports of ``/proc/net/{tcp,udp}[6]`` entries in ``state``, except ours.

    ``state`` is the hexadecimal column value: ``"0A"`` for listening TCP
    sockets, ``"07"`` for bound, unconnected UDP sockets.  Malformed lines
    are skipped.
    """
    ports = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != state:
            continue
        try:
            port = int(fields[1].rpartition(":")[2], 16)
            inode = int(fields[9])
        except ValueError:
            continue
        if inode not in exclude_inodes:
            ports.add(port)
    return ports


def scan_diff(current: set[int], wanted: set[int]) -> tuple[set[int], set[int]]:
    """Ports to open and ports to close so that ``current`` becomes ``wanted``."""
    return wanted - current, current - wanted


def open_proc_net(names: Iterable[str]) -> dict[str, int]:
    """Descriptors of ``/proc/thread-self/net/<name>`` for the calling thread's namespace."""
    fds = {}
    for name in names:
        try:
            fds[name] = os.open(f"/proc/thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # e.g. no IPv6 in this kernel
            continue
    return fds


def listener_diag() -> rtnl.Rtnl | None:
    """A sock_diag socket of the calling thread's namespace that lists TCP
    listeners (``rtnl.Rtnl.tcp_listeners``), or ``None`` where the kernel
    has no sock_diag for TCP: then ``/proc/net/tcp*`` it is."""
    try:
        diag = rtnl.Rtnl(rtnl.NETLINK_SOCK_DIAG)
    except OSError:
        return None
    try:
        diag.tcp_listeners(socket.AF_INET)
    except OSError:
        diag.close()
        return None
    return diag


def _here(fn: Callable[..., T], *args: Any) -> T:
    """``ns_call``'s counterpart for the host side: call ``fn`` in this thread."""
    return fn(*args)


def read_proc_file(fd: int) -> str:
    """The whole current content of an open procfs file, from the start."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("ascii", "replace")


@record(slots=True)
class AutoRule:
    """One ``auto`` direction: ``proto`` listeners on ``origin`` follow the other side.

    ``allowed(port)`` applies the spec's exclusions; ``follow_tcp`` makes a
    UDP rule also forward the ports the TCP scan found (upstream's
    TCP-implies-UDP default).  ``addr`` and ``ifname`` bind the listeners
    opened for it, as the spec said (``ADDR%IF/auto``).
    """

    proto: str
    origin: str
    allowed: Callable[[int], bool]
    follow_tcp: bool = False
    addr: str | None = None
    ifname: str | None = None


class AutoScanner:
    """Periodic scans (sock_diag for TCP, ``/proc/net`` for UDP) opening and closing
    listeners to match."""

    def __init__(self, fwd: Forwarder, rules: Iterable[AutoRule], families: tuple[int, ...],
                 interval: float = SCAN_INTERVAL) -> None:
        self.fwd = fwd
        self.rules = list(rules)
        self.families = families
        self.interval = interval
        self.failed: set[Listen] = set()
        self.owned: set[Listen] = set()
        names = [_PROC_FILES[(r.proto, f)] for r in self.rules for f in families]
        if any(r.follow_tcp for r in self.rules):
            names += [_PROC_FILES[(TCP, f)] for f in families]
        names = sorted(set(names))
        need = {NS: any(r.origin == HOST for r in self.rules) and fwd.ns_call is not None,
                HOST: any(r.origin == NS for r in self.rules)}
        self.proc_fds: dict[str, dict[str, int]] = {NS: {}, HOST: {}}
        self.diag: dict[str, rtnl.Rtnl] = {}  # TCP listeners by sock_diag, where it works
        for side in (NS, HOST):
            if not need[side]:
                continue
            call = fwd.ns_call if side == NS and fwd.ns_call is not None else _here
            diag = call(listener_diag) if any(n.startswith("tcp") for n in names) else None
            if diag is not None:
                self.diag[side] = diag
            self.proc_fds[side] = call(open_proc_net, [n for n in names
                                                       if diag is None or not n.startswith("tcp")])
        self._timer: ev.Timer | None = None
        self._read: dict[tuple[str, str], str] = {}  # during a scan: the tables read

    def start(self) -> None:
        """Scan now, then every ``interval`` seconds."""
        self.scan()
        self._timer = self.fwd.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self.scan()
        self._timer = self.fwd.loop.call_later(self.interval, self._tick)

    def bound_on(self, side: str, proto: str, ours: set[int]) -> set[int]:
        """Ports bound by others for ``proto`` on ``side``, both families together."""
        diag = self.diag.get(side) if proto == TCP else None
        if diag is not None:
            return {port for family in self.families
                    for port, inode in diag.tcp_listeners(family) if inode not in ours}
        state = TCP_LISTEN if proto == TCP else UDP_UNCONNECTED
        ports: set[int] = set()
        for family in self.families:
            name = _PROC_FILES[(proto, family)]
            fd = self.proc_fds[side].get(name)
            if fd is not None:
                if (side, name) not in self._read:
                    self._read[side, name] = read_proc_file(fd)
                ports |= bound_ports(self._read[side, name], state, ours)
        return ports

    def wanted(self, rule: AutoRule, ours: set[int]) -> set[int]:
        other = NS if rule.origin == HOST else HOST
        ports = self.bound_on(other, rule.proto, ours)
        if rule.follow_tcp:
            ports |= self.bound_on(other, TCP, ours)
        return {p for p in ports if rule.allowed(p)}

    def scan(self) -> None:
        """One pass over every rule: open what appeared, close what went away.

        Each table is read once per pass (the kernel walks its whole socket
        hash for every read of ``/proc/net/tcp``: milliseconds, however few
        sockets there are), although the rules ask for TCP's twice.  Our own
        sockets are listed afresh for each rule: the previous rule may just
        have opened listeners, which a table read before them does not show
        and one read after would, but they are ours and left out either way.
        """
        self._read.clear()
        for rule in self.rules:
            self.apply(rule, self.wanted(rule, self.fwd.own_inodes()))
        self._read.clear()

    def apply(self, rule: AutoRule, wanted: set[int]) -> None:
        """Open and close listeners of ``rule`` to match ``wanted``; only those the
        scanner opened are its own (``control_server`` may open others)."""
        fwd = self.fwd
        mine = [lst for lst in self.owned if lst.proto == rule.proto and lst.origin == rule.origin]
        to_open, to_close = scan_diff({lst.port for lst in mine}, wanted)
        for listen in [lst for lst in mine if lst.port in to_close]:
            fwd.close_listener(listen)
            self.owned.discard(listen)
        for port in sorted(to_open):
            listens = [lst for lst in listens_for(rule.proto, rule.origin, port, rule.addr,
                                                  rule.ifname, self.families)
                       if lst not in fwd.listeners]
            failures = fwd.open_all((lst, port) for lst in listens)
            self.owned.update(lst for lst in listens if lst in fwd.listeners)
            for listen, err in failures:
                if listen not in self.failed:
                    self.failed.add(listen)
                    log.warn("auto forwarding: cannot bind %s port %d (%s): %s",
                                listen.proto.upper(), port, listen.origin, err.strerror)

    def drop(self, proto: str, origin: str) -> set[Listen]:
        """Stop following ``proto`` on ``origin``; its listeners, still open, are
        handed to the caller (who closes what it does not want)."""
        self.rules = [r for r in self.rules if (r.proto, r.origin) != (proto, origin)]
        given = {lst for lst in self.owned if (lst.proto, lst.origin) == (proto, origin)}
        self.owned -= given
        return given

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fds in self.proc_fds.values():
            for fd in fds.values():
                os.close(fd)
            fds.clear()
        for diag in self.diag.values():
            diag.close()
        self.diag.clear()


# -- "all" (passt): every non-ephemeral port nobody else has bound ----------


def non_ephemeral_ports(range_file: str = "/proc/sys/net/ipv4/ip_local_port_range") -> range:
    """Ports below the kernel's ephemeral range (1 to 32767 if it cannot be read)."""
    try:
        with open(range_file) as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return range(1, max(first, 2))


def open_all_ports(fwd: Forwarder, proto: str, allowed: Callable[[int], bool],
                   families: tuple[int, ...], addr: str | None = None,
                   ifname: str | None = None) -> int:
    """Listen on every allowed non-ephemeral port that is free; returns how many.

    Ports someone else has bound, or that we may not bind (below
    ``ip_unprivileged_port_start`` without the capability), are skipped
    quietly: "all" means all that can be had.
    """
    wanted = ((lst, lst.port) for port in non_ephemeral_ports() if allowed(port)
              for lst in listens_for(proto, HOST, port, addr, ifname, families))
    before = len(fwd.listeners)
    fwd.open_all(wanted)
    return len(fwd.listeners) - before


# -- wiring into the context ---------------------------------------------


def families_of(net: Any) -> tuple[int, ...]:
    """Address families in use: those ``NetInfo`` enables (both if unknown)."""
    if net is None:
        return (socket.AF_INET, socket.AF_INET6)
    return tuple(f for f, on in ((socket.AF_INET, net.ipv4), (socket.AF_INET6, net.ipv6)) if on)


def setup(ctx: Any, ns_call: NsCall | None = None) -> Forwarder:
    """Create ``ctx.fwd``; ``ns_call`` (pasta) reaches into the namespace.

    Call before the protocol handlers' initialisation (the TCP translator
    registers ``handlers.tcp_tap`` on ``ctx.fwd``, pasta's spliced paths
    ``handlers.tcp_splice`` and ``handlers.udp_splice``) and ``start`` after it.
    """
    assert ctx.loop is not None
    fwd = Forwarder(ctx.loop, ns_call)
    ctx.fwd = fwd
    conf = ctx.conf
    fwd.freebind = bool(getattr(conf, "freebind", False))
    if ns_call is not None:
        fwd.splice_inbound = not getattr(conf, "no_splice", False)
        fwd.tap_inbound = not getattr(conf, "splice_only", False)
    return fwd


def splice_targets(conf: Any, net: Any) -> dict[int, str]:
    """Where ``-t``/``-u`` traffic from the host's loopback goes in the namespace.

    Upstream 2026: the namespace's own address, so that services listening
    only on its loopback are not exposed; its loopback with
    ``--host-lo-to-ns-lo`` (or when the namespace has no address of that family).
    """
    if net is None or getattr(conf, "host_lo_to_ns_lo", True):
        return dict(LOOPBACK)
    own: dict[int, Any] = {socket.AF_INET: net.addr4, socket.AF_INET6: net.addr6}
    return {family: str(own[family] or LOOPBACK[family]) for family in LOOPBACK}


def start(ctx: Any) -> None:
    """Open the listeners ``ctx.conf`` asks for and start ``auto`` scanning.

    Called once every handler has registered itself in ``ctx.fwd.handlers``.
    A port of an explicit list that cannot be bound is a warning, not an
    error, as upstream: the others still work.
    """
    fwd: Forwarder = ctx.fwd
    conf = ctx.conf
    families = families_of(ctx.net)
    directions = [(TCP, HOST, conf.tcp_ports), (UDP, HOST, conf.udp_ports)]
    if fwd.ns_call is not None:
        directions += [(TCP, NS, conf.tcp_ns), (UDP, NS, conf.udp_ns)]
    rules: dict[tuple[str, str], AutoRule] = {}
    for proto, origin, portfwd in directions:
        mode = portfwd.mode
        if mode == "spec":
            for listen, err in fwd.open_all(spec_listens(portfwd, proto, origin, families)):
                log.warn("cannot bind %s port %d: %s", proto.upper(), listen.port, err.strerror)
        elif mode == "all":
            open_all_ports(fwd, proto, portfwd.allowed, families,
                           _addr_text(portfwd.addr), portfwd.ifname)
        elif mode == "auto":
            rules[(proto, origin)] = AutoRule(proto, origin, portfwd.allowed,
                                              addr=_addr_text(portfwd.addr),
                                              ifname=portfwd.ifname)
    udp_follows_tcp(conf, rules)
    if rules:
        fwd.scanner = AutoScanner(fwd, rules.values(), families)
        fwd.scanner.start()


def spec_listens(portfwd: PortFwd, proto: str, origin: str,
                 families: tuple[int, ...]) -> list[tuple[Listen, int]]:
    """``(listen, target_port)`` for each port of an explicit list, range by range."""
    return [(lst, r.target_of(port))
            for r in portfwd.ranges
            for port in r.ports()
            for lst in listens_for(proto, origin, port, _addr_text(r.addr), r.ifname, families)]


def _addr_text(addr: object) -> str | None:
    return str(addr) if addr is not None else None


def udp_follows_tcp(conf: Any, rules: dict[tuple[str, str], AutoRule]) -> None:
    """Upstream's rule: with ``-t auto`` and no UDP option, UDP follows the TCP ports.

    ``conf`` says when it applies; the UDP rule of that side then also takes
    the ports the TCP scan finds (one rule per side, or two would fight).
    """
    for origin, follows in ((HOST, conf.udp_ports_follow_tcp), (NS, conf.udp_ns_follow_tcp)):
        rule = rules.get((UDP, origin))
        if follows and rule is not None:
            rule.follow_tcp = True


def close(ctx: Any) -> None:
    """Stop scanning, close listeners and every spliced flow (at exit)."""
    fwd: Forwarder | None = ctx.fwd
    if fwd is None:
        return
    if fwd.scanner is not None:
        fwd.scanner.close()
    if fwd.udp_splice is not None:
        fwd.udp_splice.close()
    if ctx.tcp_splice is not None:
        ctx.tcp_splice.close()
        ctx.tcp_splice = None
    fwd.close()
    ctx.fwd = None
