"""passt's L2/L3 services over its UNIX socket, with the test as the guest.

Theory of operation: booting a guest proves that a real kernel and udhcpc
are satisfied (test_passt.py); this checks, frame by frame, what passt
answers, with no QEMU in between.  The test connects to passt's socket as
QEMU would (``-netdev stream``: each frame preceded by its length, 32 bits
big-endian), sends the requests a booting guest sends (ARP, a DHCP
DISCOVER, a router and a neighbour solicitation, a DHCPv6 Solicit, echo
requests to the remote namespace) and reads the answers with scapy.  passt
runs in the world's host namespace (world.py) and, unlike pasta, advertises
the host's resolvers by default: those of the world's resolv.conf.

Like every cell, it waits for the parts of ours it needs (features.py) and
must pass against upstream too (``PASST_IMPL=upstream``).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import (
    DHCP6_Advertise,
    DHCP6_Reply,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
    DHCP6OptRapidCommit,
)
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from .cells import Cell, cell_id
from .daemon import Daemon
from .deploy import Deployment
from .impl import Impl
from .world import RESOLVERS, V4, V6, World

pytestmark = pytest.mark.e2e

GUEST_MAC = "52:54:00:12:34:56"
GUEST_LL = "fe80::5054:ff:fe12:3456"
ANSWER_TIMEOUT = 5.0


class GuestLink:
    """The guest's end of passt's socket: frames out, frames in, by the stream's framing."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(0.2)
        self._buffer = b""

    def send(self, frame: Packet) -> None:
        raw = bytes(frame)
        self.sock.sendall(struct.pack("!I", len(raw)) + raw)

    def _frames(self) -> Iterator[bytes]:
        while len(self._buffer) >= 4:
            size = struct.unpack_from("!I", self._buffer)[0]
            if len(self._buffer) < 4 + size:
                return
            yield self._buffer[4 : 4 + size]
            self._buffer = self._buffer[4 + size :]

    def expect(self, wanted: Callable[[Ether], bool], what: str) -> Ether:
        """The first frame ``wanted`` accepts, within ``ANSWER_TIMEOUT``."""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while time.monotonic() < deadline:
            for raw in self._frames():
                frame = Ether(raw)
                if wanted(frame):
                    return frame
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            self._buffer += chunk
        raise AssertionError(f"no {what} from passt")

    def close(self) -> None:
        self.sock.close()


def from_guest(l3: Packet, dst: str = "ff:ff:ff:ff:ff:ff") -> Ether:
    return Ether(src=GUEST_MAC, dst=dst) / l3


def check_arp(link: GuestLink) -> None:
    link.send(from_guest(ARP(op=1, hwsrc=GUEST_MAC, psrc=V4.host, pdst=V4.gateway)))
    reply = link.expect(lambda f: f.haslayer(ARP) and f[ARP].op == 2, "ARP reply")
    assert (reply[ARP].psrc, reply[ARP].pdst, reply.dst) == (V4.gateway, V4.host, GUEST_MAC)


def check_dhcp(link: GuestLink) -> None:
    discover = from_guest(
        IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
        / BOOTP(chaddr=bytes.fromhex(GUEST_MAC.replace(":", "")), xid=0x5A5A)
        / DHCP(options=[("message-type", "discover"), "end"])
    )  # fmt: skip
    link.send(discover)
    offer = link.expect(lambda f: f.haslayer(DHCP) and f[BOOTP].xid == 0x5A5A, "DHCP offer")
    options = {o[0]: o[1:] for o in offer[DHCP].options if isinstance(o, tuple)}
    assert offer[BOOTP].yiaddr == V4.host
    assert options["message-type"] == (2,) and options["router"] == (V4.gateway,)
    assert options["interface-mtu"] == (65520,) and options["name_server"] == (RESOLVERS[4],)


def check_ndp(link: GuestLink) -> None:
    link.send(from_guest(IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS(),
                         dst="33:33:00:00:00:02"))
    ra = link.expect(lambda f: f.haslayer(ICMPv6ND_RA), "router advertisement")
    assert ra[IPv6].hlim == 255 and ra[ICMPv6ND_RA].routerlifetime > 0
    assert ra[ICMPv6NDOptPrefixInfo].prefix == "2001:db8:1::"
    assert ra[ICMPv6NDOptPrefixInfo].A == 1 and ra[ICMPv6NDOptMTU].mtu == 65520
    assert RESOLVERS[6] in ra[ICMPv6NDOptRDNSS].dns
    link.send(from_guest(IPv6(src=GUEST_LL, dst="ff02::1:ff00:2", hlim=255)
                         / ICMPv6ND_NS(tgt=V6.gateway), dst="33:33:ff:00:00:02"))
    na = link.expect(lambda f: f.haslayer(ICMPv6ND_NA), "neighbour advertisement")
    assert (na[ICMPv6ND_NA].tgt, na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S) == (V6.gateway, 1, 1)


def check_dhcpv6(link: GuestLink) -> None:
    duid = bytes.fromhex("00030001" + GUEST_MAC.replace(":", ""))
    solicit = (DHCP6_Solicit(trid=0x1234) / DHCP6OptClientId(duid=duid)
               / DHCP6OptIA_NA(iaid=1) / DHCP6OptElapsedTime() / DHCP6OptRapidCommit()
               / DHCP6OptOptReq(reqopts=[23, 24]))
    link.send(from_guest(IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547)
                         / solicit, dst="33:33:00:01:00:02"))
    # Rapid Commit is the server's choice: a Reply, or an Advertise (upstream's).
    reply = link.expect(lambda f: f.haslayer(DHCP6_Reply) or f.haslayer(DHCP6_Advertise),
                        "DHCPv6 reply or advertise")
    assert (reply[DHCP6_Reply] if reply.haslayer(DHCP6_Reply) else reply[DHCP6_Advertise]).trid \
        == 0x1234
    assert reply[DHCP6OptIA_NA][DHCP6OptIAAddress].addr == V6.host
    assert RESOLVERS[6] in reply[DHCP6OptDNSServers].dnsservers


def check_echo(link: GuestLink) -> None:
    link.send(from_guest(IP(src=V4.host, dst=V4.remote) / ICMP(id=0x77, seq=3) / (b"x" * 32)))
    reply = link.expect(lambda f: f.haslayer(ICMP) and f[ICMP].type == 0, "echo reply")
    assert (reply[IP].src, reply[ICMP].id, reply[ICMP].seq) == (V4.remote, 0x77, 3)
    link.send(from_guest(IPv6(src=V6.host, dst=V6.remote) / ICMPv6EchoRequest(id=0x78, seq=4)))
    reply6 = link.expect(lambda f: f.haslayer(ICMPv6EchoReply), "ICMPv6 echo reply")
    assert (reply6[IPv6].src, reply6[ICMPv6EchoReply].id) == (V6.remote, 0x78)


CHECKS = {"socket_arp": check_arp, "socket_dhcp": check_dhcp, "socket_ndp": check_ndp,
          "socket_dhcpv6": check_dhcpv6, "socket_ping_remote": check_echo}
CELLS = [Cell("passt", name) for name in CHECKS]


@pytest.fixture
def passt_link(
    request: pytest.FixtureRequest, chosen_impl: Impl, tmp_path: str
) -> Iterator[GuestLink]:
    workdir = str(tmp_path)
    world = World("l2sock", workdir).create()
    path = os.path.join(workdir, "passt.sock")
    argv = chosen_impl.argv("passt", ["-s", path, "-1", "-t", "none", "-u", "none"])
    deployment = Deployment(world, Daemon(argv, world.host_ns, os.path.join(workdir, "log")),
                            world.host)
    request.node.e2e_deployment = deployment
    link = None
    try:
        deployment.daemon.start(lambda: os.path.exists(path))
        link = GuestLink(path)
        yield link
    finally:
        if link is not None:
            link.close()
        deployment.teardown()


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_passt_answers(cell: Cell, passt_link: GuestLink) -> None:
    CHECKS[cell.name](passt_link)
