"""Python API to the configuration socket of a running passt or pasta (``-c PATH``).

Theory of operation
-------------------
This is what ``pesto`` does, as a library: a ``Session`` connects, reads the
server's hello and its forwarding tables (``pesto_wire``), lets the caller
change copies of them with the same port specs as the command line
(``add``, ``delete``, ``clear``), and ``commit`` sends every table back in
one request: the server replaces its tables with them.

Against our server, ``commit`` then waits for the verdict (an extension of
the protocol: the new listeners are open once it returns, or nothing
changed and ``Refused`` says why).  Upstream's server sends no verdict: it
closes the connection, and ``commit`` returns ``None`` ("sent, not
confirmed").  Either way, one session carries at most one request, as the
protocol has it.

A session holds the server's attention: other clients wait until it ends,
and our server drops a client that is silent for 10 seconds, so commit (or
close) promptly.  Example::

    from passt import control

    control.add("/tmp/pasta.ctl", tcp=["8080:80"], udp=["5353"])
    for name, rules in control.show("/tmp/pasta.ctl").items():
        print(name, *map(str, rules), sep="\\n  ")
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from .fwd_rule import (
    PIF_HOST,
    PIF_NAMES,
    PIF_SPLICE,
    Rule,
    RuleError,
    Table,
    apply_spec,
    read_ephemeral,
)
from .pesto_wire import (
    HELLO,
    Reply,
    decode_hello,
    decode_reply,
    decode_tables,
    encode_request,
)

__all__ = ["Session", "Refused", "ControlError", "RuleError", "show", "add", "delete"]

DEFAULT_TIMEOUT = 5.0
# Which table an option's rules go to: -t/-u inbound (HOST), -T/-U outbound (SPLICE).
OPTION_PIF = {"t": PIF_NAMES[PIF_HOST], "u": PIF_NAMES[PIF_HOST],
              "T": PIF_NAMES[PIF_SPLICE], "U": PIF_NAMES[PIF_SPLICE]}


class ControlError(Exception):
    """Talking to the server failed (connection, protocol); one line."""


class Refused(ControlError):
    """The server refused the request; nothing changed.  ``str(e)`` is its reason."""


class Session:
    """One connection to a configuration socket: the tables, then at most one request."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise ControlError(f"Failed to connect to {path}: {e.strerror or e}") from None
        self.ephemeral = read_ephemeral()
        self.buf = b""
        self.version = self._receive(decode_hello, "server greeting")
        self.buf = self.buf[HELLO.size:]
        tables, used = self._receive(decode_tables, "forwarding tables")
        self.buf = self.buf[used:]
        self.numbers = {t.name: t.pif for t in tables}
        self.tables: dict[str, Table] = {t.name: Table(t.caps, list(t.rules)) for t in tables}
        self.cleared: set[str] = set()
        self.sent = False

    def _receive(self, decode, what: str):  # type: ignore[no-untyped-def]
        """Read until ``decode(buffer)`` gives something; EOF or timeout is an error."""
        while (got := decode(self.buf)) is None:
            try:
                chunk = self.sock.recv(65536)
            except OSError as e:
                raise ControlError(f"Couldn't read {what}: {e.strerror or e}") from None
            if not chunk:
                raise ControlError(f"Couldn't read {what}: connection closed")
            self.buf += chunk
        return got

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- changing the copies ----------------------------------------------------

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            raise RuleError(f"Unsupported pif name {name}") from None

    def add(self, option: str, spec: str) -> None:
        """Add the rules of ``-OPTION SPEC`` (``option``: ``t``, ``u``, ``T`` or ``U``)."""
        apply_spec(self._table_for(option), option, spec, False, self.ephemeral)

    def delete(self, option: str, spec: str) -> None:
        """Delete the rules ``-OPTION SPEC`` would add (each must exist, exactly)."""
        apply_spec(self._table_for(option), option, spec, True, self.ephemeral)

    def clear(self, name: str) -> None:
        """Empty table ``name`` (``HOST``, ``SPLICE``)."""
        self.table(name).clear()
        self.cleared.add(name)

    def _table_for(self, option: str) -> Table:
        name = OPTION_PIF[option]
        if name not in self.tables:
            direction = "inbound" if name == "HOST" else "outbound"
            raise RuleError(f"Can't use -{option}, no {direction} interface")
        return self.tables[name]

    # -- the request ------------------------------------------------------------

    def commit(self) -> Reply | None:
        """Send every table; the server's verdict, or ``None`` if it gives none.

        Raises ``Refused`` if the server refused the request.
        """
        if self.sent:
            raise ControlError("one request per session")
        self.sent = True
        request = {self.numbers[name]: t.rules for name, t in self.tables.items()}
        try:
            self.sock.sendall(encode_request(request))
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise ControlError(f"Error writing to control socket: {e.strerror or e}") from None
        reply = self._verdict()
        if reply is not None and not reply.ok:
            raise Refused(reply.message)
        return reply

    def _verdict(self) -> Reply | None:
        while (reply := decode_reply(self.buf)) is None:
            try:
                chunk = self.sock.recv(4096)
            except ConnectionResetError:
                return None
            except OSError as e:
                raise ControlError(f"No answer from server: {e.strerror or e}") from None
            if not chunk:
                if self.buf:
                    raise ControlError("Truncated answer from server")
                return None     # upstream's server: closes without a word
            self.buf += chunk
        return reply


# -- one-call helpers -------------------------------------------------------------


def show(path: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, list[Rule]]:
    """The forwarding tables of the instance at ``path``, by name."""
    with Session(path, timeout) as session:
        return {name: list(t.rules) for name, t in session.tables.items()}


def _change(path: str, delete: bool, timeout: float,
            specs: Iterable[tuple[str, Iterable[str]]]) -> Reply | None:
    with Session(path, timeout) as session:
        for option, values in specs:
            for spec in values:
                (session.delete if delete else session.add)(option, spec)
        return session.commit()


def add(path: str, *, tcp: Iterable[str] = (), udp: Iterable[str] = (),
        tcp_ns: Iterable[str] = (), udp_ns: Iterable[str] = (),
        timeout: float = DEFAULT_TIMEOUT) -> Reply | None:
    """Add forwards given as port specs (``tcp``: as ``-t``, ``udp_ns``: as ``-U``...)."""
    return _change(path, False, timeout, (("t", tcp), ("u", udp), ("T", tcp_ns), ("U", udp_ns)))


def delete(path: str, *, tcp: Iterable[str] = (), udp: Iterable[str] = (),
           tcp_ns: Iterable[str] = (), udp_ns: Iterable[str] = (),
           timeout: float = DEFAULT_TIMEOUT) -> Reply | None:
    """Delete forwards given as the port specs that added them."""
    return _change(path, True, timeout, (("t", tcp), ("u", udp), ("T", tcp_ns), ("U", udp_ns)))
