"""UDP's pure parts: flow keys, address translations, frame templates (no sockets)."""

from __future__ import annotations

import ipaddress
import socket
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from passt.flow.nat import AddressMapping
from passt.packet import build_frame_udp, parse_frame, verify_ipv4_header, verify_l4
from passt.udp import tap as udp

from ..l2_fixtures import (
    GUEST4,
    GUEST6,
    GUEST_MAC,
    GW4,
    GW6,
    OUR_LL6,
    OUR_MAC,
    completed_as_a_device_would,
    net_with,
)


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


LO4, LO6 = packed("127.0.0.1"), packed("::1")
REMOTE4, REMOTE6 = packed("203.0.113.1"), packed("2001:db8:2::1")
HOST_DNS4, HOST_DNS6 = "203.0.113.53", "2001:db8:2::53"
MATCH4, MATCH6 = "10.9.9.9", "fd00::53"


def amap(map_gw: bool = True, **net_changes: object) -> udp.AddressMap:
    net = net_with(**net_changes)
    nat = AddressMapping.build(net, SimpleNamespace(no_map_gw=not map_gw))
    return udp.AddressMap.from_net(net, nat)


# ---------------------------------------------------------------- keys


def test_flow_key_names_the_protocol_and_both_ends_as_the_guest_sees_them() -> None:
    key = udp.flow_key(packed(GUEST4), 4444, REMOTE4, 53)
    assert key == ("udp", packed(GUEST4), 4444, REMOTE4, 53)
    assert key != udp.flow_key(packed(GUEST4), 4445, REMOTE4, 53)
    assert key != udp.flow_key(packed(GUEST4), 4444, REMOTE4, 54)


# ---------------------------------------------------------------- outbound


@pytest.mark.parametrize(("gateway", "loopback"), [(GW4, LO4), (GW6, LO6), (OUR_LL6, LO6)])
def test_the_gateway_is_the_hosts_loopback(gateway: str, loopback: bytes) -> None:
    assert amap().outbound(packed(gateway), 7000) == loopback


@pytest.mark.parametrize("gateway", [GW4, GW6, OUR_LL6])
def test_no_map_gw_sends_to_the_gateway_itself(gateway: str) -> None:
    assert amap(map_gw=False).outbound(packed(gateway), 7000) == packed(gateway)


@pytest.mark.parametrize("dst", [REMOTE4, REMOTE6, packed(GUEST4), packed(GUEST6)])
def test_other_destinations_are_left_alone_including_the_guests_own_address(dst: bytes) -> None:
    assert amap().outbound(dst, 7000) == dst


@pytest.mark.parametrize("dst", ["255.255.255.255", "224.0.0.251", "0.0.0.0", "239.1.2.3",
                                 "ff02::fb", "ff05::1:3", "::"])
def test_broadcast_multicast_and_unspecified_destinations_go_nowhere(dst: str) -> None:
    assert amap().outbound(packed(dst), 5353) is None


def dns_net(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {"dns_host4": addr(HOST_DNS4), "dns_host6": addr(HOST_DNS6),
                                 "dns": (addr(HOST_DNS4), addr(HOST_DNS6))}
    fields.update(changes)
    return fields


@pytest.mark.parametrize(("match", "host"), [(MATCH4, HOST_DNS4), (MATCH6, HOST_DNS6)])
def test_dns_forward_sends_port_53_only_to_the_hosts_resolver(match: str, host: str) -> None:
    m = amap(**dns_net(dns_match4=addr(MATCH4), dns_match6=addr(MATCH6)))
    assert m.outbound(packed(match), 53) == packed(host)
    assert m.outbound(packed(match), 54) == packed(match)
    # ...and answers from the resolver appear to come from the forwarded address.
    assert m.inbound(packed(host), 53, packed(GUEST4)) == packed(match)
    assert m.inbound(packed(host), 5353, packed(GUEST4)) == packed(host)


def test_dns_forward_without_a_host_resolver_forwards_nothing() -> None:
    m = amap(**dns_net(dns_match4=addr(MATCH4), dns_host4=None))
    assert m.outbound(packed(MATCH4), 53) == packed(MATCH4)


@pytest.mark.parametrize(("gateway", "host"), [(GW4, "127.0.0.53"), (GW6, "::1")])
def test_an_advertised_gateway_resolver_is_forwarded_to_the_hosts_loopback_resolver(
        gateway: str, host: str) -> None:
    # resolv.conf says 127.0.0.53: the guest is told the gateway, and its
    # queries there must reach 127.0.0.53, not whatever listens on 127.0.0.1:53.
    m = amap(dns=(addr(GW4), addr(GW6)), dns_host4=addr("127.0.0.53"), dns_host6=addr("::1"))
    assert m.outbound(packed(gateway), 53) == packed(host)
    assert m.outbound(packed(gateway), 5353) == (LO4 if "." in gateway else LO6)
    assert m.inbound(packed(host), 53, packed(GUEST4)) == packed(gateway)


def test_a_given_dns_forward_address_and_the_advertised_gateway_both_reach_the_resolver(
        ) -> None:
    # Upstream forgets the gateway here; the guest, told "DNS = gateway", would
    # then ask 127.0.0.1:53, where the host's resolver (127.0.0.53) is not.
    m = amap(dns=(addr(GW4),), dns_host4=addr("127.0.0.53"), dns_match4=addr(MATCH4))
    assert m.outbound(packed(MATCH4), 53) == packed("127.0.0.53")
    assert m.outbound(packed(GW4), 53) == packed("127.0.0.53")
    assert m.inbound(packed("127.0.0.53"), 53, packed(GUEST4)) == packed(MATCH4)


def test_without_map_gw_the_gateway_resolver_is_not_forwarded() -> None:
    m = amap(map_gw=False, dns=(addr(GW4),), dns_host4=addr("127.0.0.53"))
    assert m.outbound(packed(GW4), 53) == packed(GW4)


# ---------------------------------------------------------------- inbound


@pytest.mark.parametrize(("peer", "guest", "gateway"), [
    ("127.0.0.1", GUEST4, GW4), ("127.1.2.3", GUEST4, GW4), (GUEST4, GUEST4, GW4),
    ("::1", GUEST6, GW6), (GUEST6, GUEST6, GW6),
])
def test_datagrams_from_the_host_itself_come_from_the_gateway(peer: str, guest: str,
                                                             gateway: str) -> None:
    assert amap().inbound(packed(peer), 9999, packed(guest)) == packed(gateway)


@pytest.mark.parametrize(("peer", "guest", "source"), [
    ("127.0.0.1", GUEST4, GW4), (GUEST4, GUEST4, GW4),
    ("::1", GUEST6, OUR_LL6), (GUEST6, GUEST6, OUR_LL6),
])
def test_without_map_gw_the_host_itself_comes_from_our_tap_address(peer: str, guest: str,
                                                                  source: str) -> None:
    """Upstream 2026: published ports answer through every host address."""
    assert amap(map_gw=False).inbound(packed(peer), 9999, packed(guest)) == packed(source)


def test_the_guests_configured_address_is_local_whatever_address_the_guest_uses() -> None:
    slaac = packed("2001:db8:1::abcd")
    assert amap().inbound(packed(GUEST6), 9999, slaac) == packed(GW6)
    assert amap().inbound(slaac, 9999, slaac) == packed(GW6)


def test_ipv6_local_datagrams_come_from_our_link_local_address_without_a_gateway() -> None:
    m = amap(gw6=None)
    assert m.inbound(LO6, 9999, packed(GUEST6)) == packed(OUR_LL6)


@pytest.mark.parametrize(("peer", "guest"), [(REMOTE4, GUEST4), (REMOTE6, GUEST6)])
def test_datagrams_from_elsewhere_keep_their_source(peer: bytes, guest: str) -> None:
    assert amap().inbound(peer, 9999, packed(guest)) == peer


# ---------------------------------------------------------------- frames


def template(src: bytes, dst: bytes) -> udp.UdpFrameTemplate:
    return udp.UdpFrameTemplate(GUEST_MAC, OUR_MAC, src, dst, 53, 4444)


def expected(src: bytes, dst: bytes, payload: bytes) -> bytes:
    """The packet builder's frame; over IPv4 without UDP checksum, as upstream sends them."""
    frame = bytearray(build_frame_udp(GUEST_MAC, OUR_MAC, src, dst, 53, 4444, payload,
                                      ttl=udp.REPLY_TTL))
    if len(src) == 4:
        frame[14 + 20 + 6 : 14 + 20 + 8] = b"\0\0"
    return bytes(frame)


FAMILIES = [pytest.param((REMOTE4, packed(GUEST4)), id="v4"),
            pytest.param((REMOTE6, packed(GUEST6)), id="v6")]


@pytest.mark.parametrize("ends", FAMILIES)
@pytest.mark.parametrize("size", [0, 1, 2, 3, 1400, 1401, 9000, 65000])
def test_template_frames_are_those_of_the_packet_builder(ends: tuple[bytes, bytes],
                                                         size: int) -> None:
    src, dst = ends
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    tpl = template(src, dst)
    assert tpl.build(payload) == expected(src, dst, payload)
    slot = memoryview(bytearray(udp._HDR_ROOM + udp.DATAGRAM_MAX))
    slot[udp._HDR_ROOM : udp._HDR_ROOM + size] = payload
    frame = tpl.fill(slot, size)
    assert bytes(frame) == expected(src, dst, payload)


@given(st.binary(max_size=3000), st.sampled_from([(REMOTE4, packed(GUEST4)),
                                                  (REMOTE6, packed(GUEST6))]))
def test_template_frames_verify_and_carry_the_payload(payload: bytes,
                                                      ends: tuple[bytes, bytes]) -> None:
    src, dst = ends
    tpl = template(src, dst)
    slot = memoryview(bytearray(udp._HDR_ROOM + udp.DATAGRAM_MAX))
    for _ in range(2):  # a reused slot gives the same frame
        slot[udp._HDR_ROOM : udp._HDR_ROOM + len(payload)] = payload
        frame = bytes(tpl.fill(slot, len(payload)))
        pkt = parse_frame(frame)
        assert verify_l4(pkt) and (pkt.ip_version == 6 or verify_ipv4_header(pkt))
        v4 = len(src) == 4
        layer = Ether(frame)[IP if v4 else IPv6]
        assert bytes(layer[UDP].payload) == payload
        assert layer.src == socket.inet_ntop(socket.AF_INET if v4 else socket.AF_INET6, src)
        assert layer.dst == (GUEST4 if v4 else GUEST6)


@pytest.mark.parametrize("size", [0, 1, 1401, 65000])
def test_partial_template_frames_are_completed_by_the_device_into_the_builders(size: int) -> None:
    """``partial_csum`` (pasta's tap): over IPv6 the UDP checksum field holds the
    pseudo-header's sum; completing it as the device does gives the full frame.
    Over IPv4 nothing changes: no checksum at all."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for src, dst in ((REMOTE6, packed(GUEST6)), (REMOTE4, packed(GUEST4))):
        tpl = udp.UdpFrameTemplate(GUEST_MAC, OUR_MAC, src, dst, 53, 4444, partial_csum=True)
        slot = memoryview(bytearray(udp._HDR_ROOM + udp.DATAGRAM_MAX))
        slot[udp._HDR_ROOM : udp._HDR_ROOM + size] = payload
        frames = (tpl.build(payload), bytes(tpl.fill(slot, size)))
        if len(src) == 4:
            assert frames == (expected(src, dst, payload),) * 2
            continue
        for frame in frames:
            assert frame != expected(src, dst, payload)
            assert completed_as_a_device_would(frame, 14 + 40, 6) == expected(src, dst, payload)
