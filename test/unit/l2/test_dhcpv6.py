"""DHCPv6: Advertise/Reply with the one address, identifiers, resolvers, drops, garbage."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp6 import (
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptRapidCommit,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet as ScapyPacket

from passt.l2 import dhcpv6
from passt.packet import parse_frame, verify_l4

from ..l2_fixtures import (
    DNS6,
    GUEST6,
    GUEST_LL6,
    GUEST_MAC,
    GUEST_MAC_STR,
    OUR_LL6,
    OUR_MAC,
    OUR_MAC_STR,
    SEARCH,
    completed_as_a_device_would,
    drops,
    feed,
    make_ctx,
    net_with,
)

CLIENT_DUID = struct.pack("!HH", 3, 1) + GUEST_MAC
SERVER_DUID = struct.pack("!HH", 3, 1) + OUR_MAC
IAID = 0x0A0B0C0D


def client_frame(message: ScapyPacket | bytes, src: str = GUEST_LL6) -> bytes:
    return bytes(
        Ether(src=GUEST_MAC_STR, dst="33:33:00:01:00:02")
        / IPv6(src=src, dst="ff02::1:2", hlim=1)
        / UDP(sport=546, dport=547)
        / message
    )


def client_id() -> DHCP6OptClientId:
    return DHCP6OptClientId(duid=CLIENT_DUID)


def server_id(duid: bytes = SERVER_DUID) -> DHCP6OptServerId:
    return DHCP6OptServerId(duid=duid)


def ia_na(address: str | None = None) -> DHCP6OptIA_NA:
    addrs = [DHCP6OptIAAddress(addr=address)] if address else []
    return DHCP6OptIA_NA(iaid=IAID, T1=0, T2=0, ianaopts=addrs)


def one_reply(ctx, message: ScapyPacket) -> Ether:
    [answer] = feed(ctx, dhcpv6, client_frame(message))
    assert verify_l4(parse_frame(answer))
    return Ether(answer)


def raw_reply_options(reply: Ether) -> dict[int, bytes]:
    return {c: bytes(v) for c, v in dhcpv6.parse_options(bytes(reply[UDP].payload)[4:])}


def test_solicit_with_rapid_commit_gets_a_reply_with_the_address() -> None:
    ctx = make_ctx()
    reply = one_reply(ctx, DHCP6_Solicit(trid=0x2A2A2A) / client_id() / ia_na() / DHCP6OptRapidCommit())
    assert (reply.src, reply.dst) == (OUR_MAC_STR, GUEST_MAC_STR)
    assert (reply[IPv6].src, reply[IPv6].dst) == (OUR_LL6, GUEST_LL6)
    assert (reply[UDP].sport, reply[UDP].dport) == (547, 546)
    msg = reply[DHCP6_Reply]
    assert msg.trid == 0x2A2A2A
    assert bytes(msg[DHCP6OptServerId].duid) == SERVER_DUID
    assert bytes(msg[DHCP6OptClientId].duid) == CLIENT_DUID
    assert msg.haslayer(DHCP6OptRapidCommit)
    ia = msg[DHCP6OptIA_NA]
    assert (ia.iaid, ia.T1, ia.T2) == (IAID, 0xFFFFFFFF, 0xFFFFFFFF)
    addr = ia[DHCP6OptIAAddress]
    assert (addr.addr, addr.preflft, addr.validlft) == (GUEST6, 0xFFFFFFFF, 0xFFFFFFFF)
    assert msg[DHCP6OptDNSServers].dnsservers == [DNS6]
    assert [d.rstrip(".") for d in msg[DHCP6OptDNSDomains].dnsdomains] == list(SEARCH)
    assert ctx.stats["dhcpv6.reply"] == 1 and not drops(ctx)


def test_solicit_without_rapid_commit_gets_an_advertise() -> None:
    ctx = make_ctx()
    reply = one_reply(ctx, DHCP6_Solicit(trid=7) / client_id() / ia_na())
    adv = reply[DHCP6_Advertise]
    assert adv.trid == 7 and adv[DHCP6OptIAAddress].addr == GUEST6
    assert not adv.haslayer(DHCP6OptRapidCommit)
    assert ctx.stats["dhcpv6.advertise"] == 1


@pytest.mark.parametrize("kind", [DHCP6_Request, DHCP6_Renew])
def test_request_and_renew_get_the_address(kind: type) -> None:
    reply = one_reply(make_ctx(), kind(trid=9) / client_id() / server_id() / ia_na(GUEST6))
    assert reply[DHCP6_Reply][DHCP6OptIAAddress].addr == GUEST6


def test_rebind_gets_the_address() -> None:
    reply = one_reply(make_ctx(), DHCP6_Rebind(trid=9) / client_id() / ia_na(GUEST6))
    assert reply[DHCP6_Reply][DHCP6OptIAAddress].addr == GUEST6


def test_request_for_another_address_gets_not_on_link() -> None:
    reply = one_reply(make_ctx(), DHCP6_Request() / client_id() / server_id() / ia_na("2001:db8:9::9"))
    ia = reply[DHCP6OptIA_NA]
    assert ia.iaid == IAID and not ia.haslayer(DHCP6OptIAAddress)
    assert ia[DHCP6OptStatusCode].statuscode == dhcpv6.STATUS_NOT_ON_LINK


def test_every_ia_na_gets_its_own_answer() -> None:
    second = DHCP6OptIA_NA(iaid=99, T1=0, T2=0)
    reply = one_reply(make_ctx(), DHCP6_Solicit() / client_id() / ia_na() / second)
    ias = [v for c, v in dhcpv6.parse_options(bytes(reply[UDP].payload)[4:]) if c == 3]
    assert [struct.unpack_from("!I", ia)[0] for ia in ias] == [IAID, 99]


def test_messages_for_another_server_are_ignored() -> None:
    ctx = make_ctx()
    other = server_id(struct.pack("!HH", 3, 1) + bytes(6))
    assert feed(ctx, dhcpv6, client_frame(DHCP6_Request() / client_id() / other / ia_na())) == []
    assert drops(ctx) == {"drop.dhcpv6_other_server": 1}


@pytest.mark.parametrize("kind", [DHCP6_Solicit, DHCP6_Rebind, DHCP6_Confirm])
def test_messages_that_must_not_name_a_server_are_ignored(kind: type) -> None:
    ctx = make_ctx()
    assert feed(ctx, dhcpv6, client_frame(kind() / client_id() / server_id() / ia_na())) == []
    assert drops(ctx) == {"drop.dhcpv6_server_id": 1}


def test_confirm_of_our_address_succeeds() -> None:
    reply = one_reply(make_ctx(), DHCP6_Confirm() / client_id() / ia_na(GUEST6))
    options = raw_reply_options(reply)
    assert options[dhcpv6.OPT_STATUS_CODE][:2] == b"\0\0"
    assert dhcpv6.OPT_IA_NA not in options


def test_confirm_of_another_address_is_not_on_link() -> None:
    reply = one_reply(make_ctx(), DHCP6_Confirm() / client_id() / ia_na("2001:db8:9::1"))
    assert raw_reply_options(reply)[dhcpv6.OPT_STATUS_CODE][:2] == b"\0\x04"


def test_information_request_gets_resolvers_only() -> None:
    reply = one_reply(make_ctx(), DHCP6_InfoRequest(trid=5) / client_id())
    msg = reply[DHCP6_Reply]
    assert msg[DHCP6OptDNSServers].dnsservers == [DNS6]
    assert not msg.haslayer(DHCP6OptIA_NA)


def test_information_request_with_an_ia_is_ignored() -> None:
    ctx = make_ctx()
    assert feed(ctx, dhcpv6, client_frame(DHCP6_InfoRequest() / client_id() / ia_na())) == []
    assert drops(ctx) == {"drop.dhcpv6_ia": 1}


def test_release_gets_success() -> None:
    reply = one_reply(make_ctx(), DHCP6_Release() / client_id() / server_id() / ia_na(GUEST6))
    assert raw_reply_options(reply)[dhcpv6.OPT_STATUS_CODE][:2] == b"\0\0"


def test_resolvers_and_search_list_can_be_withheld() -> None:
    ctx = make_ctx(net_with(dhcp_dns=False, dhcp_search=False))
    options = raw_reply_options(one_reply(ctx, DHCP6_Solicit() / client_id() / ia_na()))
    assert set(options) == {dhcpv6.OPT_SERVERID, dhcpv6.OPT_CLIENTID, dhcpv6.OPT_IA_NA}


def test_link_local_gateway_is_the_source() -> None:
    ctx = make_ctx(net_with(gw6=ipaddress.IPv6Address("fe80::1")))
    reply = one_reply(ctx, DHCP6_Solicit() / client_id() / ia_na())
    assert reply[IPv6].src == "fe80::1"


def test_no_ipv6_no_dhcpv6() -> None:
    ctx = make_ctx(net_with(addr6=None, gw6=None, ll6=None))
    assert feed(ctx, dhcpv6, client_frame(DHCP6_Solicit() / client_id())) == []
    assert drops(ctx) == {"drop.dhcpv6_no_ipv6": 1}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\x01\x00", "dhcpv6_short"),
        (b"\x01\x00\x00\x01", "dhcpv6_client"),
        (b"\x01\x00\x00\x01\x00\x01\x00\x10abc", "dhcpv6_option"),
        (b"\x01\x00\x00\x01\x00\x01\x00\x01x", "dhcpv6_client"),
        (bytes(DHCP6_Solicit() / client_id()) + b"\x00\x03\x00\x04abcd", "dhcpv6_ia"),
        (bytes(DHCP6_Advertise() / client_id()), "dhcpv6_type"),
        (bytes(DHCP6_Reply() / client_id()), "dhcpv6_type"),
    ],
)
def test_malformed_messages_are_dropped_and_counted(message: bytes, reason: str) -> None:
    ctx = make_ctx()
    assert feed(ctx, dhcpv6, client_frame(message)) == []
    assert drops(ctx) == {f"drop.{reason}": 1}


def test_unspecified_source_is_dropped() -> None:
    ctx = make_ctx()
    assert feed(ctx, dhcpv6, client_frame(DHCP6_Solicit() / client_id(), src="::")) == []
    assert drops(ctx) == {"drop.dhcpv6_source": 1}


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=200))
def test_garbage_never_raises(kind: int, options: bytes) -> None:
    ctx = make_ctx()
    message = bytes((kind, 0, 0, 1)) + bytes(client_id()) + options
    sent = feed(ctx, dhcpv6, client_frame(message))
    assert len(sent) + sum(drops(ctx).values()) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 5, 13, 14]), st.binary(max_size=40)),
                max_size=6))
def test_well_framed_garbage_options_never_raise(options: list[tuple[int, bytes]]) -> None:
    ctx = make_ctx()
    body = b"".join(dhcpv6.option(code, value) for code, value in options)
    for kind in (1, 3, 4, 5, 6, 8, 11):
        feed(ctx, dhcpv6, client_frame(bytes((kind, 0, 0, 1)) + body))
    assert ctx.stats.get("drop.handler_error", 0) == 0


def test_fqdn_is_option_39() -> None:
    ctx = make_ctx(net_with(fqdn="box.example.com"))
    reply = one_reply(ctx, DHCP6_Solicit(trid=7) / client_id() / ia_na() / DHCP6OptRapidCommit())
    assert raw_reply_options(reply)[39] == b"\x00\x03box\x07example\x03com\x00"


def test_with_partial_checksums_replies_are_completed_by_the_device_into_the_full_ones() -> None:
    """pasta's tap with partial checksums: every IPv6 UDP frame to the guest is
    marked NEEDS_CSUM, so the server's replies leave the sum to the device too."""
    message = DHCP6_Solicit(trid=7) / client_id() / ia_na() / DHCP6OptRapidCommit()
    [full] = feed(make_ctx(), dhcpv6, client_frame(message))
    ctx = make_ctx()
    ctx.partial_csum = True
    [partial] = feed(ctx, dhcpv6, client_frame(message))
    assert partial != full
    assert completed_as_a_device_would(partial, 14 + 40, 6) == full
