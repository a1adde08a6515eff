"""The address mapping model (nat.py): --map-host-loopback, --map-guest-addr, --no-map-gw."""

from __future__ import annotations

from ipaddress import ip_address
from types import SimpleNamespace

import pytest

from passt.conf import parse
from passt.flow.nat import LOOPBACK4, LOOPBACK6, AddressMapping

from ..l2_fixtures import GUEST4, GUEST6, GW4, GW6, OUR_LL6, net_with


def p(text: str) -> bytes:
    return ip_address(text).packed


def mapping(*argv: str) -> AddressMapping:
    return AddressMapping.build(net_with(), parse("pasta", list(argv)))


def test_default_the_gateway_is_the_host_s_loopback():
    m = mapping()
    assert m.outbound(p(GW4)) == LOOPBACK4 and m.outbound(p(GW6)) == LOOPBACK6
    assert m.outbound(p(OUR_LL6)) == LOOPBACK6
    assert m.inbound(LOOPBACK4) == p(GW4) and m.inbound(LOOPBACK6) == p(GW6)


@pytest.mark.parametrize("argv", [["--no-map-gw"], ["--map-host-loopback", "none"]])
def test_without_the_mapping_the_gateway_is_itself(argv):
    m = mapping(*argv)
    assert m.outbound(p(GW4)) == p(GW4)
    assert m.inbound(LOOPBACK4) == p(GW4)          # upstream's our_tap_addr
    assert m.inbound(LOOPBACK6) == p(OUR_LL6)      # upstream's our_tap_ll


def test_explicit_host_loopback_address_replaces_the_gateway():
    m = mapping("--map-host-loopback", "10.0.2.2", "--no-map-gw")
    assert m.outbound(p("10.0.2.2")) == LOOPBACK4 and m.outbound(p(GW4)) == p(GW4)
    assert m.inbound(LOOPBACK4) == p("10.0.2.2")


def test_podman_s_host_containers_internal():
    """podman: --no-map-gw --map-guest-addr 169.254.1.2: that address is the host."""
    m = mapping("--no-map-gw", "--map-guest-addr", "169.254.1.2")
    assert m.outbound(p("169.254.1.2")) == p(GUEST4)
    assert m.inbound(p(GUEST4)) == p("169.254.1.2")
    assert m.outbound(p(GW4)) == p(GW4)


def test_peers_the_guest_can_answer_keep_their_address():
    m = mapping()
    assert m.inbound(p("203.0.113.9")) == p("203.0.113.9")
    assert m.inbound(bytes(10) + b"\xff\xff" + p("203.0.113.9")) == p("203.0.113.9")
    assert m.inbound(p(GUEST6)) == p(GW6)
    assert m.inbound(p("2001:db8:1::abcd"), seen=p("2001:db8:1::abcd")) == p(GW6)


def test_lenient_conf_defaults_to_the_gateway_mapping():
    m = AddressMapping.build(net_with(), SimpleNamespace())
    assert m.outbound(p(GW4)) == LOOPBACK4
