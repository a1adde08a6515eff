"""UDP through passt's socket, with the test as the guest (no QEMU in between).

Theory of operation: the test connects to passt's UNIX socket as QEMU does
(each frame preceded by its 32-bit length) and sends UDP frames built with
scapy from the guest's address (the host's, as passt hands out) to the
world of ``test_udp_pasta`` (same namespaces, same addresses); peers are
sockets the test opens in the remote and host namespaces.  This covers what
only passt sees: a guest that speaks UDP before anything else (its MAC is
learned from its frames), a guest sending to its own address, and ``-u``
towards a guest that is not a namespace.  ``PASST_IMPL=upstream`` runs
upstream's passt instead, for comparison.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from passt.host.netns import NsRunner
from passt.packet import parse_frame, verify_ipv4_header, verify_l4

from .test_udp_pasta import (
    GATEWAY,
    HOST,
    PATH,
    REMOTE,
    VERSIONS,
    World,
    program_argv,
    stop_process,
    udp_socket,
)

pytestmark = pytest.mark.e2e

GUEST_MAC = "02:00:00:00:00:42"
FORWARDED = 10202
START_TIMEOUT = 30.0


class Guest:
    """The QEMU side of passt's socket: length-prefixed Ethernet frames."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.buf = b""
        self.our_mac = "ff:ff:ff:ff:ff:ff"

    def send_udp(self, version: int, dst: str, dport: int, payload: bytes, sport: int) -> None:
        ip_layer = (IP(src=HOST[4], dst=dst) if version == 4
                    else IPv6(src=HOST[6], dst=dst))
        frame = bytes(Ether(src=GUEST_MAC, dst=self.our_mac) / ip_layer
                      / UDP(sport=sport, dport=dport) / payload)
        self.sock.sendall(struct.pack("!I", len(frame)) + frame)

    def next_udp(self, timeout: float = 5.0) -> Ether:
        """The next UDP frame passt sends (others, such as RAs, are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while len(self.buf) >= 4 and len(self.buf) >= 4 + int.from_bytes(self.buf[:4], "big"):
                size = int.from_bytes(self.buf[:4], "big")
                frame, self.buf = self.buf[4 : 4 + size], self.buf[4 + size :]
                pkt = parse_frame(frame)
                if pkt.proto == socket.IPPROTO_UDP:
                    assert verify_l4(pkt) and (pkt.ip_version == 6 or verify_ipv4_header(pkt))
                    return Ether(frame)
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            self.buf += chunk
        raise AssertionError("no UDP frame from passt")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World().create()
    try:
        yield w
    finally:
        w.destroy()


@pytest.fixture
def guest(world: World) -> Iterator[Guest]:
    """passt in the world's host namespace, and the test connected as its guest."""
    path = tempfile.mktemp(prefix="udp-passt-", suffix=".sock")
    argv = program_argv("passt", ["--socket", path, "-u", str(FORWARDED)])
    proc = subprocess.Popen(["ip", "netns", "exec", world.host, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={"PATH": PATH, "LC_ALL": "C"})
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(path):
            assert proc.poll() is None and time.monotonic() < deadline, "passt did not start"
            time.sleep(0.1)
        g = Guest(path)
        yield g
        g.sock.close()
    finally:
        stop_process(proc)
        if os.path.exists(path):
            os.unlink(path)


def udp_ends(frame: Ether) -> tuple[str, int, str, int, bytes]:
    layer = frame[IP] if IP in frame else frame[IPv6]
    return (layer.src, layer[UDP].sport, layer.dst, layer[UDP].dport, bytes(layer[UDP].payload))


def runner(world: World, ns: str) -> NsRunner:
    return world.runner(f"/run/netns/{ns}")


@pytest.mark.parametrize("version", VERSIONS)
def test_guest_datagrams_reach_the_world_and_answers_come_back(world: World, guest: Guest,
                                                               version: int) -> None:
    server = udp_socket(runner(world, world.remote), version, REMOTE[version])
    port = server.getsockname()[1]
    for size in (1, 1400, 9000, 65000):
        payload = os.urandom(size)
        guest.send_udp(version, REMOTE[version], port, payload, sport=4444)
        data, source = server.recvfrom(65536)
        assert (data, source[:2]) == (payload, (HOST[version], 4444))
        server.sendto(payload[::-1], source)
        frame = guest.next_udp()
        assert udp_ends(frame) == (REMOTE[version], port, HOST[version], 4444, payload[::-1])
        assert frame.dst == GUEST_MAC  # learned from the guest's frames


def test_a_datagram_to_the_guests_own_address_reaches_the_host(world: World,
                                                               guest: Guest) -> None:
    """The guest's address is the host's: as upstream, such datagrams go to the host."""
    server = udp_socket(runner(world, world.host), 4, "0.0.0.0")
    port = server.getsockname()[1]
    guest.send_udp(4, HOST[4], port, b"to myself?", sport=4445)
    data, source = server.recvfrom(100)
    assert (data, source) == (b"to myself?", (HOST[4], 4445))
    server.sendto(b"from the host", source)
    src, sport, dst, dport, payload = udp_ends(guest.next_udp())
    assert (sport, dst, dport, payload) == (port, HOST[4], 4445, b"from the host")
    # Ours answers from the address the guest sent to; upstream from the gateway.
    assert src in (HOST[4], GATEWAY[4])


@pytest.mark.parametrize("version", VERSIONS)
def test_forwarded_port_reaches_the_guest_with_the_senders_address(world: World, guest: Guest,
                                                                   version: int) -> None:
    remote = runner(world, world.remote)
    client = udp_socket(remote, version, REMOTE[version])
    # Before the guest is attached, datagrams for it are dropped: one round trip first.
    echo = udp_socket(remote, version, REMOTE[version])
    guest.send_udp(version, REMOTE[version], echo.getsockname()[1], b"hello", sport=4446)
    echo.sendto(*echo.recvfrom(100))
    assert udp_ends(guest.next_udp())[4] == b"hello"
    client.sendto(b"knock knock", (HOST[version], FORWARDED))
    frame = guest.next_udp()
    assert udp_ends(frame) == (REMOTE[version], client.getsockname()[1], HOST[version],
                               FORWARDED, b"knock knock")
    guest.send_udp(version, REMOTE[version], client.getsockname()[1], b"who's there",
                   sport=FORWARDED)
    data, source = client.recvfrom(100)
    assert (data, source[:2]) == (b"who's there", (HOST[version], FORWARDED))
