"""Known-good frames: scapy builds what we parse, and parses what we build.

Scapy is the independent reference for both field layouts and checksums.
The edge cases (IPv4 options, fragments, IPv6 extension-header chains, TCP
options) are spelled out one by one here; the property tests live in
test_packet_props.py.
"""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw, raw

from passt import packet as pk

from .l2_fixtures import completed_as_a_device_would

GUEST_MAC = bytes.fromhex("5254009a0b0c")
GW_MAC = bytes.fromhex("9a55aa0102f3")
V4 = (socket.inet_pton(socket.AF_INET, "10.0.2.15"), socket.inet_pton(socket.AF_INET, "10.0.2.2"))
V6 = (
    socket.inet_pton(socket.AF_INET6, "2001:db8::15"),
    socket.inet_pton(socket.AF_INET6, "fe80::1"),
)
FAMILIES = {"ipv4": V4, "ipv6": V6}
SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (11, 22)), ("NOP", None), ("WScale", 7)]


def mac_str(mac: bytes) -> str:
    return mac.hex(":")


def ip_str(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def scapy_ip(src: bytes, dst: bytes, ttl: int = 64) -> ScapyPacket:
    """Ethernet + IP layer as scapy would send it from the guest."""
    eth = Ether(src=mac_str(GUEST_MAC), dst=mac_str(GW_MAC))
    if len(src) == 4:
        return eth / IP(src=ip_str(src), dst=ip_str(dst), flags="DF", ttl=ttl)
    return eth / IPv6(src=ip_str(src), dst=ip_str(dst), hlim=ttl)


def scapy_recomputed(frame: bytes) -> bytes:
    """The frame as scapy re-serialises it with the IP and L4 checksums recomputed.

    Layers quoted inside ICMP errors keep theirs.
    """
    parsed = Ether(frame)
    layer = parsed
    while layer:
        field = next((f for f in ("chksum", "cksum") if hasattr(layer, f)), None)
        if field:
            setattr(layer, field, None)
            if not isinstance(layer, IP):
                break
        layer = layer.payload
    return raw(Ether(raw(parsed)))


# ---------------------------------------------------------------- scapy builds, we parse


@pytest.mark.parametrize("family", FAMILIES)
def test_parse_scapy_tcp_syn(family: str) -> None:
    src, dst = FAMILIES[family]
    frame = raw(
        scapy_ip(src, dst)
        / TCP(sport=40000, dport=22, seq=0xFFFFFFF0, ack=7, flags="S", window=64240,
              options=SYN_OPTS)
        / Raw(b"hello")
    )  # fmt: skip
    pkt = pk.parse_frame(frame)
    assert (pkt.eth_dst, pkt.eth_src) == (GW_MAC, GUEST_MAC)
    assert pkt.ip_version == (4 if family == "ipv4" else 6)
    assert (pkt.src, pkt.dst, pkt.proto, pkt.ttl, pkt.fragment) == (src, dst, 6, 64, False)
    assert pkt.l4_offset == 14 + (20 if family == "ipv4" else 40)
    seg = pk.parse_tcp(pkt.l4)
    assert (seg.sport, seg.dport, seg.seq, seg.ack) == (40000, 22, 0xFFFFFFF0, 7)
    assert (seg.flags, seg.window) == (pk.SYN, 64240)
    assert (seg.mss, seg.wscale, seg.sack_ok, seg.ts_val, seg.ts_ecr) == (1460, 7, True, 11, 22)
    assert bytes(seg.payload) == b"hello"
    assert pk.verify_l4(pkt)
    assert pk.verify_ipv4_header(pkt) == (family == "ipv4")


@pytest.mark.parametrize("family", FAMILIES)
def test_parse_scapy_udp(family: str) -> None:
    src, dst = FAMILIES[family]
    frame = raw(scapy_ip(src, dst, ttl=3) / UDP(sport=5353, dport=53) / Raw(b"q" * 33))
    pkt = pk.parse_frame(frame)
    assert (pkt.proto, pkt.ttl) == (17, 3)
    dgram = pk.parse_udp(pkt.l4)
    assert (dgram.sport, dgram.dport, bytes(dgram.payload)) == (5353, 53, b"q" * 33)
    assert pk.verify_l4(pkt)


@pytest.mark.parametrize("family", FAMILIES)
def test_parse_scapy_echo_request(family: str) -> None:
    src, dst = FAMILIES[family]
    if family == "ipv4":
        l4 = ICMP(type=8, id=0x1234, seq=9) / Raw(b"ping")
    else:
        l4 = ICMPv6EchoRequest(id=0x1234, seq=9, data=b"ping")
    pkt = pk.parse_frame(raw(scapy_ip(src, dst) / l4))
    msg = pk.parse_icmp(pkt.l4) if family == "ipv4" else pk.parse_icmpv6(pkt.l4)
    expected_type = 8 if family == "ipv4" else 128
    assert (msg.type, msg.code, msg.ident, msg.seq, bytes(msg.body)) == (
        expected_type, 0, 0x1234, 9, b"ping",
    )  # fmt: skip
    assert pk.verify_l4(pkt)


def test_parse_scapy_arp() -> None:
    frame = raw(
        Ether(src=mac_str(GUEST_MAC), dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=mac_str(GUEST_MAC), psrc="10.0.2.15", pdst="10.0.2.2")
    )
    pkt = pk.parse_frame(frame)
    assert (pkt.ethertype, pkt.ip_version, pkt.src, pkt.proto) == (pk.ETH_P_ARP, 0, None, 0)
    arp = pk.parse_arp(pkt.l4)
    assert arp == pk.ArpMessage(pk.ARP_REQUEST, GUEST_MAC, V4[0], bytes(6), V4[1])
    assert not pk.verify_l4(pkt) and not pk.verify_ipv4_header(pkt)


# ---------------------------------------------------------------- we build, scapy parses


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [0, 1, 1460, 65000])
def test_build_tcp_frame_matches_scapy(family: str, size: int) -> None:
    src, dst = FAMILIES[family]
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    opts = pk.tcp_options(mss=1460, wscale=7, sack_ok=True, ts=(11, 22))
    frame = pk.build_frame_tcp(GW_MAC, GUEST_MAC, src, dst, 22, 40000, 1, 0xFFFFFFFF,
                               pk.SYN | pk.ACK, 65535, payload, options=opts)  # fmt: skip
    parsed = Ether(frame)
    tcp = parsed[TCP]
    assert (parsed.dst, parsed.src) == (mac_str(GW_MAC), mac_str(GUEST_MAC))
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.window) == (22, 40000, 1, 0xFFFFFFFF, 65535)
    assert tcp.flags == "SA"
    assert tcp.options == SYN_OPTS
    assert bytes(tcp.payload) == payload
    assert scapy_recomputed(frame) == frame


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [0, 7, 2000])
def test_build_udp_frame_matches_scapy(family: str, size: int) -> None:
    src, dst = FAMILIES[family]
    frame = pk.build_frame_udp(GW_MAC, GUEST_MAC, src, dst, 53, 5353, b"\xa5" * size, ttl=9)
    parsed = Ether(frame)
    assert (parsed[UDP].sport, parsed[UDP].dport, parsed[UDP].len) == (53, 5353, 8 + size)
    assert (parsed[IP].ttl if family == "ipv4" else parsed[IPv6].hlim) == 9
    assert scapy_recomputed(frame) == frame


def test_udp_checksum_that_sums_to_zero_is_sent_as_ffff() -> None:
    src, dst = V4
    zero_payload = pk.build_udp(src, dst, 1, 2, b"\0\0")
    complement = zero_payload[6:8]  # adding the checksum itself makes the sum 0xffff
    dgram = pk.build_udp(src, dst, 1, 2, complement)
    assert dgram[6:8] == b"\xff\xff"
    frame = pk.build_frame_udp(GW_MAC, GUEST_MAC, src, dst, 1, 2, complement)
    assert scapy_recomputed(frame) == frame
    assert pk.verify_l4(pk.parse_frame(frame))


@pytest.mark.parametrize("family", FAMILIES)
def test_build_echo_reply_matches_scapy(family: str) -> None:
    src, dst = FAMILIES[family]
    reply_type = 0 if family == "ipv4" else 129
    frame = pk.build_frame_icmp(GW_MAC, GUEST_MAC, src, dst, reply_type, 0, 77, 3, b"pong")
    parsed = Ether(frame)
    assert scapy_recomputed(frame) == frame
    if family == "ipv4":
        assert (parsed[ICMP].type, parsed[ICMP].id, parsed[ICMP].seq) == (0, 77, 3)
    else:
        assert (parsed[IPv6].nh, parsed.lastlayer().id, parsed.lastlayer().seq) == (58, 77, 3)


def test_icmp_error_fields_are_the_rest_of_header_halves() -> None:
    src, dst = V4
    frame = pk.build_frame_icmp(GW_MAC, GUEST_MAC, src, dst, 3, 4, 0, 1400, b"x" * 28)
    assert Ether(frame)[ICMP].nexthopmtu == 1400
    assert scapy_recomputed(frame) == frame
    src6, dst6 = V6
    mtu = 0x12345
    too_big = pk.build_frame_icmp(GW_MAC, GUEST_MAC, src6, dst6, 2, 0, mtu >> 16, mtu & 0xFFFF)
    assert Ether(too_big)[ICMPv6PacketTooBig].mtu == mtu
    assert scapy_recomputed(too_big) == too_big


def test_build_arp_reply_matches_scapy() -> None:
    frame = pk.build_frame_arp(GUEST_MAC, GW_MAC, pk.ARP_REPLY, GW_MAC, V4[1], GUEST_MAC, V4[0])
    arp = Ether(frame)[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc) == (2, mac_str(GW_MAC), "10.0.2.2")
    assert (arp.hwdst, arp.pdst) == (mac_str(GUEST_MAC), "10.0.2.15")
    assert Ether(frame).type == pk.ETH_P_ARP


def test_layered_builders_equal_frame_builders() -> None:
    for src, dst in FAMILIES.values():
        tcp = pk.build_tcp(src, dst, 1, 2, 3, 4, pk.ACK, 5, b"data")
        frame = pk.build_frame_tcp(GW_MAC, GUEST_MAC, src, dst, 1, 2, 3, 4, pk.ACK, 5, b"data")
        assert pk.build_frame_ip(GW_MAC, GUEST_MAC, src, dst, pk.IPPROTO_TCP, tcp) == frame
        if len(src) == 4:
            ip = pk.build_ipv4(src, dst, pk.IPPROTO_TCP, tcp)
            assert pk.build_eth(GW_MAC, GUEST_MAC, pk.ETH_P_IP, ip) == frame
            icmp = pk.build_icmp(src, dst, 8, 0, 1, 2, b"b")
        else:
            ip = pk.build_ipv6(src, dst, pk.IPPROTO_TCP, tcp)
            assert pk.build_eth(GW_MAC, GUEST_MAC, pk.ETH_P_IPV6, ip) == frame
            icmp = pk.build_icmpv6(src, dst, 128, 0, 1, 2, b"b")
        icmp_frame = pk.build_frame_icmp(GW_MAC, GUEST_MAC, src, dst, icmp[0], 0, 1, 2, b"b")
        assert icmp_frame.endswith(icmp)


def test_ipv6_builder_fields_reach_scapy() -> None:
    ip6 = IPv6(pk.build_ipv6(V6[0], V6[1], 59, b"", ttl=255, tclass=0xB8, flow_label=0xABCDE))
    assert (ip6.hlim, ip6.tc, ip6.fl, ip6.nh, ip6.plen) == (255, 0xB8, 0xABCDE, 59, 0)


# ---------------------------------------------------------------- IPv4 options, lengths, fragments


def test_ipv4_options_are_skipped_by_ihl() -> None:
    options = b"\x07\x07\x04" + bytes(4) + b"\x00"  # record route, EOL
    tcp = pk.build_tcp(V4[0], V4[1], 1, 2, 3, 4, pk.ACK, 5, b"after options")
    ip = pk.build_ipv4(V4[0], V4[1], pk.IPPROTO_TCP, tcp, options=options, ident=0x4242)
    frame = pk.build_eth(GW_MAC, GUEST_MAC, pk.ETH_P_IP, ip)
    pkt = pk.parse_frame(frame)
    assert pkt.l4_offset == 14 + 28
    assert bytes(pk.parse_tcp(pkt.l4).payload) == b"after options"
    assert pk.verify_ipv4_header(pkt) and pk.verify_l4(pkt)
    parsed = Ether(frame)
    assert (parsed[IP].ihl, parsed[IP].id, parsed[IP].options[0].option) == (7, 0x4242, 7)
    assert scapy_recomputed(frame) == frame


def test_ipv4_options_must_be_padded() -> None:
    with pytest.raises(ValueError):
        pk.build_ipv4(V4[0], V4[1], 6, b"", options=b"\x01")


def test_ethernet_padding_is_trimmed_by_ip_length() -> None:
    for src, dst in FAMILIES.values():
        frame = pk.build_frame_udp(GW_MAC, GUEST_MAC, src, dst, 1, 2, b"ab")
        pkt = pk.parse_frame(frame + bytes(20))
        assert len(pkt.l4) == 10
        assert bytes(pk.parse_udp(pkt.l4).payload) == b"ab"
        assert pk.verify_l4(pkt)


def test_truncated_ip_packets_are_errors() -> None:
    for src, dst in FAMILIES.values():
        frame = pk.build_frame_udp(GW_MAC, GUEST_MAC, src, dst, 1, 2, b"abc")
        with pytest.raises(pk.ParseError) as err:
            pk.parse_frame(frame[:-1])
        assert err.value.reason in ("ipv4_length", "ipv6_length")


@pytest.mark.parametrize(
    ("flags", "offset", "fragment"),
    [("DF", 0, False), ("", 0, False), ("MF", 0, True), ("", 100, True), ("MF", 100, True)],
)
def test_ipv4_fragments(flags: str, offset: int, fragment: bool) -> None:
    frame = raw(
        Ether() / IP(src="10.0.2.15", dst="10.0.2.2", flags=flags, frag=offset) / UDP() / b"x"
    )
    pkt = pk.parse_frame(frame)
    assert pkt.fragment is fragment
    assert pk.verify_l4(pkt) is not fragment


@pytest.mark.parametrize(
    ("ver_ihl", "reason"), [(0x44, "ipv4_length"), (0x65, "ipv4_version"), (0x4F, "ipv4_length")]
)
def test_bad_ipv4_headers(ver_ihl: int, reason: str) -> None:
    frame = bytearray(pk.build_frame_udp(GW_MAC, GUEST_MAC, V4[0], V4[1], 1, 2, b"x"))
    frame[14] = ver_ihl
    with pytest.raises(pk.ParseError) as err:
        pk.parse_frame(frame)
    assert err.value.reason == reason


def test_udp_length_trims_payload_and_is_checked() -> None:
    dgram = bytearray(pk.build_udp(V4[0], V4[1], 1, 2, b"abcdef"))
    dgram[4:6] = (8 + 3).to_bytes(2, "big")
    assert bytes(pk.parse_udp(dgram).payload) == b"abc"
    for bad in (7, 15):
        dgram[4:6] = bad.to_bytes(2, "big")
        with pytest.raises(pk.ParseError):
            pk.parse_udp(dgram)


def test_unknown_ethertype_parses_without_ip() -> None:
    pkt = pk.parse_frame(pk.build_eth(GW_MAC, GUEST_MAC, 0x88CC, b"lldp"))
    assert (pkt.ip_version, pkt.proto, pkt.src, pkt.dst) == (0, 0, None, None)
    assert bytes(pkt.l4) == b"lldp"


def test_ip_ethertype_with_short_payload() -> None:
    for ethertype in (pk.ETH_P_IP, pk.ETH_P_IPV6):
        with pytest.raises(pk.ParseError):
            pk.parse_frame(pk.build_eth(GW_MAC, GUEST_MAC, ethertype, bytes(19)))
    with pytest.raises(pk.ParseError) as err:
        pk.parse_frame(bytes(13))
    assert err.value.reason == "short_frame"


def test_bad_arp_messages() -> None:
    good = pk.build_arp(1, GUEST_MAC, V4[0], bytes(6), V4[1])
    with pytest.raises(pk.ParseError):
        pk.parse_arp(good[:27])
    with pytest.raises(pk.ParseError):
        pk.parse_arp(b"\x00\x06" + good[2:])  # IEEE 802 hardware type


# ---------------------------------------------------------------- IPv6 extension headers


def six_with(*extensions: ScapyPacket, l4: ScapyPacket | None = None) -> bytes:
    chain = scapy_ip(*V6)
    for ext in extensions:
        chain = chain / ext
    return raw(chain / (l4 if l4 is not None else TCP(sport=1, dport=2) / Raw(b"payload")))


EXT_CHAINS = {
    "hop-by-hop": [IPv6ExtHdrHopByHop()],
    "routing": [IPv6ExtHdrRouting(addresses=["2001:db8::99"])],
    "dest-opts": [IPv6ExtHdrDestOpt()],
    "ah": [AH(nh=6, payloadlen=4, spi=1, seq=1, icv=bytes(12))],
    "atomic-fragment": [IPv6ExtHdrFragment(offset=0, m=0)],
    "all": [
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrDestOpt(),
        IPv6ExtHdrRouting(addresses=["2001:db8::99", "2001:db8::98"]),
        IPv6ExtHdrFragment(offset=0, m=0),
        AH(nh=60, payloadlen=4, spi=1, seq=1, icv=bytes(12)),
        IPv6ExtHdrDestOpt(),
    ],
}


@pytest.mark.parametrize("chain", EXT_CHAINS)
def test_ipv6_extension_chains_reach_tcp(chain: str) -> None:
    frame = six_with(*EXT_CHAINS[chain])
    pkt = pk.parse_frame(frame)
    assert (pkt.proto, pkt.fragment) == (pk.IPPROTO_TCP, False)
    assert pkt.l4_offset == len(frame) - 20 - len(b"payload")
    assert bytes(pk.parse_tcp(pkt.l4).payload) == b"payload"
    # Scapy leaves the TCP checksum at 0 behind AH, and a routing header
    # changes the pseudo-header's destination: only the others can verify.
    assert pk.verify_l4(pkt) == (chain in ("hop-by-hop", "dest-opts", "atomic-fragment"))


@pytest.mark.parametrize(("offset", "more"), [(0, 1), (100, 0), (100, 1)])
def test_ipv6_fragments(offset: int, more: int) -> None:
    frame = six_with(IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment(nh=60, offset=offset, m=more),
                     l4=IPv6ExtHdrDestOpt() / UDP())  # fmt: skip
    pkt = pk.parse_frame(frame)
    assert pkt.fragment
    if offset:  # fragment data follows: not walked
        assert (pkt.proto, pkt.l4_offset) == (60, 14 + 40 + 8 + 8)
    else:
        assert pkt.proto == pk.IPPROTO_UDP
    assert not pk.verify_l4(pkt)


@pytest.mark.parametrize("stop", [pk.IPV6_ESP, pk.IPV6_NO_NEXT])
def test_ipv6_walk_stops_at_esp_and_no_next_header(stop: int) -> None:
    frame = pk.build_frame_ip(GW_MAC, GUEST_MAC, V6[0], V6[1], stop, b"\0" * 16)
    pkt = pk.parse_frame(frame)
    assert (pkt.proto, len(pkt.l4)) == (stop, 16)


@pytest.mark.parametrize("ext_len", [1, 200])
def test_ipv6_extension_header_overrun(ext_len: int) -> None:
    hop_by_hop = bytes([pk.IPPROTO_TCP, ext_len]) + bytes(6)
    frame = pk.build_frame_ip(GW_MAC, GUEST_MAC, V6[0], V6[1], 0, hop_by_hop)
    with pytest.raises(pk.ParseError) as err:
        pk.parse_frame(frame)
    assert err.value.reason == "ipv6_ext"


def test_ipv6_extension_header_truncated() -> None:
    frame = pk.build_frame_ip(GW_MAC, GUEST_MAC, V6[0], V6[1], pk.IPV6_FRAGMENT, bytes(7))
    with pytest.raises(pk.ParseError):
        pk.parse_frame(frame)


# ---------------------------------------------------------------- TCP options


def tcp_with_options(options: bytes) -> bytes:
    return pk.build_tcp(V4[0], V4[1], 1, 2, 3, 4, pk.ACK, 5, b"pl", options=options)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (b"", (None, None, False, None, None)),
        (b"\x01\x01\x01\x01", (None, None, False, None, None)),
        (b"\x00\xff\xff\xff", (None, None, False, None, None)),  # EOL ends the list
        (b"\x02\x04\x05\xb4\x00\x02\x04\x00", (1460, None, False, None, None)),
        (b"\x01\x03\x03\x14", (None, 14, False, None, None)),  # shift 20 read as 14
        (b"\x01\x03\x03\x00", (None, 0, False, None, None)),
        (b"\x04\x02\x01\x01", (None, None, True, None, None)),
        (b"\x01\x01\x08\x0a" + bytes(range(8)), (None, None, False, 0x010203, 0x04050607)),
        (b"\x08\x0a" + bytes(range(8)) + b"\x01\x01", (None, None, False, 0x010203, 0x04050607)),
        (b"\x1e\x06abcd\x01\x01", (None, None, False, None, None)),  # unknown kind skipped
        (b"\x05\x0a" + bytes(8) + b"\x01\x01", (None, None, False, None, None)),  # SACK blocks
        (pk.tcp_options(mss=536, wscale=14, sack_ok=True, ts=(1, 2)), (536, 14, True, 1, 2)),
        (pk.tcp_options(wscale=2, ts=(3, 4)), (None, 2, False, 3, 4)),
        (pk.tcp_options(sack_ok=True), (None, None, True, None, None)),
    ],
)
def test_tcp_options(options: bytes, expected: tuple) -> None:
    seg = pk.parse_tcp(tcp_with_options(options))
    assert (seg.mss, seg.wscale, seg.sack_ok, seg.ts_val, seg.ts_ecr) == expected
    assert bytes(seg.payload) == b"pl"


@pytest.mark.parametrize(
    "options",
    [
        b"\x02\x00\x00\x00",  # length 0
        b"\x1e\x01\x00\x00",  # length 1
        b"\x1e\x00\x00\x00",  # length 0 of an unknown kind: would never advance
        b"\x08\x0a\x00\x00",  # overruns the header
        b"\x01\x01\x01\x02",  # kind without its length byte
        b"\x02\x03\x05\x00",  # MSS of the wrong size
        b"\x03\x04\x07\x00",  # window scale of the wrong size
        b"\x04\x03\x00\x00",  # SACK-permitted of the wrong size
        b"\x01\x01\x08\x08" + bytes(8),  # timestamps of the wrong size (not the fast path)
    ],
)
def test_malformed_tcp_options(options: bytes) -> None:
    with pytest.raises(pk.ParseError) as err:
        pk.parse_tcp(tcp_with_options(options))
    assert err.value.reason == "tcp_option"


@pytest.mark.parametrize("offset", [0, 4, 6])
def test_bad_tcp_data_offset(offset: int) -> None:
    seg = bytearray(pk.build_tcp(V4[0], V4[1], 1, 2, 3, 4, pk.ACK, 5))
    seg[12] = offset << 4
    with pytest.raises(pk.ParseError) as err:
        pk.parse_tcp(seg)
    assert err.value.reason == "tcp_offset"


def test_tcp_options_must_be_padded() -> None:
    with pytest.raises(ValueError):
        tcp_with_options(b"\x01")


def test_l4_parsers_refuse_short_messages() -> None:
    for parser, size in ((pk.parse_tcp, 19), (pk.parse_udp, 7), (pk.parse_icmp, 7)):
        with pytest.raises(pk.ParseError):
            parser(bytes(size))


# ---------------------------------------------------------------- checksum verification


def test_corruption_is_detected() -> None:
    for src, dst in FAMILIES.values():
        frame = bytearray(pk.build_frame_tcp(GW_MAC, GUEST_MAC, src, dst, 1, 2, 3, 4, 16, 5, b"x"))
        frame[-1] ^= 1
        pkt = pk.parse_frame(frame)
        assert not pk.verify_l4(pkt)
        if len(src) == 4:
            assert pk.verify_ipv4_header(pkt)
            frame[22] ^= 1  # TTL
            assert not pk.verify_ipv4_header(pk.parse_frame(frame))


def test_udp_without_checksum() -> None:
    for src, dst in FAMILIES.values():
        frame = bytearray(pk.build_frame_udp(GW_MAC, GUEST_MAC, src, dst, 1, 2, b"x"))
        frame[-3:-1] = b"\0\0"
        assert pk.verify_l4(pk.parse_frame(frame)) == (len(src) == 4)


def test_unverifiable_protocols() -> None:
    frame = pk.build_frame_ip(GW_MAC, GUEST_MAC, V4[0], V4[1], 47, b"gre.")
    assert not pk.verify_l4(pk.parse_frame(frame))
    icmp_over_v6 = pk.build_frame_ip(GW_MAC, GUEST_MAC, V6[0], V6[1], pk.IPPROTO_ICMP, bytes(8))
    assert not pk.verify_l4(pk.parse_frame(icmp_over_v6))


# ---------------------------------------------------------------- the TCP fast path


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [0, 1, 999, 65000])
def test_template_equals_builder(family: str, size: int) -> None:
    src, dst = FAMILIES[family]
    tpl = pk.TcpFrameTemplate(GW_MAC, GUEST_MAC, src, dst, 80, 40000, ttl=255)
    payload = memoryview(bytes(range(251)) * (size // 251 + 1))[:size]
    for seq, ack, flags, window, options in [
        (0, 0, pk.SYN | pk.ACK, 65535, pk.tcp_options(mss=65480, wscale=7, sack_ok=True)),
        (0xFFFFFFFF, 0x80000000, pk.ACK | pk.PSH, 1234, b""),
        (5, 6, pk.FIN | pk.ACK, 0, b""),
    ]:
        frame = tpl.build(seq, ack, flags, window, payload, options)
        expected = pk.build_frame_tcp(GW_MAC, GUEST_MAC, src, dst, 80, 40000, seq, ack, flags,
                                      window, payload, options=options, ttl=255)  # fmt: skip
        assert frame == expected
        assert tpl.headers(seq, ack, flags, window, payload, options) + payload == expected
        if not options:  # in place, over a used buffer, as the driver's peeks do
            hlen = len(expected) - size
            buf = memoryview(bytearray(b"\xee" * hlen) + payload)
            tpl.write_headers(buf, seq, ack, flags, window, buf[hlen:])
            assert buf == expected
    assert scapy_recomputed(frame) == frame


@pytest.mark.parametrize("family", FAMILIES)
def test_template_partial_checksum_is_completed_as_a_device_would(family: str) -> None:
    """``partial_csum``: the field holds the pseudo-header's sum; summing the TCP
    segment from its start and storing the complement (what the namespace's
    kernel does with ``NEEDS_CSUM``) gives the frame the full builder makes."""
    src, dst = FAMILIES[family]
    payload = bytes(range(251)) * 40
    full = pk.TcpFrameTemplate(GW_MAC, GUEST_MAC, src, dst, 80, 40000)
    partial = pk.TcpFrameTemplate(GW_MAC, GUEST_MAC, src, dst, 80, 40000, partial_csum=True)
    for seq, flags in [(7, pk.ACK | pk.PSH), (0xFFFFFFF0, pk.FIN | pk.ACK)]:
        built = full.build(seq, 8, flags, 9, payload)
        frame = partial.build(seq, 8, flags, 9, payload)
        assert frame != built
        l4 = len(frame) - len(payload) - 20
        assert completed_as_a_device_would(frame, l4, 16) == built


def test_template_is_reusable_and_immutable() -> None:
    tpl = pk.TcpFrameTemplate(GW_MAC, GUEST_MAC, V4[0], V4[1], 80, 40000)
    first = tpl.build(1, 2, pk.ACK, 3, b"a" * 100)
    tpl.build(9, 9, pk.ACK, 9, b"b" * 5000, b"\x01\x01\x01\x01")
    assert tpl.build(1, 2, pk.ACK, 3, b"a" * 100) == first
    with pytest.raises(ValueError):
        tpl.build(1, 2, pk.ACK, 3, b"", b"\x01")
