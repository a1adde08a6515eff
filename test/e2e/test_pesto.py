"""Runtime control of forwards (``-c``, ``pesto``, ``passt.control``) against a real pasta.

Each module-scoped pasta (ours, and upstream 2026's for the last test) runs
in a "host" namespace of ``bench_splice.world`` attached to a target
namespace, with no forward at start (``-t none -u none -T none -U none``).
Forwards are then added and deleted through the configuration socket, and
data goes through them: from the host namespace's loopback (spliced path)
and from the "remote" namespace to the host's address (tap path), into
servers in the target namespace, checked by SHA-256.  The socket's
permissions, other users, and malformed or oversized requests are tried on
the same instance, which must keep serving.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from passt import control, pesto_wire

from .test_splice_auto import eventually as _eventually
from .test_splice_world import bench

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "build" / "upstream-2026"
MIB = 1 << 20
WAIT = 10.0
HOST_ADDR = "192.0.2.1"         # bench world: the host's (and the namespace's) address
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
NO_FORWARDS = ("-t", "none", "-u", "none", "-T", "none", "-U", "none")


def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    return _eventually(condition, timeout)


class Instance:
    """A pasta with a configuration socket, and threads in the namespaces around it."""

    def __init__(self, ns: dict[str, str], program: list[str], path: str, tag: str,
                 forwards: tuple[str, ...] = NO_FORWARDS) -> None:
        self.path = path
        self.log = Path(path).with_suffix(".log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                bench.netns_exec(ns["host"], *program, "-f", "-d", "--config-net", "-c", path,
                                 *forwards, "--netns", f"/run/netns/{ns[tag]}", "--netns-only"),
                stdout=log, stderr=subprocess.STDOUT, env=ENV)
        self.host = bench.NsThread(f"/run/netns/{ns['host']}")
        self.remote = bench.NsThread(f"/run/netns/{ns['remote']}")
        self.target = bench.NsThread(f"/run/netns/{ns[tag]}")
        assert eventually(self.ready), f"no control socket:\n{self.log.read_text()}"

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        return _shows(self.path)

    def close(self) -> None:
        bench.stop(self.proc)


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, str]]:
    with bench.world(f"c{os.getpid() % 1000}") as ns:
        yield ns


@pytest.fixture(scope="module")
def ours(world) -> Iterator[Instance]:
    # a directory other users may enter: the socket's own permissions are under test
    directory = tempfile.mkdtemp(prefix="pesto-")
    os.chmod(directory, 0o755)
    inst = Instance(world, bench.OURS, f"{directory}/ours.sock", "ours")
    try:
        yield inst
    finally:
        inst.close()
        shutil.rmtree(directory, ignore_errors=True)


def pesto(*args: str, upstream: bool = False) -> subprocess.CompletedProcess:
    program = [str(UPSTREAM / "pesto")] if upstream else [sys.executable, "-m", "passt.pesto"]
    return subprocess.run([*program, *args], capture_output=True, text=True, timeout=60, env=ENV)


# -- traffic ---------------------------------------------------------------------


def tcp_server(side: bench.NsThread, port: int) -> socket.socket:
    s = side.call(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(8)
    s.settimeout(WAIT)
    return s


def connect(side: bench.NsThread, addr: str, port: int) -> socket.socket:
    c = side.call(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(WAIT)
    c.connect((addr, port))
    return c


def sink(conn: socket.socket, result: list[tuple[int, bytes]]) -> None:
    h, total = hashlib.sha256(), 0
    while chunk := conn.recv(MIB):
        h.update(chunk)
        total += len(chunk)
    result.append((total, h.digest()))
    conn.close()


def send_random(sock: socket.socket, size: int, h: hashlib._Hash) -> None:
    block = os.urandom(MIB)
    for _ in range(size // MIB):
        sock.sendall(block)
        h.update(block)


def tcp_transfer(client_side: bench.NsThread, addr: str, server: socket.socket, port: int,
                 size: int, middle: Callable[[], None] | None = None) -> None:
    """``size`` random bytes to ``server`` through the forward, SHA-256 checked;
    ``middle()`` runs when half of them are through."""
    client = connect(client_side, addr, port)
    conn, _ = server.accept()
    conn.settimeout(WAIT)
    result: list[tuple[int, bytes]] = []
    reader = threading.Thread(target=sink, args=(conn, result))
    reader.start()
    h = hashlib.sha256()
    send_random(client, size // 2, h)
    if middle is not None:
        middle()
    send_random(client, size - size // 2, h)
    client.shutdown(socket.SHUT_WR)
    reader.join(60)
    client.close()
    assert result == [(size, h.digest())]


def udp_exchange(client_side: bench.NsThread, server_side: bench.NsThread, port: int,
                 count: int = 64) -> None:
    """``count`` datagrams echoed through the forward; SHA-256 of both streams checked."""
    server = server_side.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))
    server.settimeout(WAIT)
    client = client_side.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    sent, seen, back = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    try:
        for i in range(count):
            payload = i.to_bytes(4, "big") + os.urandom(1200)
            sent.update(payload)
            client.sendto(payload, ("127.0.0.1", port))
            data, peer = server.recvfrom(65536)
            seen.update(data)
            server.sendto(data, peer)
            back.update(client.recvfrom(65536)[0])
    finally:
        server.close()
        client.close()
    assert seen.digest() == sent.digest() == back.digest()


def refused(side: bench.NsThread, addr: str, port: int) -> bool:
    """Whether nothing listens there; accepted, then reset (no server behind) is not refused."""
    try:
        connect(side, addr, port).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        pass
    return False


# -- the tests -------------------------------------------------------------------


def test_socket_has_upstreams_permissions(ours: Instance) -> None:
    umask = os.umask(0o22)
    os.umask(umask)
    assert os.stat(ours.path).st_mode & 0o777 == 0o777 & ~umask


def test_added_tcp_and_udp_forwards_carry_checked_data(ours: Instance) -> None:
    server = tcp_server(ours.target, 17101)
    reply = control.add(ours.path, tcp=["17101"], udp=["17102"])
    assert reply is not None and reply.ok
    # listening before the call returned: no waiting here
    tcp_transfer(ours.host, "127.0.0.1", server, 17101, 32 * MIB)         # spliced path
    tcp_transfer(ours.remote, HOST_ADDR, server, 17101, 8 * MIB)          # tap path
    udp_exchange(ours.host, ours.target, 17102)
    server.close()
    shown = control.show(ours.path)["HOST"]
    assert [str(r) for r in shown] == ["TCP [*]:17101  =>  17101 ", "UDP [*]:17102  =>  17102 "]
    assert control.delete(ours.path, tcp=["17101"], udp=["17102"]).ok
    assert control.show(ours.path)["HOST"] == []


@pytest.mark.parametrize("path,port", [("spliced", 17111), ("tap", 17112)])
def test_deleting_a_forward_during_a_transfer(ours: Instance, path: str, port: int) -> None:
    side, addr = (ours.host, "127.0.0.1") if path == "spliced" else (ours.remote, HOST_ADDR)
    server = tcp_server(ours.target, port)
    assert pesto("-A", "-t", str(port), ours.path).returncode == 0

    def delete() -> None:
        done = pesto("-D", "-t", str(port), ours.path)
        assert done.returncode == 0, done.stderr
        assert refused(side, addr, port)        # new connections: refused at once

    tcp_transfer(side, addr, server, port, 32 * MIB, middle=delete)    # this one completes
    server.close()


def test_unbindable_spec_is_refused_whole(ours: Instance) -> None:
    blocker = ours.host.call(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("0.0.0.0", 17122))
    blocker.listen(1)
    before = control.show(ours.path)
    try:
        with pytest.raises(control.Refused, match="17122.*Address already in use"):
            control.add(ours.path, tcp=["17121", "17122"])
        done = pesto("-A", "-t", "17121-17122", ours.path)
        assert done.returncode == 1 and "17122" in done.stderr
    finally:
        blocker.close()
    assert control.show(ours.path) == before
    assert refused(ours.host, "127.0.0.1", 17121)


def test_bad_specs_exit_1_before_sending(ours: Instance) -> None:
    for args in (["-t", "80-"], ["-D", "-t", "17199"], ["-C", "NOPE"], ["-x"], []):
        done = pesto(*args, ours.path) if args else pesto()
        assert done.returncode == 1, (args, done)
    assert pesto("--version").returncode == 0 and pesto("-h").returncode == 0


def _as_other_user(path: str) -> str:
    """Connect as user 65533 (a forked child: this interpreter may not be theirs to run)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65533)
            os.setuid(65533)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(WAIT)
            try:
                s.connect(path)
                out = b"hello" if s.recv(100) else b"closed"
            except OSError as e:
                out = str(e.errno).encode()
            os.write(w, out)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


def test_other_users_are_refused(ours: Instance) -> None:
    if os.stat(ours.path).st_mode & 0o002 == 0:
        assert _as_other_user(ours.path) == "13"        # EACCES: the file's permissions
    os.chmod(ours.path, 0o777)
    try:
        assert _as_other_user(ours.path) == "closed"    # SO_PEERCRED: still refused
    finally:
        os.chmod(ours.path, 0o755)
    assert "refused" in ours.log.read_text()
    assert ours.ready()


def _raw(path: str, payload: bytes) -> bytes:
    """Read the greeting, send ``payload``, return what comes back until EOF."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(WAIT)
    s.connect(path)
    got = b""
    while pesto_wire.decode_tables(got[pesto_wire.HELLO.size:]) is None:
        got += s.recv(65536)
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    except (BrokenPipeError, ConnectionResetError):
        answer = b""
    s.close()
    return answer


@pytest.mark.parametrize("payload", [
    pytest.param(b"\x07" + b"\xff" * 100, id="unknown-pif"),
    pytest.param(b"\x01\xff\xff\xff\xff", id="huge-count"),
    pytest.param(b"\x01" * (4 * MIB), id="oversized"),
    pytest.param(b"\x01\x00\x00\x00\x01" + b"\x00" * 20, id="truncated"),
    pytest.param(b"\x01\x00\x00\x00\x01" + b"x" * 56 + b"\x00", id="bad-ifname"),
])
def test_malformed_and_oversized_requests_are_survived(ours: Instance, payload: bytes) -> None:
    before = control.show(ours.path)
    answer = _raw(ours.path, payload)
    if answer:
        reply = pesto_wire.decode_reply(answer)
        assert reply is not None and not reply.ok
    assert control.show(ours.path) == before
    assert ours.proc.poll() is None


def test_upstream_pesto_drives_ours(ours: Instance) -> None:
    server = tcp_server(ours.target, 17131)
    done = pesto("-A", "-t", "17131", "-u", "17132", ours.path, upstream=True)
    assert done.returncode == 0, done.stderr
    assert eventually(lambda: not refused(ours.host, "127.0.0.1", 17131))
    server.accept()[0].close()
    tcp_transfer(ours.host, "127.0.0.1", server, 17131, 16 * MIB)
    udp_exchange(ours.host, ours.target, 17132)
    shown = pesto(ours.path, upstream=True).stdout
    assert "TCP [*]:17131  =>  17131" in shown and "UDP [*]:17132  =>  17132" in shown
    assert pesto("-D", "-t", "17131", "-u", "17132", ours.path, upstream=True).returncode == 0
    assert eventually(lambda: refused(ours.host, "127.0.0.1", 17131))
    server.close()


def test_ours_drives_upstream_pasta(world, tmp_path) -> None:
    # --runas 0: started as root, upstream would drop to nobody and lose the namespace
    inst = Instance(world, [str(UPSTREAM / "pasta"), "--runas", "0"],
                    str(tmp_path / "upstream.sock"), "upstream")
    try:
        server = tcp_server(inst.target, 17141)
        done = pesto("-s", "-A", "-t", "17141", inst.path)
        assert done.returncode == 0, done.stderr
        assert "Updated configuration" in done.stdout and "17141" in done.stdout
        assert eventually(lambda: not refused(inst.host, "127.0.0.1", 17141))
        server.accept()[0].close()
        tcp_transfer(inst.host, "127.0.0.1", server, 17141, 16 * MIB)
        assert [str(r) for r in control.show(inst.path)["HOST"]] == \
            ["TCP [*]:17141  =>  17141 "]
        assert pesto("-C", "HOST", inst.path).returncode == 0
        assert eventually(lambda: refused(inst.host, "127.0.0.1", 17141))
        server.close()
    finally:
        inst.close()


def test_a_silent_client_is_dropped_and_the_next_served(ours: Instance) -> None:
    silent = socket.socket(socket.AF_UNIX)
    silent.settimeout(60)
    silent.connect(ours.path)
    assert silent.recv(pesto_wire.HELLO.size)           # served first, then says nothing
    started = time.monotonic()
    tables = control.show(ours.path, timeout=60)        # waits in the backlog meanwhile
    assert "HOST" in tables
    assert time.monotonic() - started >= 5              # not before the silent one's timeout
    while silent.recv(65536):
        pass                                            # ...which the server closed
    silent.close()


def test_readme_example_runs(ours: Instance) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    before = control.show(ours.path)
    exec(compile(example.replace("/tmp/pasta.ctl", ours.path), "README.md", "exec"), {})
    tables = control.show(ours.path)
    assert [str(r) for r in tables["HOST"]] == ["UDP [*]:5353  =>  5353 "]
    assert [str(r) for r in tables["SPLICE"]] == ["TCP [*]%lo:5432  =>  5432 "]
    with control.Session(ours.path) as session:
        session.delete("u", "5353")
        session.clear("SPLICE")
        assert session.commit().ok
    assert control.show(ours.path) == before


def test_passt_takes_conf_path_too(world, tmp_path) -> None:
    path = str(tmp_path / "passt.ctl")
    with open(tmp_path / "passt.log", "w") as log:
        proc = subprocess.Popen(
            bench.netns_exec(world["host"], sys.executable, "-c",
                             "from passt.cli import main_passt; main_passt()", "-f", "-d",
                             "-s", str(tmp_path / "qemu.sock"), "-c", path, "-t", "none"),
            stdout=log, stderr=subprocess.STDOUT, env=ENV)
    host = bench.NsThread(f"/run/netns/{world['host']}")
    try:
        assert eventually(lambda: os.path.exists(path) and proc.poll() is None)
        assert eventually(lambda: _shows(path))
        assert list(control.show(path)) == ["HOST"]             # no SPLICE table in passt
        assert control.add(path, tcp=["17151"]).ok
        assert not refused(host, "127.0.0.1", 17151)
        done = pesto("-A", "-T", "17152", path)
        assert done.returncode == 1 and "no outbound interface" in done.stderr
        assert "TCP [*]:17151" in pesto(path, upstream=True).stdout
        assert pesto("-D", "-t", "17151", path).returncode == 0
        assert refused(host, "127.0.0.1", 17151)
    finally:
        bench.stop(proc)


def _shows(path: str) -> bool:
    try:
        control.show(path)
    except control.ControlError:
        return False
    return True


def test_pastas_default_auto_can_be_replaced_not_extended(world) -> None:
    directory = tempfile.mkdtemp(prefix="pesto-")
    target = f"{world['ours']}a"        # a namespace of its own: "ours" has a pasta already
    bench.sh("ip", "netns", "add", target)
    try:
        inst = Instance(dict(world, auto=target), bench.OURS, f"{directory}/auto.sock", "auto",
                        forwards=())
    except BaseException:
        bench.sh("ip", "netns", "del", target, check=False)
        raise
    try:
        server = tcp_server(inst.target, 17171)
        assert eventually(lambda: not refused(inst.host, "127.0.0.1", 17171))   # auto found it
        server.accept()[0].close()
        done = pesto("-A", "-t", "17172", inst.path)
        assert done.returncode == 1 and "conflict" in done.stderr               # as upstream
        assert pesto("-t", "17171", inst.path).returncode == 0                  # replaces HOST
        assert [str(r) for r in control.show(inst.path)["HOST"]] == ["TCP [*]:17171  =>  17171 "]
        tcp_transfer(inst.host, "127.0.0.1", server, 17171, 8 * MIB)   # the listener stayed
        server.close()
        time.sleep(2.5)                 # a few scans: no longer auto's to close
        assert not refused(inst.host, "127.0.0.1", 17171)
        done = pesto("-A", "-t", "18000-18010,auto", inst.path)
        assert done.returncode == 1 and "only be removed" in done.stderr
    finally:
        inst.close()
        bench.sh("ip", "netns", "del", target, check=False)
        shutil.rmtree(directory, ignore_errors=True)
