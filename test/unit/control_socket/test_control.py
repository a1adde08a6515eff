"""The configuration socket in process: ``Forwards.apply``, the server, ``pesto`` and the API.

No namespace here: a ``Forwarder`` on this process's loop with host-side
rules bound to 127.0.0.1 only, and the server's event loop driven by the
test's thread while the client (``pesto.run``, ``control``) runs on another.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from passt import control, pesto
from passt.control_socket import rules as fwd_rule
from passt.control_socket import server as control_server
from passt.control_socket import wire as pesto_wire
from passt.flow import fwd
from passt.loop import EventLoop

LOCAL = fwd_rule.inany(ipaddress.ip_address("127.0.0.1"))
CAPS = fwd_rule.CAP_IPV4 | fwd_rule.CAP_TCP | fwd_rule.CAP_UDP | fwd_rule.CAP_IFNAME


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def adjacent_free_ports() -> tuple[int, int]:
    """Two free ports next to each other: a range rule over them opens two listeners,
    where two ephemeral ports picked apart could span thousands (and run out of
    descriptors)."""
    for _ in range(100):
        (port,) = free_ports(1)
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port + 1))
            return port, port + 1
        except OSError:
            continue
        finally:
            probe.close()
    raise RuntimeError("no two adjacent free ports")


def rule(port: int, last: int | None = None, to: int | None = None, flags: int = 0
         ) -> fwd_rule.Rule:
    return fwd_rule.Rule(fwd_rule.IPPROTO_TCP, port, last or port, to or port,
                         LOCAL, flags=flags)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def forwards() -> Iterator[control_server.Forwards]:
    loop = EventLoop()
    forwarder = fwd.Forwarder(loop)
    tables = {fwd_rule.PIF_HOST: fwd_rule.Table(CAPS)}
    yield control_server.Forwards(forwarder, tables, (socket.AF_INET,))
    forwarder.close()
    loop.close()


def test_new_rule_listens_and_deleted_one_stops(forwards):
    p1, p2 = free_ports(2)
    forwards.apply({fwd_rule.PIF_HOST: [rule(p1), rule(p2)]})
    assert listening(p1) and listening(p2)
    kept = forwards.fwd.listeners.copy()
    forwards.apply({fwd_rule.PIF_HOST: [rule(p2)]})
    assert not listening(p1) and listening(p2)
    same = [lst for lst in kept if lst.port == p2]
    assert all(forwards.fwd.listeners[lst] is kept[lst] for lst in same)   # never reopened


def test_unbindable_rule_refuses_the_whole_request(forwards):
    p1, p2 = adjacent_free_ports()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", p2))
    blocker.listen()
    try:
        with pytest.raises(fwd_rule.RuleError, match=f"port {p2}.*in use"):
            forwards.apply({fwd_rule.PIF_HOST: [rule(p1), rule(p2)]})
        assert not listening(p1)
        assert forwards.tables[fwd_rule.PIF_HOST].rules == []
        assert forwards.fwd.listeners == {}
        # best effort: the same range goes through, without the port in use
        forwards.apply({fwd_rule.PIF_HOST: [rule(p1, p2, flags=fwd_rule.WEAK)]})
        assert listening(p1)
    finally:
        blocker.close()


def test_target_port_changes_in_place(forwards):
    (p,) = free_ports(1)
    forwards.apply({fwd_rule.PIF_HOST: [rule(p)]})
    (listener,) = forwards.fwd.listeners.values()
    forwards.apply({fwd_rule.PIF_HOST: [rule(p, to=8080)]})
    assert list(forwards.fwd.listeners.values()) == [listener]
    assert listener.target_port == 8080


@pytest.mark.parametrize("bad,message", [
    ({fwd_rule.PIF_HOST: [fwd_rule.Rule(6, 1, 1, 1, LOCAL, fwd_rule.inany(
        ipaddress.ip_address("192.0.2.1")))]}, "Target addresses"),
    ({fwd_rule.PIF_HOST: [rule(5, flags=fwd_rule.SCAN)]}, "only allowed for pasta"),
    ({fwd_rule.PIF_HOST: [rule(5), rule(5)]}, "conflict"),
])
def test_invalid_requests_change_nothing(forwards, bad, message):
    with pytest.raises(fwd_rule.RuleError, match=message):
        forwards.apply(bad)
    assert forwards.tables[fwd_rule.PIF_HOST].rules == []


# -- through the socket ----------------------------------------------------------


@pytest.fixture
def server(forwards, tmp_path) -> Iterator[tuple[control_server.ControlServer, str]]:
    path = str(tmp_path / "ctl.sock")
    srv = control_server.ControlServer(control_server.bind(path), path)
    srv.start(forwards.fwd.loop, forwards)
    yield srv, path
    srv.close()


def served(srv: control_server.ControlServer, client: Callable[[], object]) -> object:
    """Run ``client`` on a thread while this one drives the server's loop."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(_catch(client)))
    thread.start()
    deadline = time.monotonic() + 30
    while thread.is_alive() and time.monotonic() < deadline:
        assert srv.loop is not None
        srv.loop.run_once(0.02)
    thread.join(1)
    value = result[0]
    if isinstance(value, BaseException):
        raise value
    return value


def _catch(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except BaseException as e:  # noqa: BLE001 - handed to the test's thread
        return e


def test_pesto_adds_shows_replaces_and_clears(server, capsys):
    srv, path = server
    p1, p2, p3 = free_ports(3)
    assert served(srv, lambda: pesto.run(["-A", "-t", f"127.0.0.1/{p1}", path])) == 0
    assert listening(p1)
    assert served(srv, lambda: pesto.run([path])) == 0
    out = capsys.readouterr().out
    assert out == (f"passt/pasta configuration ({path})\n  HOST\n"
                   f"    TCP [127.0.0.1]:{p1}  =>  {p1} \n")
    # specs before any -A/-D replace their table
    assert served(srv, lambda: pesto.run(["-s", "-t", f"127.0.0.1/{p2}",
                                          "-A", "-t", f"127.0.0.1/{p3}", path])) == 0
    out = capsys.readouterr().out
    assert out.index("Previous configuration") < out.index("Updated configuration")
    assert out.split("Updated configuration")[1].count("TCP") == 2
    assert not listening(p1) and listening(p2) and listening(p3)
    assert served(srv, lambda: pesto.run(["-C", "HOST", path])) == 0
    assert not listening(p2) and not listening(p3)


def test_pesto_exit_statuses(server, capsys):
    srv, path = server
    (p,) = free_ports(1)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", p))
    blocker.listen()
    try:
        assert served(srv, lambda: pesto.run(["-A", "-t", f"127.0.0.1/{p}", path])) == 1
    finally:
        blocker.close()
    assert "Address already in use" in capsys.readouterr().err
    for argv in (["-D", "-t", "1", path], ["-C", "SPLICE", path], ["-T", "1", path]):
        assert served(srv, lambda argv=argv: pesto.run(argv)) == 1
    assert pesto.run(["--bogus"]) == 1 and pesto.run([]) == 1
    assert pesto.run(["-A", "-t", "1", str(path) + ".nothing"]) == 1
    assert pesto.run(["-h"]) == 0 and pesto.run(["--version"]) == 0
    assert "Usage: pesto [OPTION]... PATH" in capsys.readouterr().out


def test_api_session_and_refusal(server):
    srv, path = server
    p1, p2 = free_ports(2)

    def session() -> object:
        with control.Session(path) as s:
            assert s.version == pesto_wire.VERSION and list(s.tables) == ["HOST"]
            s.add("t", f"127.0.0.1/{p1}")
            s.add("t", f"127.0.0.1/{p2}")
            return s.commit()

    reply = served(srv, session)
    assert isinstance(reply, pesto_wire.Reply) and reply.ok
    assert listening(p1) and listening(p2)
    with pytest.raises(control.RuleError, match="only allowed for pasta"):   # client-side
        served(srv, lambda: control.add(path, tcp=["auto"]))
    (p3,) = free_ports(1)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", p3))
        blocker.listen()
        with pytest.raises(control.Refused, match="in use"):                   # server-side
            served(srv, lambda: control.add(path, tcp=[f"127.0.0.1/{p3}"]))
    shown = served(srv, lambda: control.show(path))
    assert [str(r) for r in shown["HOST"]] == [f"TCP [127.0.0.1]:{p}  =>  {p} " for p in (p1, p2)]


def test_malformed_request_is_answered_and_the_next_client_served(server):
    srv, path = server

    def garbage() -> object:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            got = b""
            while pesto_wire.decode_tables(got[pesto_wire.HELLO.size:]) is None:
                got += s.recv(4096)
            s.sendall(b"\x09" * 100)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            return pesto_wire.decode_reply(answer)

    reply = served(srv, garbage)
    assert isinstance(reply, pesto_wire.Reply) and not reply.ok and "non-existent" in reply.message
    assert served(srv, lambda: control.show(path)) == {"HOST": []}


def test_socket_path_in_use_is_refused(server):
    _, path = server
    with pytest.raises(control_server.ControlError, match="already in use"):
        control_server.bind(path)


def test_auto_scanner_closes_only_its_own_listeners_and_hands_them_over(forwards):
    p1, p2 = free_ports(2)
    auto = fwd.AutoRule(fwd.TCP, fwd.HOST, lambda port: True, addr="127.0.0.1")
    scanner = fwd.AutoScanner(forwards.fwd, [auto], (socket.AF_INET,))
    scanner.apply(auto, {p1})
    forwards.apply({fwd_rule.PIF_HOST: [rule(p2)]})
    assert listening(p1) and listening(p2)
    scanner.apply(auto, set())                  # p2 is bound, but not the scanner's
    assert not listening(p1) and listening(p2)
    scanner.apply(auto, {p1})
    handed = scanner.drop(fwd.TCP, fwd.HOST)
    assert [lst.port for lst in handed] == [p1] and listening(p1)
    assert scanner.rules == [] and scanner.owned == set()
    scanner.close()
