"""Hostile frames: thousands of malformed frames from the guest, and nothing breaks.

Theory of operation: a guest (passt: the test on passt's socket) or a
namespace (pasta: a packet socket on pasta's tap) first opens a TCP
connection to an echo server in the remote namespace and checks it.  Then
it sends ``FRAMES`` frames generated from a seed (printed, so a failure can
be replayed): each is a well-formed frame of one protocol mangled in one way
(``HostileFrames.KINDS``):

- truncated anywhere, undersized (below Ethernet's 60 bytes), oversized
  (the largest frame the link carries), random bytes, scapy's ``fuzz()``;
- wrong IPv4 total length, header length below 5 words or past the frame,
  wrong IPv4/TCP/UDP/ICMP checksums, IPv6 payload length past the frame,
  IPv6 extension-header chains (long, overrunning, fragments, no next);
- TCP: data offsets below 20 or past the segment, option lists that
  overflow (lengths 0, 1, 255), windows of 0 and 65535 with any scale,
  segments for flows that do not exist (ACK, FIN, RST, data);
- ARP with wrong sizes or operations; NDP with zero-length and overrunning
  options; DHCP and DHCPv6 with overrunning, missing or nonsensical
  options; ICMP of every type;
- frames from sources that are not the guest's (to be dropped).

Every ``ROUND`` frames, the established connection must still echo data,
and the program must be alive.  At the end its descriptors must come back
to what they were before (flows that hostile SYNs opened are reclaimed by
the SYN timeout, or at once when the peer refuses them), and the figures
are printed: frames sent by kind, frames answered, descriptors and memory.
Last, passt gets a length prefix above the largest frame (and one below an
Ethernet header): it must drop that client, stay up, and serve the next
one.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Request, DHCP6_Solicit, DHCP6OptClientId, DHCP6OptIA_NA
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6ND_RS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrFragment,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, fuzz, raw

from passt.packet import parse_frame, parse_tcp

from .test_hostile_harness import (
    ECHO_PORT,
    TIMEOUT,
    QemuLink,
    Scene,
    Usage,
    at_eof,
    connected_guest,
    echo_check,
    passt_scene,
    pasta_scene,
    wait_for,
)
from .world import V4, V6

pytestmark = pytest.mark.e2e

FRAMES = 6000
ROUND = 1000
BATCH = 50
SEED = int(os.environ.get("HOSTILE_SEED", "0")) or random.randrange(1 << 32)
ETH_MAX = 65535
ETH_MIN = 60
RECLAIM_TIMEOUT = 30.0  # the SYN timeout (10 s) and some


def _ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


class HostileFrames:
    """Malformed frames from one guest, drawn from a seeded generator."""

    def __init__(self, rng: random.Random, guest_mac: bytes, peer_mac: bytes,
                 frame_max: int) -> None:
        self.rng = rng
        self.mac = guest_mac
        self.peer = peer_mac
        self.frame_max = frame_max
        self.guest_mac_text = guest_mac.hex(":")
        self.peer_mac_text = peer_mac.hex(":")

    # -- well-formed frames, the raw material ----------------------------------

    def _eth(self, payload: Packet, dst: str | None = None) -> Ether:
        return Ether(src=self.guest_mac_text, dst=dst or self.peer_mac_text) / payload

    def _port(self) -> int:
        return self.rng.choice((0, 7, 22, 53, 80, 443, ECHO_PORT, self.rng.randrange(65536)))

    def _dst4(self) -> str:
        return self.rng.choice((V4.gateway, V4.remote, "203.0.113.77", "255.255.255.255",
                                "224.0.0.1", "127.0.0.1", "0.0.0.0", V4.host))

    def _dst6(self) -> str:
        return self.rng.choice((V6.gateway, V6.remote, "2001:db8:2::77", "ff02::1", "::1",
                                "fe80::1", "::", V6.host))

    def tcp(self) -> Packet:
        flags = self.rng.choice(("S", "A", "F", "R", "PA", "FA", "SA", "RA", "", "FSRPAUEC"))
        ip = IP(src=V4.host, dst=self._dst4()) if self.rng.random() < 0.6 \
            else IPv6(src=V6.host, dst=self._dst6())
        tcp = TCP(sport=self.rng.randrange(1, 65536), dport=self._port(), flags=flags,
                  seq=self.rng.getrandbits(32), ack=self.rng.getrandbits(32),
                  window=self.rng.choice((0, 1, 65535, self.rng.randrange(65536))))
        payload = os.urandom(self.rng.choice((0, 0, 1, 100, 1400)))
        return self._eth(ip / tcp / payload)

    def udp(self) -> Packet:
        ip = IP(src=V4.host, dst=self._dst4()) if self.rng.random() < 0.6 \
            else IPv6(src=V6.host, dst=self._dst6())
        return self._eth(ip / UDP(sport=self.rng.randrange(1, 65536), dport=self._port())
                         / os.urandom(self.rng.choice((0, 8, 512))))

    def icmp(self) -> Packet:
        if self.rng.random() < 0.5:
            return self._eth(IP(src=V4.host, dst=self._dst4())
                             / ICMP(type=self.rng.randrange(256), code=self.rng.randrange(256))
                             / os.urandom(self.rng.randrange(64)))
        return self._eth(IPv6(src=V6.host, dst=self._dst6())
                         / ICMPv6EchoRequest(id=self.rng.randrange(65536))
                         / os.urandom(self.rng.randrange(64)))

    def arp(self) -> Packet:
        return self._eth(ARP(op=self.rng.choice((1, 2, 3, 0, 65535)), hwsrc=self.guest_mac_text,
                             psrc=V4.host, pdst=self._dst4(),
                             hwlen=self.rng.choice((6, 6, 0, 255)),
                             plen=self.rng.choice((4, 4, 0, 16))), "ff:ff:ff:ff:ff:ff")

    def ndp(self) -> Packet:
        options = b"".join(self._ndp_option() for _ in range(self.rng.randrange(4)))
        message = ICMPv6ND_NS(tgt=V6.gateway) if self.rng.random() < 0.5 else ICMPv6ND_RS()
        frame = self._eth(IPv6(src=self.rng.choice(("fe80::5054:ff:fe12:3456", "::", V6.host)),
                               dst="ff02::2", hlim=255) / message
                          / ICMPv6NDOptSrcLLAddr(lladdr=self.guest_mac_text), "33:33:00:00:00:02")
        return Ether(raw(frame) + options)

    def _ndp_option(self) -> bytes:
        kind = self.rng.randrange(256)
        units = self.rng.choice((0, 1, 2, 255))
        return bytes([kind, units]) + os.urandom(self.rng.choice((0, 6, 14)))

    def dhcp(self) -> Packet:
        options: list = [("message-type", self.rng.choice((1, 3, 7, 8, 0, 255)))]
        if self.rng.random() < 0.5:
            options.append(("param_req_list", list(os.urandom(self.rng.randrange(256)))))
        frame = self._eth(IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
                          / BOOTP(chaddr=self.mac, xid=self.rng.getrandbits(32))
                          / DHCP(options=[*options, "end"]), "ff:ff:ff:ff:ff:ff")
        data = bytearray(raw(frame))
        tail = bytes([self.rng.randrange(256), self.rng.choice((0, 1, 255))]) \
            + os.urandom(self.rng.randrange(8))
        return Ether(bytes(data[:-1]) + tail if self.rng.random() < 0.5 else bytes(data))

    def dhcpv6(self) -> Packet:
        message = DHCP6_Solicit if self.rng.random() < 0.5 else DHCP6_Request
        body = message(trid=self.rng.getrandbits(24)) / DHCP6OptClientId(duid=os.urandom(10)) \
            / DHCP6OptIA_NA(iaid=self.rng.getrandbits(32))
        junk = struct.pack("!HH", self.rng.randrange(65536), self.rng.choice((0, 4, 65535))) \
            + os.urandom(self.rng.randrange(12))
        return self._eth(IPv6(src="fe80::5054:ff:fe12:3456", dst="ff02::1:2")
                         / UDP(sport=546, dport=547) / (raw(body) + junk), "33:33:00:01:00:02")

    def base(self) -> bytes:
        maker = self.rng.choice((self.tcp, self.tcp, self.udp, self.icmp, self.arp, self.ndp,
                                 self.dhcp, self.dhcpv6))
        return raw(maker())

    # -- mangling ----------------------------------------------------------------

    def truncated(self) -> bytes:
        frame = self.base()
        return frame[: self.rng.randrange(14, max(15, len(frame)))]

    def undersized(self) -> bytes:
        return self.base()[: self.rng.randrange(14, ETH_MIN)]

    def oversized(self) -> bytes:
        frame = self.base()
        return frame + os.urandom(self.frame_max - len(frame))

    def random_bytes(self) -> bytes:
        return self.mac_header() + os.urandom(self.rng.randrange(0, 2000))

    def mac_header(self) -> bytes:
        ethertype = self.rng.choice((0x0800, 0x86DD, 0x0806, 0x8100, 0x88CC,
                                     self.rng.randrange(65536)))
        return self.peer + self.mac + struct.pack("!H", ethertype)

    def scapy_fuzz(self) -> bytes:
        layer = self.rng.choice((IP() / TCP(), IP() / UDP(), IP() / ICMP(), IPv6() / TCP(),
                                 IPv6() / UDP(), ARP()))
        return raw(Ether(src=self.guest_mac_text, dst=self.peer_mac_text) / fuzz(layer))

    def _ipv4(self) -> bytearray:
        l4 = TCP(dport=self._port()) if self.rng.random() < 0.5 else UDP(dport=self._port())
        return bytearray(raw(self._eth(IP(src=V4.host, dst=self._dst4()) / l4
                                       / os.urandom(self.rng.randrange(64)))))

    def ipv4_length(self) -> bytes:
        frame = self._ipv4()
        struct.pack_into("!H", frame, 16, self.rng.choice((0, 19, 20, 21, 65535,
                                                           self.rng.randrange(65536))))
        return bytes(frame)

    def ipv4_header_length(self) -> bytes:
        frame = self._ipv4()
        frame[14] = 0x40 | self.rng.choice((0, 1, 4, 6, 15))
        return bytes(frame)

    def checksum(self) -> bytes:
        frame = bytearray(raw(self.rng.choice((self.tcp, self.udp, self.icmp))()))
        where = self.rng.randrange(14, len(frame) - 1)
        frame[where] ^= 0xFF
        return bytes(frame)

    def ipv6_length(self) -> bytes:
        frame = bytearray(raw(self._eth(IPv6(src=V6.host, dst=self._dst6())
                                        / TCP(dport=self._port()))))
        struct.pack_into("!H", frame, 18, self.rng.choice((0, 1, 19, 65535)))
        return bytes(frame)

    def ipv6_extensions(self) -> bytes:
        chain = bytearray()
        kinds = [self.rng.choice((0, 43, 44, 60, 51)) for _ in range(self.rng.randrange(1, 40))]
        for i, _kind in enumerate(kinds):
            following = kinds[i + 1] if i + 1 < len(kinds) else \
                self.rng.choice((6, 17, 58, 59, 0, self.rng.randrange(256)))
            length = self.rng.choice((0, 0, 1, 255))
            chain += bytes([following, length]) + os.urandom(6)
        body = bytes(chain) + os.urandom(self.rng.randrange(64))
        first = kinds[0]
        header = IPv6(src=V6.host, dst=self._dst6(), nh=first, plen=self.rng.choice(
            (len(body), len(body), len(body) + 100, 8)))
        return raw(self._eth(header)) + body

    def ipv6_fragment(self) -> bytes:
        return raw(self._eth(IPv6(src=V6.host, dst=self._dst6())
                             / IPv6ExtHdrFragment(offset=self.rng.randrange(8192),
                                                  m=self.rng.randrange(2), nh=6)
                             / TCP(dport=self._port())))

    def tcp_offset(self) -> bytes:
        frame = bytearray(raw(self._eth(IP(src=V4.host, dst=self._dst4())
                                        / TCP(dport=self._port(), flags="S"))))
        frame[14 + 20 + 12] = self.rng.choice((0, 1, 4, 15)) << 4
        return bytes(frame)

    def tcp_options(self) -> bytes:
        """A SYN whose options overflow: bad lengths, and a data offset past the options."""
        options = bytes(self.rng.choice((
            [2, 0], [2, 1], [2, 255], [3, 3, 255], [8, 10], [4, 0], [1] * 40, [0],
            [self.rng.randrange(256), self.rng.randrange(256)],
        ))) + os.urandom(self.rng.randrange(8))
        options = options[:40] + bytes(-len(options[:40]) % 4)
        words = self.rng.choice((5 + len(options) // 4, 15))
        tcp = bytearray(raw(TCP(sport=self.rng.randrange(1, 65536), dport=self._port(),
                                flags="S", window=self.rng.choice((0, 65535)))))
        tcp[12] = words << 4
        segment = bytes(tcp) + options
        if self.rng.random() < 0.5:
            return raw(self._eth(IP(src=V4.host, dst=self._dst4(), proto=6) / segment))
        return raw(self._eth(IPv6(src=V6.host, dst=self._dst6(), nh=6) / segment))

    def windows(self) -> bytes:
        options = bytes([3, 3, self.rng.choice((0, 14, 15, 255)), 1, 2, 4, 0, 0])
        return raw(self._eth(IP(src=V4.host, dst=self._dst4())
                             / TCP(sport=self.rng.randrange(1, 65536), dport=self._port(),
                                   flags=self.rng.choice(("S", "A", "PA")),
                                   window=self.rng.choice((0, 65535)), options=[])
                             / options))

    def unknown_flow(self) -> bytes:
        return raw(self._eth(IP(src=V4.host, dst=self.rng.choice((V4.remote, V4.gateway)))
                             / TCP(sport=self.rng.randrange(1, 65536), dport=ECHO_PORT,
                                   flags=self.rng.choice(("A", "F", "R", "PA", "FA")),
                                   seq=self.rng.getrandbits(32), ack=self.rng.getrandbits(32))
                             / os.urandom(self.rng.choice((0, 10)))))

    def spoofed(self) -> bytes:
        src4 = self.rng.choice(("10.1.2.3", V4.gateway, V4.remote, "127.0.0.1"))
        src6 = self.rng.choice(("2001:db8:9::1", V6.remote, "::1"))
        ip = IP(src=src4, dst=V4.remote) if self.rng.random() < 0.5 \
            else IPv6(src=src6, dst=V6.remote)
        return raw(self._eth(ip / TCP(sport=self.rng.randrange(1, 65536), dport=ECHO_PORT,
                                      flags="S")))

    def other_source_mac(self) -> bytes:
        frame = bytearray(self.base())
        frame[6:12] = self.rng.choice((b"\xff" * 6, bytes(6), os.urandom(6)))
        return bytes(frame)

    KINDS: tuple[str, ...] = (
        "truncated", "undersized", "oversized", "random_bytes", "scapy_fuzz", "ipv4_length",
        "ipv4_header_length", "checksum", "ipv6_length", "ipv6_extensions", "ipv6_fragment",
        "tcp_offset", "tcp_options", "windows", "unknown_flow", "spoofed", "other_source_mac",
        "arp", "ndp", "dhcp", "dhcpv6", "icmp",
    )

    def draw(self) -> tuple[str, bytes]:
        kind = self.rng.choice(self.KINDS)
        made = getattr(self, kind)()
        frame = raw(made) if isinstance(made, Packet) else made
        return kind, frame[: self.frame_max]


# -- the two programs ------------------------------------------------------------------


@pytest.fixture
def passt_setup(chosen_impl, tmp_path) -> Iterator[Scene]:
    with passt_scene(chosen_impl, str(tmp_path)) as scene:
        yield scene


@pytest.fixture
def pasta_setup(chosen_impl, tmp_path) -> Iterator[Scene]:
    with pasta_scene(chosen_impl, str(tmp_path)) as scene:
        yield scene


def barrage(setup: Scene) -> None:
    """Send ``FRAMES`` hostile frames; check the flow each round; print what happened."""
    rng = random.Random(SEED)
    frames = HostileFrames(rng, setup.guest.mac, setup.guest.peer_mac, setup.frame_max)
    setup.echo()
    before = Usage.of(setup.pid)
    sent: Counter[str] = Counter()
    answered = 0
    started = time.monotonic()
    for round_start in range(0, FRAMES, ROUND):
        for _ in range(round_start, min(round_start + ROUND, FRAMES), BATCH):
            batch = [frames.draw() for _ in range(BATCH)]
            sent.update(kind for kind, _ in batch)
            setup.guest.send([frame for _, frame in batch])
            answered += setup.guest.pump(0.001)
            setup.guest.others.clear()
        assert setup.alive(), f"died after {round_start + ROUND} frames (seed {SEED})"
        setup.echo()
    during = Usage.of(setup.pid)
    print(f"seed {SEED}: {FRAMES} frames in {time.monotonic() - started:.1f} s, "
          f"{answered} frames answered")
    print("sent: " + ", ".join(f"{kind} {n}" for kind, n in sorted(sent.items())))
    print(f"before: {before}\nright after: {during}")
    wait_for(lambda: Usage.of(setup.pid).kinds["tcp"] <= before.kinds["tcp"], RECLAIM_TIMEOUT,
             f"TCP sockets back to {before.kinds['tcp']}", 0.5)
    after = Usage.of(setup.pid)
    setup.echo()
    print(f"TCP reclaimed: {after}; the established flow still echoes")
    datagram_flows = after.kinds["udp"] + after.kinds["icmp"]
    datagram_frames = sum(sent[k] for k in sent if k not in ("oversized", "spoofed"))
    assert datagram_flows - before.kinds["udp"] - before.kinds["icmp"] <= datagram_frames
    others = after.fds - datagram_flows
    assert others <= before.fds - before.kinds["udp"] - before.kinds["icmp"], \
        f"descriptors left behind: {after} (before: {before})"
    print(f"{datagram_flows} UDP/ICMP flow sockets wait for their idle timeouts "
          "(180 s, 60 s: see test_limits_reclaim.py)")


def test_passt_survives_hostile_frames(passt_setup: Scene) -> None:
    barrage(passt_setup)


@pytest.mark.parametrize("prefix", [ETH_MAX + 1, 1 << 31, 10])
def test_passt_drops_a_client_with_an_impossible_length(passt_setup: Scene, prefix: int) -> None:
    setup = passt_setup
    setup.guest.link.send_raw(struct.pack("!I", prefix) + os.urandom(64))
    assert isinstance(setup.guest.link, QemuLink)
    wait_for(lambda: at_eof(setup.guest.link), TIMEOUT, "passt to drop the corrupt stream")
    assert setup.alive()
    link, conn = connected_guest(setup.socket_path, 44444)
    try:
        echo_check(conn)()
    finally:
        link.close()
    print(f"length prefix {prefix}: client dropped, passt alive, the next client served")


def _tcp_dport(frame: bytes) -> int | None:
    try:
        pkt = parse_frame(frame)
        return parse_tcp(pkt.l4).dport if pkt.proto == 6 else None
    except ValueError:
        return None


def test_pasta_survives_hostile_frames(pasta_setup: Scene) -> None:
    barrage(pasta_setup)


@pytest.mark.parametrize("program", ["passt", "pasta"])
def test_frames_from_other_sources_reach_nobody(program: str, request) -> None:
    """Only the guest's own addresses get through; connections come from the host's address."""
    setup: Scene = request.getfixturevalue(f"{program}_setup")
    guest, server = setup.guest, setup.server
    setup.echo()  # the server has accepted the established flow's connection
    peers_before = len(server.peers)
    spoofed = [(src, port) for port, src in enumerate(("10.1.2.3", V4.gateway, V4.remote,
                                                       "127.0.0.1", "0.0.0.0"), 21000)]
    guest.send([raw(Ether(src=guest.mac.hex(":"), dst=guest.peer_mac.hex(":"))
                    / IP(src=src, dst=V4.remote) / TCP(sport=port, dport=ECHO_PORT, flags="S"))
                for src, port in spoofed])
    guest.pump(1.0)
    ports = {port for _, port in spoofed}
    answers = guest.take(lambda f: _tcp_dport(f) in ports)
    assert len(server.peers) == peers_before, f"spoofed SYNs connected: {server.peers}"
    assert not answers, "spoofed SYNs were answered"
    setup.echo()
    assert {peer[0] for peer in server.peers} == {V4.host}, server.peers
    print(f"{len(spoofed)} SYNs from other sources: no connection, no answer; the guest's own "
          f"connection comes from {V4.host}, the host's address")
