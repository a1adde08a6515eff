"""What a guest may send from an unspecified source: only what needs no address yet.

A guest without an address may ask for one (DHCP, from 0.0.0.0) and check
that its IPv6 address is free (duplicate address detection, from ::).
Nothing else from those sources may pass the dispatcher's source check,
or a guest could open connections from an address that is not its own.
"""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest

from passt import packet
from passt.backends.dispatch import SourceFilter

MAC = bytes.fromhex("525400123456")
OURS = bytes.fromhex("9a559a559a55")
GUEST4 = ipaddress.ip_address("198.51.100.1")
GUEST6 = ipaddress.ip_address("2001:db8:1::1")
ANY4, ANY6 = bytes(4), bytes(16)
REMOTE4 = ipaddress.ip_address("203.0.113.1").packed
REMOTE6 = ipaddress.ip_address("2001:db8:2::1").packed
SOURCES = SourceFilter.for_guest(SimpleNamespace(addr4=GUEST4, addr6=GUEST6, prefix6=64))


def tcp_syn(src: bytes, dst: bytes) -> bytes:
    return packet.build_frame_tcp(OURS, MAC, src, dst, 1234, 80, 1, 0, packet.SYN, 65535)


def udp(src: bytes, dst: bytes, dport: int) -> bytes:
    return packet.build_frame_udp(OURS, MAC, src, dst, 68, dport, b"x" * 8)


def icmp(src: bytes, dst: bytes, kind: int) -> bytes:
    return packet.build_frame_icmp(OURS, MAC, src, dst, kind, 0, 0, 0, b"x" * 20)


@pytest.mark.parametrize(("frame", "allowed"), [
    pytest.param(udp(ANY4, b"\xff" * 4, 67), True, id="dhcp-request"),
    pytest.param(tcp_syn(GUEST4.packed, REMOTE4), True, id="tcp-from-guest4"),
    pytest.param(tcp_syn(ANY4, REMOTE4), False, id="tcp-from-0.0.0.0"),
    pytest.param(udp(ANY4, REMOTE4, 53), False, id="udp-from-0.0.0.0"),
    pytest.param(icmp(ANY4, REMOTE4, 8), False, id="ping-from-0.0.0.0"),
    pytest.param(icmp(ANY6, bytes.fromhex("ff0200000000000000000001ff000001"), 135), True,
                 id="dad-from-::"),
    pytest.param(tcp_syn(ANY6, REMOTE6), False, id="tcp-from-::"),
    pytest.param(udp(ANY6, REMOTE6, 547), False, id="udp-from-::"),
    pytest.param(tcp_syn(GUEST6.packed, REMOTE6), True, id="tcp-from-guest6"),
])
def test_unspecified_sources_only_for_address_configuration(frame: bytes, allowed: bool) -> None:
    assert SOURCES.allows(packet.parse_frame(frame)) is allowed
