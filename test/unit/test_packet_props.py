"""Property tests: build -> parse round trips, and garbage that must only raise ParseError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passt import packet as pk

macs = st.binary(min_size=6, max_size=6)
ports = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ttls = st.integers(0, 255)
# Mostly small payloads, sometimes beyond the checksum's NumPy threshold.
payloads = st.one_of(st.binary(max_size=200), st.binary(min_size=1000, max_size=5000))
addresses = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)
tcp_opts = st.fixed_dictionaries(
    {},
    optional={
        "mss": ports,
        "wscale": st.integers(0, 14),
        "sack_ok": st.booleans(),
        "ts": st.tuples(u32, u32),
    },
)


def check_ip(pkt: pk.Packet, src: bytes, dst: bytes, proto: int, ttl: int) -> None:
    assert pkt.ip_version == (4 if len(src) == 4 else 6)
    assert (pkt.src, pkt.dst, pkt.proto, pkt.ttl, pkt.fragment) == (src, dst, proto, ttl, False)
    assert pkt.l4_offset == pkt.l3_offset + (20 if len(src) == 4 else 40)
    assert pk.verify_l4(pkt)
    assert pk.verify_ipv4_header(pkt) == (len(src) == 4)


@given(macs, macs, addresses, ports, ports, u32, u32, st.integers(0, 0xFF), ports, payloads,
       tcp_opts, ttls)  # fmt: skip
def test_tcp_round_trip(eth_dst, eth_src, addrs, sport, dport, seq, ack, flags, window,
                        payload, opts, ttl) -> None:  # fmt: skip
    src, dst = addrs
    frame = pk.build_frame_tcp(eth_dst, eth_src, src, dst, sport, dport, seq, ack, flags, window,
                               payload, options=pk.tcp_options(**opts), ttl=ttl)  # fmt: skip
    pkt = pk.parse_frame(frame)
    assert (pkt.eth_dst, pkt.eth_src) == (eth_dst, eth_src)
    check_ip(pkt, src, dst, pk.IPPROTO_TCP, ttl)
    seg = pk.parse_tcp(pkt.l4)
    assert (seg.sport, seg.dport, seg.seq, seg.ack) == (sport, dport, seq, ack)
    assert (seg.flags, seg.window, bytes(seg.payload)) == (flags, window, payload)
    assert seg.mss == opts.get("mss")
    assert seg.wscale == opts.get("wscale")
    assert seg.sack_ok == opts.get("sack_ok", False)
    assert (seg.ts_val, seg.ts_ecr) == opts.get("ts", (None, None))
    tpl = pk.TcpFrameTemplate(eth_dst, eth_src, src, dst, sport, dport, ttl=ttl)
    assert tpl.build(seq, ack, flags, window, payload, pk.tcp_options(**opts)) == frame


@given(macs, macs, addresses, ports, ports, payloads, ttls)
def test_udp_round_trip(eth_dst, eth_src, addrs, sport, dport, payload, ttl) -> None:
    src, dst = addrs
    pkt = pk.parse_frame(pk.build_frame_udp(eth_dst, eth_src, src, dst, sport, dport, payload,
                                            ttl=ttl))  # fmt: skip
    check_ip(pkt, src, dst, pk.IPPROTO_UDP, ttl)
    assert pk.parse_udp(pkt.l4) == (sport, dport, payload)


@given(macs, macs, addresses, st.integers(0, 255), st.integers(0, 255), ports, ports, payloads)
def test_icmp_round_trip(eth_dst, eth_src, addrs, icmp_type, code, ident, seq, body) -> None:
    src, dst = addrs
    frame = pk.build_frame_icmp(eth_dst, eth_src, src, dst, icmp_type, code, ident, seq, body)
    pkt = pk.parse_frame(frame)
    proto = pk.IPPROTO_ICMP if len(src) == 4 else pk.IPPROTO_ICMPV6
    check_ip(pkt, src, dst, proto, 64)
    parse = pk.parse_icmp if len(src) == 4 else pk.parse_icmpv6
    assert parse(pkt.l4) == (icmp_type, code, ident, seq, body)


@given(macs, macs, st.integers(0, 0xFFFF), macs, st.binary(min_size=4, max_size=4), macs,
       st.binary(min_size=4, max_size=4))  # fmt: skip
def test_arp_round_trip(eth_dst, eth_src, op, sha, spa, tha, tpa) -> None:
    pkt = pk.parse_frame(pk.build_frame_arp(eth_dst, eth_src, op, sha, spa, tha, tpa))
    assert (pkt.eth_dst, pkt.eth_src, pkt.ethertype) == (eth_dst, eth_src, pk.ETH_P_ARP)
    assert pk.parse_arp(pkt.l4) == (op, sha, spa, tha, tpa)


# ---------------------------------------------------------------- garbage in, ParseError out


def parse_everything(buf: bytes) -> None:
    """What a dispatcher and the handlers may do with a frame; only ParseError may escape."""
    try:
        pkt = pk.parse_frame(buf)
        pk.verify_ipv4_header(pkt)
        pk.verify_l4(pkt)
        if pkt.ip_version:
            assert pkt.l3_offset < pkt.l4_offset <= pkt.l4_offset + len(pkt.l4) <= len(buf)
        else:
            assert bytes(pkt.l4) == buf[pk.ETH_HLEN :]
        if pkt.ethertype == pk.ETH_P_ARP:
            pk.parse_arp(pkt.l4)
        elif pkt.fragment:
            return
        elif pkt.proto == pk.IPPROTO_TCP:
            seg = pk.parse_tcp(pkt.l4)
            assert seg.wscale is None or 0 <= seg.wscale <= pk.TCP_MAX_WSCALE
        elif pkt.proto == pk.IPPROTO_UDP:
            pk.parse_udp(pkt.l4)
        elif pkt.proto in (pk.IPPROTO_ICMP, pk.IPPROTO_ICMPV6):
            pk.parse_icmp(pkt.l4)
    except pk.ParseError as err:
        assert isinstance(err, ValueError) and err.reason and str(err)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_parse_error(buf: bytes) -> None:
    parse_everything(buf)


@given(st.binary(max_size=120))
def test_random_l4_bytes_only_raise_parse_error(buf: bytes) -> None:
    for parser in (pk.parse_tcp, pk.parse_udp, pk.parse_icmp, pk.parse_arp):
        try:
            parser(buf)
        except pk.ParseError:
            pass


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    src, dst = draw(addresses)
    payload = draw(st.binary(max_size=40))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "arp"]))
    mac = b"\x02" * 6
    if kind == "tcp":
        opts = pk.tcp_options(**draw(tcp_opts))
        return pk.build_frame_tcp(mac, mac, src, dst, 1, 2, 3, 4, pk.SYN, 5, payload, options=opts)
    if kind == "udp":
        return pk.build_frame_udp(mac, mac, src, dst, 1, 2, payload)
    if kind == "icmp":
        return pk.build_frame_icmp(mac, mac, src, dst, 8, 0, 1, 2, payload)
    return pk.build_frame_arp(mac, mac, 1, mac, src[:4], mac, dst[:4])


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(valid_frames()))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set", "truncate", "extend"]))
        if action == "set" and frame:
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
        elif action == "truncate":
            del frame[draw(st.integers(0, len(frame))) :]
        else:
            frame += draw(st.binary(min_size=1, max_size=20))
    return bytes(frame)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_mutated_frames_only_raise_parse_error(buf: bytes) -> None:
    parse_everything(buf)


def padded_options(raw: bytes) -> bytes:
    """At most 40 bytes, padded with NOPs to a multiple of 4 (what the builder accepts)."""
    raw = raw[:40]
    return raw + b"\x01" * (-len(raw) % 4)


option_soup = st.lists(
    st.one_of(
        st.sampled_from([b"\x00", b"\x01"]),
        st.builds(lambda kind, length, data: bytes([kind, length]) + data,
                  st.sampled_from([2, 3, 4, 5, 8, 30, 254]), st.integers(0, 12),
                  st.binary(max_size=10)),
    ),
    max_size=8,
).map(b"".join)  # fmt: skip


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=40), option_soup).map(padded_options))
def test_random_tcp_options_only_raise_parse_error(options: bytes) -> None:
    """Any option bytes, wrapped in a well-formed header: parsed or refused, never stuck."""
    segment = pk.build_tcp(b"\1" * 4, b"\2" * 4, 1, 2, 3, 4, pk.ACK, 5, b"tail", options=options)
    try:
        seg = pk.parse_tcp(segment)
    except pk.ParseError as err:
        assert err.reason == "tcp_option"
    else:
        assert bytes(seg.payload) == b"tail"


next_headers = st.sampled_from([0, 43, 44, 51, 60, 6, 17, 50, 59])


@settings(max_examples=300)
@given(next_headers, st.lists(st.tuples(next_headers, st.integers(0, 255),
                                        st.binary(min_size=6, max_size=30)), max_size=6))  # fmt: skip
def test_random_ipv6_extension_chains(first: int, chain: list[tuple[int, int, bytes]]) -> None:
    """Headers with arbitrary next-header and length bytes: walked or refused."""
    body = b"".join(bytes([nh, length]) + rest for nh, length, rest in chain)
    frame = pk.build_frame_ip(b"\2" * 6, b"\2" * 6, b"\1" * 16, b"\2" * 16, first, body)
    parse_everything(frame)
