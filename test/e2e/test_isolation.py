"""Isolation of the running programs: what ``/proc`` shows, and traffic still flowing.

Theory of operation: passt and pasta are started as root *without*
``--runas`` (the rest of the suite passes ``--runas 0``), so that they must
drop to ``nobody``; once they are ready, every task of the process must
show, in ``/proc/PID/status`` and ``/proc/PID/task/*/status``: ``Uid`` and
``Gid`` 65534, ``NoNewPrivs: 1``, ``Seccomp: 2`` (a filter), and no
effective capability beyond those isolation.py keeps on purpose; the root
directory must be empty.  That a forbidden call (``execve``) is refused by
the installed filter is shown by test/unit/host/test_isolation.py, which runs the
same isolation in a process of its own and tries.

Then traffic must flow in every direction under the filter, or the allow-list
missed a call:

- passt, with the test as its guest (test_hostile_harness.py): ARP, TCP and
  UDP out to the remote namespace and to the host's loopback (through the
  gateway address), TCP and UDP in through forwarded ports, both families;
- pasta, attached to a namespace with ``--config-net``: every direction of
  the suite's matrix (cells.py), TCP with a bulk exchange both ways and a
  half-close, UDP with an echo, both families.

Afterwards the program must still be alive, with its status unchanged.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from passt.packet import build_frame_udp, parse_frame, parse_udp

from . import impl as impl_mod
from . import traffic
from .cells import FORWARDED, Cell, matrix, path
from .deploy import Deployment, deploy_pasta
from .test_hostile_harness import (
    ECHO_PORT,
    GATEWAY4,
    GUEST4,
    GUEST6,
    REMOTE4,
    REMOTE6,
    EchoServer,
    Guest,
    QemuLink,
    UdpEchoServer,
    in_netns,
    recv_exactly,
    start_passt,
    status,
    tasks,
    wait_for,
    world_for,
)
from .world import V4, V6, World

pytestmark = pytest.mark.e2e

NOBODY = "65534"
CAP_KILL = 1 << 5
CAP_NET_BIND_SERVICE = 1 << 10
UDP_ECHO_PORT = 7778
PAYLOAD = os.urandom(64 * 1024)


@dataclass(frozen=True)
class NoRunas(impl_mod.Impl):
    """The chosen programs with the suite's options, except ``--runas 0``."""

    def argv(self, program: str, options: list[str]) -> list[str]:
        prefix = self.passt if program == "passt" else self.pasta
        return [*prefix, "-f", "-e", *options]


def check_isolated(pid: int, allowed_caps: int = 0) -> list[str]:
    """Assert the isolation of every task of ``pid``; lines describing it."""
    lines = []
    for task in tasks(pid):
        fields = status(pid, task)
        uid, gid = fields["Uid"].split(), fields["Gid"].split()
        caps = int(fields["CapEff"], 16)
        lines.append(f"task {task}: Uid {fields['Uid']}, CapEff {caps:#x}, "
                     f"NoNewPrivs {fields['NoNewPrivs']}, Seccomp {fields['Seccomp']}")
        assert uid == [NOBODY] * 4 and gid == [NOBODY] * 4, lines[-1]
        assert caps & ~allowed_caps == 0, lines[-1]
        assert int(fields["CapPrm"], 16) & ~allowed_caps == 0, lines[-1]
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", lines[-1]
    assert os.listdir(f"/proc/{pid}/root") == [], "the root directory is not empty"
    return lines


# -- passt ------------------------------------------------------------------------


@dataclass
class PasstUnderTest:
    pid: int
    guest: Guest
    world: World
    files: dict[str, str]  # pcap, pid, log: opened before isolation, written after


@pytest.fixture(scope="module")
def passt_isolated(chosen_impl, tmp_path_factory) -> Iterator[PasstUnderTest]:
    workdir = str(tmp_path_factory.mktemp("isolation-passt"))
    with world_for("iso-passt", workdir) as world:
        servers = [EchoServer(world.remote_ns, a, ECHO_PORT) for a in (V4.remote, V6.remote)]
        servers += [EchoServer(world.host_ns, a, ECHO_PORT) for a in (V4.loopback, V6.loopback)]
        udp = UdpEchoServer(world.remote_ns, [V4.remote, V6.remote], UDP_ECHO_PORT)
        files = {name: os.path.join(workdir, f"passt.{name}") for name in ("pcap", "pid", "log")}
        options = ["-t", str(FORWARDED.stream), "-u", str(FORWARDED.dgram), "-d",
                   "--pcap", files["pcap"], "-P", files["pid"], "-l", files["log"]]
        daemon, socket_path = start_passt(chosen_impl, world, workdir, options, runas=[])
        link = QemuLink(socket_path)
        try:
            guest = Guest(link)
            guest.resolve()
            assert daemon.proc is not None
            yield PasstUnderTest(daemon.proc.pid, guest, world, files)
            assert daemon.alive(), daemon.describe()
        finally:
            link.close()
            daemon.stop()
            udp.close()
            for server in servers:
                server.close()
        with open(files["log"], errors="replace") as f:
            print(f.read()[-3000:])


def test_passt_drops_to_nobody_with_nothing_left(passt_isolated: PasstUnderTest) -> None:
    lines = check_isolated(passt_isolated.pid)
    print("\n".join(lines))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("where", ["remote", "host_loopback"])
def test_passt_tcp_out_under_the_filter(passt_isolated: PasstUnderTest, where: str,
                                        family: int) -> None:
    guest = passt_isolated.guest
    src = GUEST4 if family == 4 else GUEST6
    if where == "remote":
        dst = REMOTE4 if family == 4 else REMOTE6
    else:
        dst = GATEWAY4 if family == 4 else socket.inet_pton(socket.AF_INET6, V6.gateway)
    conn = guest.tcp(src, dst, 40000 + family * 10 + len(where), ECHO_PORT)
    conn.connect()
    assert conn.echo(PAYLOAD) == PAYLOAD
    conn.abort()
    print(f"TCP v{family} to {where}: {len(PAYLOAD)} bytes each way")


@pytest.mark.parametrize("family", [4, 6])
def test_passt_tcp_in_under_the_filter(passt_isolated: PasstUnderTest, family: int) -> None:
    """A client in the remote namespace reaches the guest through ``-t``."""
    guest = passt_isolated.guest
    target = (V4.host if family == 4 else V6.host, FORWARDED.stream)
    result: list[bytes] = []

    def client() -> None:
        sock = in_netns(passt_isolated.world.remote_ns,
                        lambda: socket.create_connection(target, timeout=10))
        with sock:
            sock.sendall(PAYLOAD)
            result.append(recv_exactly(sock, len(PAYLOAD)))

    thread = threading.Thread(target=client)
    thread.start()
    conn = guest.accept(FORWARDED.stream)
    conn.send(conn.recv(len(PAYLOAD)))
    thread.join(20)
    conn.abort()
    assert result == [PAYLOAD]
    print(f"TCP v{family} in through port {FORWARDED.stream}: {len(PAYLOAD)} bytes each way")


@pytest.mark.parametrize("family", [4, 6])
def test_passt_udp_in_under_the_filter(passt_isolated: PasstUnderTest, family: int) -> None:
    """A datagram from the remote namespace to ``-u``'s port reaches the guest; its answer
    goes back."""
    guest = passt_isolated.guest
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    sock = in_netns(passt_isolated.world.remote_ns, lambda: socket.socket(af, socket.SOCK_DGRAM))
    payload = os.urandom(1000)
    with sock:
        sock.settimeout(0.5)
        sock.sendto(payload, (V4.host if family == 4 else V6.host, FORWARDED.dgram))
        frame = _wait_frame(guest, lambda pkt: pkt.proto == 17
                            and bytes(parse_udp(pkt.l4).payload) == payload)
        pkt = parse_frame(frame)
        dgram = parse_udp(pkt.l4)
        guest.send([build_frame_udp(guest.peer_mac, guest.mac, pkt.dst, pkt.src, dgram.dport,
                                    dgram.sport, payload[::-1])])
        assert sock.recv(65536) == payload[::-1]
    print(f"UDP v{family} in through port {FORWARDED.dgram} and back")


def _wait_frame(guest: Guest, wanted, tries: int = 50) -> bytes:
    def match(raw: bytes) -> bool:
        try:
            return bool(wanted(parse_frame(raw)))
        except ValueError:
            return False

    for _ in range(tries):
        guest.pump(0.1)
        found = guest.take(match)
        if found:
            return found[0]
    raise AssertionError("expected frame did not arrive")


@pytest.mark.parametrize("family", [4, 6])
def test_passt_udp_out_under_the_filter(passt_isolated: PasstUnderTest, family: int) -> None:
    guest = passt_isolated.guest
    src, dst = (GUEST4, REMOTE4) if family == 4 else (GUEST6, REMOTE6)
    payload = os.urandom(1200)
    frame = build_frame_udp(guest.peer_mac, guest.mac, src, dst, 41000 + family,
                            UDP_ECHO_PORT, payload)

    guest.send([frame])
    _wait_frame(guest, lambda pkt: pkt.src == dst and pkt.proto == 17
                and bytes(parse_udp(pkt.l4).payload) == payload)
    print(f"UDP v{family} echo from the remote namespace")


def test_passt_files_opened_before_isolation_serve_after(passt_isolated: PasstUnderTest) -> None:
    """The PID file names the process; the pcap and the log file grow under the filter."""
    files = passt_isolated.files
    with open(files["pid"]) as f:
        assert int(f.read()) == passt_isolated.pid
    sizes = {name: os.path.getsize(files[name]) for name in ("pcap", "log")}
    passt_isolated.guest.resolve()  # one more exchange, captured and logged after isolation
    wait_for(lambda: os.path.getsize(files["pcap"]) > sizes["pcap"], 5, "the pcap file to grow")
    with open(files["log"], errors="replace") as f:
        log = f.read()
    assert "isolated: UID 65534" in log, log[-2000:]
    print(f"pcap {os.path.getsize(files['pcap'])} bytes, log {len(log)} bytes, "
          f"PID file {passt_isolated.pid}")


# -- pasta ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pasta_isolated(chosen_impl, tmp_path_factory) -> Iterator[Deployment]:
    no_runas = NoRunas(chosen_impl.name, chosen_impl.passt, chosen_impl.pasta)
    deployment = deploy_pasta(no_runas, str(tmp_path_factory.mktemp("isolation-pasta")))
    try:
        yield deployment
        assert deployment.daemon.alive(), deployment.daemon.describe()
    finally:
        deployment.teardown()


def _pasta_pid(deployment: Deployment) -> int:
    assert deployment.daemon.proc is not None
    return deployment.daemon.proc.pid


def test_pasta_drops_to_nobody_with_nothing_left(pasta_isolated: Deployment) -> None:
    lines = check_isolated(_pasta_pid(pasta_isolated))
    assert len(lines) == 2, "pasta: the main thread and the namespace helper thread"
    print("\n".join(lines))


@pytest.mark.parametrize("cell", matrix("pasta"), ids=lambda c: c.label.replace(" ", "-"))
def test_pasta_traffic_under_the_filter(pasta_isolated: Deployment, cell: Cell) -> None:
    traffic.data_check(path(cell, pasta_isolated.world, pasta_isolated.inner), cell.proto)
    check_isolated(_pasta_pid(pasta_isolated))
    print(f"{cell.label}: data intact under the filter")
