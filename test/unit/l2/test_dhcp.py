"""DHCPv4: OFFER and ACK for the one address, options, addressing, drops, garbage."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from passt.l2 import common as l2common
from passt.l2 import dhcp
from passt.packet import parse_frame, verify_ipv4_header, verify_l4

from ..l2_fixtures import (
    DNS4,
    GUEST4,
    GUEST_MAC,
    GUEST_MAC_STR,
    GW4,
    OUR_MAC_STR,
    drops,
    feed,
    make_ctx,
    net_with,
)

MSG_TYPES = {"discover": 1, "request": 3, "decline": 4, "release": 7, "inform": 8}


def client_frame(
    msg_type: str, options: list | None = None, *, ciaddr: str = "0.0.0.0",
    src: str = "0.0.0.0", dst: str = "255.255.255.255", flags: int = 0, xid: int = 0x1234,
) -> bytes:  # fmt: skip
    opts = [("message-type", msg_type), *(options or []), "end"]
    return bytes(
        Ether(src=GUEST_MAC_STR, dst="ff:ff:ff:ff:ff:ff")
        / IP(src=src, dst=dst)
        / UDP(sport=68, dport=67)
        / BOOTP(op=1, chaddr=GUEST_MAC + bytes(10), xid=xid, flags=flags, ciaddr=ciaddr)
        / DHCP(options=opts)
    )


def options_of(reply: Ether) -> dict:
    """The reply's options by scapy name (or code), END and padding left out."""
    out = {}
    for opt in reply[DHCP].options:
        if isinstance(opt, tuple):
            out[opt[0]] = opt[1] if len(opt) == 2 else opt[1:]
    return out


def raw_options(frame: bytes) -> bytes:
    """The options area of the reply in ``frame`` (after the magic cookie)."""
    return bytes(Ether(frame)[BOOTP].payload)


def one_reply(ctx, frame: bytes) -> Ether:
    [answer] = feed(ctx, dhcp, frame)
    pkt = parse_frame(answer)
    assert verify_ipv4_header(pkt) and verify_l4(pkt)
    return Ether(answer)


def test_discover_gets_an_offer_of_the_guests_address() -> None:
    ctx = make_ctx()
    reply = one_reply(ctx, client_frame("discover"))
    assert reply.src == OUR_MAC_STR and reply.dst == GUEST_MAC_STR
    assert (reply[IP].src, reply[IP].dst) == (GW4, GUEST4)
    assert (reply[UDP].sport, reply[UDP].dport) == (67, 68)
    b = reply[BOOTP]
    assert (b.op, b.xid, b.yiaddr, b.chaddr[:6]) == (2, 0x1234, GUEST4, GUEST_MAC)
    opts = options_of(reply)
    assert opts["message-type"] == 2
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == GW4
    assert opts["name_server"] == DNS4
    assert opts["interface-mtu"] == 65520
    assert opts["lease_time"] == 0xFFFFFFFF
    assert opts["server_id"] == GW4
    assert ctx.stats["dhcp.offer"] == 1 and not drops(ctx)


def test_reply_is_a_whole_bootp_message_with_the_type_first() -> None:
    reply = one_reply(make_ctx(), client_frame("discover"))
    assert len(reply[UDP].payload) >= 300
    assert raw_options(bytes(reply))[:3] == b"\x35\x01\x02"


def test_search_list_is_option_119_in_wire_format() -> None:
    reply = one_reply(make_ctx(), client_frame("discover"))
    options = dhcp.parse_options(raw_options(bytes(reply)))
    assert options[119] == b"\x07example\x03com\x00\x03lab\x07example\x03org\x00"


def test_parameter_request_list_orders_the_options() -> None:
    frame = client_frame("discover", [("param_req_list", [26, 6, 3, 1])])
    area = raw_options(bytes(one_reply(make_ctx(), frame)))
    codes = []
    i = 0
    while area[i] != 255:
        codes.append(area[i])
        i += 2 + area[i + 1]
    assert codes[:5] == [53, 26, 6, 3, 1]
    assert set(codes) == {53, 26, 6, 3, 1, 51, 54, 119}


def test_broadcast_flag_gets_a_broadcast() -> None:
    reply = one_reply(make_ctx(), client_frame("discover", flags=0x8000))
    assert reply.dst == "ff:ff:ff:ff:ff:ff" and reply[IP].dst == "255.255.255.255"
    assert reply[BOOTP].flags == 0x8000


def test_request_for_our_address_gets_an_ack() -> None:
    ctx = make_ctx()
    frame = client_frame("request", [("requested_addr", GUEST4), ("server_id", GW4)])
    reply = one_reply(ctx, frame)
    assert options_of(reply)["message-type"] == 5
    assert reply[BOOTP].yiaddr == GUEST4 and reply[IP].dst == GUEST4
    assert ctx.stats["dhcp.ack"] == 1


def test_renewal_is_unicast_to_the_clients_address() -> None:
    frame = client_frame("request", ciaddr=GUEST4, src=GUEST4, dst=GW4)
    reply = one_reply(make_ctx(), frame)
    assert options_of(reply)["message-type"] == 5
    assert (reply[IP].dst, reply.dst, reply[BOOTP].ciaddr) == (GUEST4, GUEST_MAC_STR, GUEST4)


def test_request_for_another_address_gets_a_broadcast_nak() -> None:
    ctx = make_ctx()
    reply = one_reply(ctx, client_frame("request", [("requested_addr", "198.51.100.99")]))
    opts = options_of(reply)
    assert opts["message-type"] == 6 and opts["server_id"] == GW4
    assert "lease_time" not in opts and reply[BOOTP].yiaddr == "0.0.0.0"
    assert reply[IP].dst == "255.255.255.255" and reply.dst == "ff:ff:ff:ff:ff:ff"
    assert ctx.stats["dhcp.nak"] == 1


def test_request_for_another_server_is_ignored() -> None:
    ctx = make_ctx()
    frame = client_frame("request", [("requested_addr", GUEST4), ("server_id", "192.0.2.1")])
    assert feed(ctx, dhcp, frame) == []
    assert drops(ctx) == {"drop.dhcp_other_server": 1}


def test_inform_gets_configuration_without_a_lease() -> None:
    reply = one_reply(make_ctx(), client_frame("inform", ciaddr=GUEST4, src=GUEST4))
    opts = options_of(reply)
    assert opts["message-type"] == 5 and "lease_time" not in opts
    assert opts["router"] == GW4 and reply[BOOTP].yiaddr == "0.0.0.0"


@pytest.mark.parametrize("kind", ["release", "decline"])
def test_release_and_decline_need_no_answer(kind: str) -> None:
    ctx = make_ctx()
    assert feed(ctx, dhcp, client_frame(kind, ciaddr=GUEST4)) == []
    assert drops(ctx) == {"drop.dhcp_msg_type": 1}


def test_mtu_zero_dns_and_search_disabled_leave_their_options_out() -> None:
    ctx = make_ctx(net_with(mtu=0, dhcp_dns=False, dhcp_search=False))
    area = raw_options(bytes(one_reply(ctx, client_frame("discover"))))
    assert set(dhcp.parse_options(area)) == {1, 3, 51, 53, 54}


def test_gateway_outside_the_subnet_gets_classless_routes() -> None:
    ctx = make_ctx(net_with(prefix4=32))
    options = dhcp.parse_options(raw_options(bytes(one_reply(ctx, client_frame("discover")))))
    gw = ipaddress.IPv4Address(GW4).packed
    assert options[121] == b"\x20" + gw + bytes(4) + b"\x00" + gw
    assert options[1] == b"\xff\xff\xff\xff"


def test_no_classless_routes_when_the_gateway_is_on_link() -> None:
    options = dhcp.parse_options(raw_options(bytes(one_reply(make_ctx(), client_frame("discover")))))
    assert 121 not in options


LONG_SEARCH = tuple(f"d{i:02}.{'x' * 40}.example" for i in range(12))  # ~660 bytes on the wire


def test_long_search_list_is_split_when_the_client_takes_it() -> None:
    ctx = make_ctx(net_with(search=LONG_SEARCH))
    frame = client_frame("discover", [("max_dhcp_size", 1500)])
    area = raw_options(bytes(one_reply(ctx, frame)))
    assert area.count(b"\x77\xff") >= 2  # option 119 in 255-byte pieces (RFC 3396)
    assert dhcp.parse_options(area)[119] == l2common.encode_domain_names(LONG_SEARCH)
    assert ctx.stats["dhcp.options_left_out"] == 0


def test_options_that_do_not_fit_576_bytes_are_left_out_and_counted() -> None:
    ctx = make_ctx(net_with(search=LONG_SEARCH))
    reply = one_reply(ctx, client_frame("discover"))
    assert len(reply[IP]) <= 576
    options = dhcp.parse_options(raw_options(bytes(reply)))
    assert 119 not in options and {1, 3, 6, 26, 51, 53, 54} <= set(options)
    assert ctx.stats["dhcp.options_left_out"] == 1


def test_no_ipv4_no_dhcp() -> None:
    ctx = make_ctx(net_with(addr4=None, gw4=None))
    assert feed(ctx, dhcp, client_frame("discover")) == []
    assert drops(ctx) == {"drop.dhcp_no_ipv4": 1}


def _bootp(op: int = 1, magic: bytes = dhcp.MAGIC, options: bytes = b"\x35\x01\x01\xff") -> bytes:
    header = struct.pack("!BBBBIHH16s16s", op, 1, 6, 0, 1, 0, 0, bytes(16), GUEST_MAC + bytes(10))
    return header + bytes(192) + magic + options


def _udp_frame(payload: bytes) -> bytes:
    return bytes(
        Ether(src=GUEST_MAC_STR, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / payload
    )


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_bootp()[:200], "dhcp_short"),
        (_bootp(op=2), "dhcp_op"),
        (_bootp(magic=b"\0\0\0\0"), "dhcp_magic"),
        (_bootp(options=b"\x35\x05\x01"), "dhcp_option"),
        (_bootp(options=b"\x35"), "dhcp_option"),
        (_bootp(options=b"\x01\x04\xff\xff\xff\x00\xff"), "dhcp_msg_type"),
        (_bootp(options=b"\x35\x02\x01\x01\xff"), "dhcp_msg_type"),
    ],
)
def test_malformed_messages_are_dropped_and_counted(payload: bytes, reason: str) -> None:
    ctx = make_ctx()
    assert feed(ctx, dhcp, _udp_frame(payload)) == []
    assert drops(ctx) == {f"drop.{reason}": 1}


def test_minimal_hand_made_discover_is_answered() -> None:
    assert len(feed(make_ctx(), dhcp, _udp_frame(_bootp()))) == 1


def test_domain_names_that_cannot_be_encoded_are_skipped() -> None:
    assert l2common.encode_domain_names(["a..b", "x" * 64 + ".com", "ok.", ""]) == b"\x02ok\x00"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_option_parsing_raises_only_parse_errors(data: bytes) -> None:
    try:
        dhcp.parse_options(data)
    except dhcp.ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=320), st.integers(0, 255))
def test_garbage_options_never_raise(options: bytes, op: int) -> None:
    ctx = make_ctx()
    sent = feed(ctx, dhcp, _udp_frame(_bootp(op=op, options=options)))
    assert len(sent) + sum(drops(ctx).values()) == 1


def test_init_without_ipv4_is_harmless() -> None:
    ctx = make_ctx(net_with(addr4=None, gw4=None))
    assert dhcp.init(ctx) is None
    assert feed(ctx, dhcp, client_frame("discover")) == []


def test_hostname_and_fqdn_are_options_12_and_81() -> None:
    ctx = make_ctx(net_with(hostname="box", fqdn="box.example.com"))
    options = dhcp.parse_options(raw_options(bytes(one_reply(ctx, client_frame("discover")))))
    assert options[12] == b"box"
    assert options[81] == b"\x04\xff\xff\x03box\x07example\x03com\x00"
