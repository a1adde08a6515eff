"""The configuration socket (``-c PATH``): ``pesto`` changes forwards of a running instance.

Theory of operation
-------------------
``bind(path)`` creates the UNIX socket at start-up, before daemonizing, as
upstream 2026 does (so that a bad path is one line and exit status 1, and
the socket exists once the parent exits); its permissions are upstream's:
those the process umask leaves.  ``ControlServer.start`` then serves it
from the event loop, never blocking: one client at a time (others wait in
the backlog, the listener is muted meanwhile), each sent the hello and the
current tables (``pesto_wire``), its request taken in pieces as it comes.

Only our own user (the real and effective user at start-up) and root may
talk to us: ``SO_PEERCRED`` is checked before a byte is sent, so a socket
made world-writable by mistake still refuses other users.  One limit: the
kernel gives a peer's user as seen from our user namespace, and once
isolated into one of its own (passt started as root) every user outside
its mapping shows as the overflow user (``/proc/sys/kernel/overflowuid``).
Such a peer can't be told apart from root, so it is let through and the
socket's permissions decide, as upstream's only protection.  A client that
sends something malformed, more than the largest valid request, or nothing
complete within ``CLIENT_TIMEOUT`` is dropped, the tables unchanged; the
next one is served.

``Forwards`` applies a request.  Tables are rebuilt rule by rule with
upstream's validation (``fwd_rule.Table.add``), then turned into the set of
sockets they want (``Listen``), and the difference with what is open is
applied in two steps: open what is new (a failed bind of a rule that is
not best effort closes what this request opened and refuses it whole,
with the reason), then close what is no longer wanted and retarget what
stays.  So a new forward listens before the reply goes out, an unchanged
one is never closed (its listener, its queue of pending connections, stay),
and a deleted one only stops accepting: connections it accepted are flows
of their own.  Upstream instead closes every listener and reopens the new
table, and reports nothing to the client.

Rules with ``auto`` (``SCAN``) belong to ``fwd.AutoScanner``, which is set
up once from the command line (its ``/proc/net`` files can't be opened once
isolated): a request may keep them or remove all those of one protocol and
side (``pesto -t 8080`` replacing pasta's default ``auto``), and the
scanner's listeners then become the table's, kept if wanted, else closed;
adding or changing ``auto`` rules at run time is refused.
Target addresses (``-t 80:192.0.2.1/8080``) are refused: our forwarder has
no such thing.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

from passt import log
from passt import loop as ev
from passt.backends.qemu import QemuError, bind_socket
from passt.control_socket.rules import (
    ANY6,
    CAP_IFNAME,
    CAP_IPV4,
    CAP_IPV6,
    CAP_SCAN,
    CAP_TCP,
    CAP_UDP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    PIF_HOST,
    PIF_NAMES,
    PIF_SPLICE,
    SCAN,
    WEAK,
    Rule,
    RuleError,
    Table,
    plain,
    read_ephemeral,
    rules_from_portfwd,
)
from passt.control_socket.wire import (
    PifTable,
    ProtocolError,
    Reply,
    decode_request,
    encode_hello,
    encode_reply,
    encode_tables,
)
from passt.errors import StartupError
from passt.flow import fwd as fwdmod

CLIENT_TIMEOUT = 10.0
RECV_CHUNK = 65536
_UCRED = struct.Struct("iII")
_PROTO = {IPPROTO_TCP: fwdmod.TCP, IPPROTO_UDP: fwdmod.UDP}


class ControlError(StartupError):
    """The configuration socket cannot be created; one line."""


def bind(path: str) -> socket.socket:
    """Bind (not yet listen on) the configuration socket at ``path``."""
    try:
        sock, _ = bind_socket(path)
    except QemuError as e:
        raise ControlError(f"Couldn't open control socket {path}: {e}") from None
    return sock


def caps_of(conf: Any, net: Any, pasta: bool) -> int:
    """What the tables of this instance may hold (``CAP_*``)."""
    families = fwdmod.families_of(net)
    caps = CAP_IFNAME
    caps |= CAP_IPV4 if socket.AF_INET in families else 0
    caps |= CAP_IPV6 if socket.AF_INET6 in families else 0
    caps |= 0 if conf.no_tcp else CAP_TCP
    caps |= 0 if conf.no_udp else CAP_UDP
    return caps | (CAP_SCAN if pasta else 0)


# -- the tables and the sockets they want --------------------------------------


class Forwards:
    """The forwarding tables of a running instance, kept in step with its listeners."""

    def __init__(self, forwarder: fwdmod.Forwarder, tables: dict[int, Table],
                 families: tuple[int, ...]) -> None:
        self.fwd = forwarder
        self.tables = tables
        self.families = families
        self.managed: set[fwdmod.Listen] = set()

    @classmethod
    def from_conf(cls, ctx: Any) -> Forwards:
        """The tables the command line made, owning the listeners ``fwd.start`` opened
        for them (those of ``auto`` directions stay the scanner's)."""
        conf = ctx.conf
        pasta = ctx.fwd.ns_call is not None
        caps = caps_of(conf, ctx.net, pasta)
        eph = read_ephemeral()
        sides = [(PIF_HOST, False, conf.tcp_ports, conf.udp_ports)]
        if pasta:
            sides.append((PIF_SPLICE, True, conf.tcp_ns, conf.udp_ns))
        tables, auto = {}, set()
        for pif, ns_side, tcp_pf, udp_pf in sides:
            origin = fwdmod.NS if ns_side else fwdmod.HOST
            rules = []
            for proto, pf in ((IPPROTO_TCP, tcp_pf), (IPPROTO_UDP, udp_pf)):
                if caps & (CAP_TCP if proto == IPPROTO_TCP else CAP_UDP):
                    rules += rules_from_portfwd(pf, proto, ns_side, caps, eph)
                if pf.mode == "auto":
                    auto.add((_PROTO[proto], origin))
            tables[pif] = Table(caps, rules)
        self = cls(ctx.fwd, tables, fwdmod.families_of(ctx.net))
        self.managed = {lst for lst in ctx.fwd.listeners if (lst.proto, lst.origin) not in auto}
        return self

    def shown(self) -> list[PifTable]:
        return [PifTable(pif, PIF_NAMES[pif], t.caps, tuple(t.rules))
                for pif, t in sorted(self.tables.items())]

    def listens(self, pif: int, rule: Rule) -> Iterator[tuple[fwdmod.Listen, int, bool]]:
        """``(listen, target port, best effort)`` for each socket ``rule`` needs."""
        if rule.taddr != ANY6:
            raise RuleError(f"Target addresses are not supported here: {rule}")
        origin = fwdmod.HOST if pif == PIF_HOST else fwdmod.NS
        proto = _PROTO[rule.proto]
        families = self.families
        addr: str | None = None
        ifname = rule.ifname or None
        if not rule.dual_stack:
            bind_addr = plain(rule.addr)
            if bind_addr.is_unspecified:
                families = (socket.AF_INET if bind_addr.version == 4 else socket.AF_INET6,)
            else:
                addr = str(bind_addr)
        if origin == fwdmod.NS and ifname == "lo" and addr is None:
            ifname = None       # ours: the namespace's loopback addresses, as at start-up
        weak = bool(rule.flags & WEAK)
        for port in rule.ports():
            for lst in fwdmod.listens_for(proto, origin, port, addr, ifname, families):
                yield lst, rule.target_of(port), weak

    def apply(self, request: dict[int, list[Rule]]) -> str:
        """Make the tables in ``request`` the running ones; returns what changed.

        Raises ``RuleError`` (nothing changed) if a rule is invalid, changes
        ``auto`` rules, or cannot be bound.
        """
        new = {pif: Table(t.caps) for pif, t in self.tables.items()}
        for pif, rules in request.items():
            for rule in rules:
                new[pif].add(rule)
        for pif, table in self.tables.items():
            if pif not in request:
                new[pif].rules = list(table.rules)
        dropped = self._dropped_scans(new)
        wanted = self._wanted(new)
        opened = self._open_new(wanted)
        summary = f"{len(opened)} sockets opened, {sum(len(t.rules) for t in new.values())} rules"
        if dropped:
            assert self.fwd.scanner is not None
            for proto, origin in dropped:
                opened |= self.fwd.scanner.drop(proto, origin)
        for listen in (self.managed | opened) - wanted.keys():
            self.fwd.close_listener(listen)
        for listen, (target, _) in wanted.items():
            listener = self.fwd.listeners.get(listen)
            if listener is not None:
                listener.target_port = target
        self.managed = {lst for lst in wanted
                        if lst in self.fwd.listeners and (lst in self.managed or lst in opened)}
        self.tables = new
        return summary

    def _dropped_scans(self, new: dict[int, Table]) -> list[tuple[str, str]]:
        """``(proto, origin)`` whose ``auto`` rules ``new`` removes; other changes
        to ``auto`` rules raise ``RuleError``."""
        dropped = []
        for pif, table in self.tables.items():
            origin = fwdmod.HOST if pif == PIF_HOST else fwdmod.NS
            for proto, name in _PROTO.items():
                old = [r for r in table.rules if r.flags & SCAN and r.proto == proto]
                now = [r for r in new[pif].rules if r.flags & SCAN and r.proto == proto]
                if now == old:
                    continue
                if now:
                    raise RuleError(f"auto forwarding rules of {PIF_NAMES[pif]} can only be "
                                    "removed at run time, not added or changed")
                dropped.append((name, origin))
        return dropped

    def _wanted(self, tables: dict[int, Table]) -> dict[fwdmod.Listen, tuple[int, bool]]:
        wanted: dict[fwdmod.Listen, tuple[int, bool]] = {}
        for pif, table in tables.items():
            for rule in table.rules:
                if rule.flags & SCAN:
                    continue
                for lst, target, weak in self.listens(pif, rule):
                    wanted[lst] = (target, weak)
        return wanted

    def _open_new(self, wanted: dict[fwdmod.Listen, tuple[int, bool]]) -> set[fwdmod.Listen]:
        """Open the wanted sockets not open yet; all or nothing but best-effort ones."""
        opened: set[fwdmod.Listen] = set()
        for listen, (target, weak) in wanted.items():
            if listen in self.fwd.listeners:
                continue
            try:
                self.fwd.open(listen, target)
            except OSError as e:
                if weak:
                    continue
                for lst in opened:
                    self.fwd.close_listener(lst)
                where = f"{listen.addr}%{listen.ifname}" if listen.ifname else listen.addr
                raise RuleError(f"Can't bind {listen.proto.upper()} port {listen.port} on "
                                f"{where} ({listen.origin}): {e.strerror or e}") from None
            opened.add(listen)
        return opened


# -- the socket ---------------------------------------------------------------


def _overflow_uid(path: str = "/proc/sys/kernel/overflowuid") -> int:
    """The user a peer outside our user namespace's mapping shows as."""
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65534


class ControlServer:
    """Serves the configuration socket from the event loop, one client at a time."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self.inode = os.fstat(sock.fileno()).st_ino
        self.allowed_uids = {0, os.getuid(), os.geteuid()}
        self.unknown_uid = _overflow_uid()
        self.loop: ev.EventLoop | None = None
        self.forwards: Forwards | None = None
        self.client: _Client | None = None

    def start(self, loop: ev.EventLoop, forwards: Forwards) -> None:
        self.loop = loop
        self.forwards = forwards
        self.sock.listen(16)
        self.sock.setblocking(False)
        loop.add(self.sock.fileno(), ev.IN, self._on_listen)
        log.info("Configuration socket: %s", self.path)

    def _on_listen(self, _mask: int) -> None:
        assert self.loop is not None and self.forwards is not None
        while self.client is None:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warn("accept() on configuration socket: %s", e.strerror)
                return
            pid, uid, _gid = _UCRED.unpack(conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if uid not in self.allowed_uids and uid != self.unknown_uid:
                log.warn("Configuration client PID %d of user %d refused", pid, uid)
                conn.close()
                continue
            log.info("Accepted configuration client, PID %d", pid)
            self.client = _Client(self, conn)
            self.loop.modify(self.sock.fileno(), 0)

    def done(self) -> None:
        """The client is gone: take the next one waiting, if any."""
        self.client = None
        if self.loop is not None and self.loop.watching(self.sock.fileno()):
            self.loop.modify(self.sock.fileno(), ev.IN)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.loop is not None:
            self.loop.remove(self.sock.fileno())
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass        # isolated: the path is out of sight, as upstream leaves it
        self.sock.close()


class _Client:
    """One connection: tables out, a request in, our reply out, then close."""

    def __init__(self, server: ControlServer, conn: socket.socket) -> None:
        assert server.loop is not None and server.forwards is not None
        self.server = server
        self.loop = server.loop
        self.conn = conn
        conn.setblocking(False)
        self.inbuf = bytearray()
        self.out = bytearray(encode_hello() + encode_tables(server.forwards.shown()))
        self.reading = True
        self.loop.add(conn.fileno(), ev.IN | ev.OUT, self._on_event, self._on_fault)
        self.timer = self.loop.call_later(CLIENT_TIMEOUT, self._on_timeout)

    def _on_event(self, mask: int) -> None:
        if mask & ev.OUT and self.out:
            self._flush()
        if self.reading and mask & (ev.IN | ev.HUP | ev.ERR):
            self._read()
        if self.conn.fileno() < 0:
            return
        if not self.reading and not self.out:
            self.close()
        else:
            self.loop.modify(self.conn.fileno(), (ev.IN if self.reading else 0)
                             | (ev.OUT if self.out else 0))

    def _flush(self) -> None:
        try:
            sent = self.conn.send(self.out, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return
        except OSError:         # the client is gone (upstream's pesto never reads a reply)
            self.out.clear()
            self.reading = False
            return
        del self.out[:sent]

    def _read(self) -> None:
        eof = False
        try:
            while len(self.inbuf) <= RECV_CHUNK * 2:
                chunk = self.conn.recv(RECV_CHUNK)
                if not chunk:
                    eof = True
                    break
                self.inbuf += chunk
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno != errno.ECONNRESET:
                log.warn("Configuration socket: %s", e.strerror)
            eof = True
        forwards = self.server.forwards
        assert forwards is not None
        try:
            request = decode_request(bytes(self.inbuf), frozenset(forwards.tables))
        except ProtocolError as e:
            self._finish(Reply(False, f"Protocol error: {e}"))
            return
        if request is not None:
            self._finish(self._apply(forwards, request))
        elif eof:
            if self.inbuf:
                log.warn("Configuration client left with an incomplete request")
            self.reading = False
            self.out.clear()

    def _apply(self, forwards: Forwards, request: dict[int, list[Rule]]) -> Reply:
        try:
            summary = forwards.apply(request)
        except RuleError as e:
            return Reply(False, str(e))
        for table in forwards.shown():
            log.info("New forwarding rules for %s:", table.name)
            for rule in table.rules:
                log.info("    %s", rule)
        return Reply(True, summary)

    def _finish(self, reply: Reply) -> None:
        """Answer (our extension) and stop reading: one request per connection."""
        if not reply.ok:
            log.warn("Configuration request refused: %s", reply.message)
        self.reading = False
        self.out += encode_reply(reply)

    def _on_timeout(self) -> None:
        log.warn("Configuration client timed out")
        self.close()

    def _on_fault(self, _exc: Exception) -> None:
        self.close()

    def close(self) -> None:
        if self.conn.fileno() < 0:
            return
        self.timer.cancel()
        self.loop.remove(self.conn.fileno())
        self.conn.close()
        self.server.done()


def setup(ctx: Any, sock: socket.socket, path: str) -> ControlServer:
    """Serve ``sock`` for ``ctx`` (after ``fwd.start``: the tables own its listeners)."""
    assert ctx.loop is not None and ctx.fwd is not None
    server = ControlServer(sock, path)
    server.start(ctx.loop, Forwards.from_conf(ctx))
    return server
