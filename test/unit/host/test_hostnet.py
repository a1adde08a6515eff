"""hostnet: the pure choice of addresses from synthetic dumps, and one real query.

The synthetic host mirrors what upstream pasta printed on this machine's
namespaces (see the module docstring for the rules); the real query runs in
a namespace the test builds (veth pair, addresses, default routes).
"""

from __future__ import annotations

import os
import socket
import subprocess
from ipaddress import ip_address

import pytest

from passt.conf import parse
from passt.host import hostnet
from passt.host.hostnet import (
    Addr,
    DefaultRoute,
    HostNetError,
    HostSnapshot,
    Link,
    Overrides,
    Resolv,
    pick,
)
from passt.record import replace

V4, V6 = socket.AF_INET, socket.AF_INET6


def ipa(text: str):  # noqa: ANN201 - either address type
    return ip_address(text)


HOST = HostSnapshot(
    links=(Link(1, "lo"), Link(2, "eth0"), Link(3, "wlan0"), Link(4, "wg0")),
    addrs=(
        Addr(V4, 1, ipa("127.0.0.1"), 8, 254),
        Addr(V4, 2, ipa("192.0.2.2"), 24, 0),
        Addr(V4, 2, ipa("192.0.2.3"), 24, 0),
        Addr(V6, 2, ipa("fe80::fc:ff:fe00:1"), 64, 253),
        Addr(V6, 2, ipa("2001:db8::2"), 64, 0),
        Addr(V4, 3, ipa("10.1.0.5"), 16, 0),
        Addr(V6, 3, ipa("fe80::2"), 64, 253),
        Addr(V6, 3, ipa("2001:db8:5::5"), 56, 0),
        Addr(V4, 4, ipa("172.20.0.9"), 32, 0),
    ),
    routes=(
        DefaultRoute(V4, 3, ipa("10.1.0.1"), 600),
        DefaultRoute(V4, 2, ipa("192.0.2.1"), 100),
        DefaultRoute(V6, 2, ipa("fe80::1"), 1024),
        DefaultRoute(V6, 3, ipa("fe80::99"), 2048),
        DefaultRoute(V4, 4, None, 50),
    ),
)
RESOLV = Resolv((ipa("10.255.255.53"), ipa("2001:db8::53")), ("example.com",))


def test_default_route_interface_gives_address_prefix_gateway_mac() -> None:
    # Without wg0's route: eth0's default route has a better metric than wlan0's.
    host = replace(HOST, routes=HOST.routes[:4])
    net = pick(Overrides(), host, RESOLV)
    assert net.ifname4 == "eth0" and net.ifname6 == "eth0"
    assert net.addr4 == ipa("192.0.2.2") and net.prefix4 == 24 and net.gw4 == ipa("192.0.2.1")
    assert net.addr6 == ipa("2001:db8::2") and net.prefix6 == 64 and net.gw6 == ipa("fe80::1")
    assert net.ll6 == ipa("fe80::fc:ff:fe00:1")
    assert net.mac == hostnet.DEFAULT_MAC  # upstream 2026: whatever the template
    assert net.mtu == hostnet.DEFAULT_MTU
    assert net.template_ifname == "eth0"
    assert net.warnings == ()


def test_route_without_gateway_disables_the_family() -> None:
    # The point-to-point wg0 carries the best IPv4 default route, without gateway.
    net = pick(Overrides(), HOST, RESOLV)
    assert not net.ipv4
    assert net.ipv6 and net.ifname6 == "eth0"


def test_gateway_option_rescues_a_family_without_gateway_and_mac_falls_back() -> None:
    net = pick(Overrides(gateway4=ipa("172.20.0.1"), ipv6=False), HOST, RESOLV)
    assert net.ifname4 == "wg0" and net.addr4 == ipa("172.20.0.9") and net.prefix4 == 32
    assert net.mac == hostnet.DEFAULT_MAC  # upstream 2026: whatever the template


def test_interface_option_and_outbound_interfaces() -> None:
    net = pick(Overrides(interface="wlan0"), HOST, RESOLV)
    assert (net.ifname4, net.addr4, net.prefix4, net.gw4) == (
        "wlan0", ipa("10.1.0.5"), 16, ipa("10.1.0.1"))
    assert (net.ifname6, net.addr6, net.prefix6, net.ll6) == (
        "wlan0", ipa("2001:db8:5::5"), 56, ipa("fe80::2"))
    assert net.mac == hostnet.DEFAULT_MAC  # upstream 2026: whatever the template
    net = pick(Overrides(outbound_if4="wlan0", outbound_if6="eth0"), HOST, RESOLV)
    assert net.ifname4 == "wlan0" and net.ifname6 == "eth0"
    assert net.mac == hostnet.DEFAULT_MAC  # upstream 2026: whatever the template


def test_unknown_interface_is_an_error() -> None:
    with pytest.raises(HostNetError, match="Invalid interface name nope"):
        pick(Overrides(interface="nope"), HOST, RESOLV)


def test_address_options_override_and_prefix_follows_host_subnet_or_class() -> None:
    host = replace(HOST, routes=HOST.routes[:4])
    cases = {"192.0.2.77": 24, "10.9.0.77": 8, "172.16.3.3": 16, "200.1.1.1": 24,
             "230.0.0.1": 32}
    for address, prefix in cases.items():
        net = pick(Overrides(address4=ipa(address)), host, RESOLV)
        assert (net.addr4, net.prefix4) == (ipa(address), prefix), address
    net = pick(Overrides(address4=ipa("10.9.0.77"), prefix4=20, gateway4=ipa("10.9.0.1"),
                         address6=ipa("2001:db8:9::9"), gateway6=ipa("2001:db8:9::1"),
                         mac=b"\x02\0\0\0\0\x09", mtu=1500),
               host, RESOLV)
    assert (net.addr4, net.prefix4, net.gw4) == (ipa("10.9.0.77"), 20, ipa("10.9.0.1"))
    assert (net.addr6, net.prefix6, net.gw6) == (ipa("2001:db8:9::9"), 64, ipa("2001:db8:9::1"))
    assert net.mac == b"\x02\0\0\0\0\x09" and net.mtu == 1500


def test_ipv4_only_and_ipv6_only() -> None:
    host = replace(HOST, routes=HOST.routes[:4])
    net = pick(Overrides(ipv6=False), host, RESOLV)
    assert net.ipv4 and not net.ipv6 and net.ll6 is None and net.ifname6 == ""
    assert net.dns == (ipa("10.255.255.53"),)
    net = pick(Overrides(ipv4=False), host, RESOLV)
    assert net.ipv6 and not net.ipv4
    assert net.mac == hostnet.DEFAULT_MAC  # upstream 2026: whatever the template
    assert net.dns == (ipa("2001:db8::53"),)


def test_no_default_route_disables_family_with_warning_or_fails() -> None:
    host = replace(HOST, routes=HOST.routes[1:2])
    net = pick(Overrides(), host, RESOLV)
    assert net.ipv4 and not net.ipv6
    assert net.warnings == ("No external routable interface for IPv6",)
    with pytest.raises(HostNetError, match="External interface not usable"):
        pick(Overrides(), replace(HOST, routes=()), RESOLV)
    with pytest.raises(HostNetError, match="External interface not usable"):
        pick(Overrides(ipv4=False), host, RESOLV)


def test_ipv6_needs_a_link_local_address() -> None:
    host = replace(HOST, addrs=tuple(a for a in HOST.addrs if a.scope != 253),
                   routes=HOST.routes[:4])
    net = pick(Overrides(), host, RESOLV)
    assert net.ipv4 and not net.ipv6


def test_interface_without_global_address_disables_family() -> None:
    host = replace(HOST, addrs=tuple(a for a in HOST.addrs if a.ifindex != 2 or a.scope),
                   routes=HOST.routes[:4])
    with pytest.raises(HostNetError):
        pick(Overrides(), host, RESOLV)
    net = pick(Overrides(address4=ipa("192.0.2.9")), host, RESOLV)
    assert net.addr4 == ipa("192.0.2.9") and net.prefix4 == 24 and not net.ipv6


def test_dns_from_resolv_conf_maps_loopback_to_gateway() -> None:
    host = replace(HOST, routes=HOST.routes[:4])
    resolv = Resolv((ipa("127.0.0.53"), ipa("10.0.0.53"), ipa("::1")), ())
    net = pick(Overrides(), host, resolv)
    assert net.dns == (ipa("192.0.2.1"), ipa("10.0.0.53"), ipa("fe80::1"))
    assert net.dns_host4 == ipa("127.0.0.53") and net.dns_host6 == ipa("::1")
    net = pick(Overrides(map_gw=False), host, resolv)
    assert net.dns == (ipa("10.0.0.53"),)


def test_dns_options() -> None:
    host = replace(HOST, routes=HOST.routes[:4])
    net = pick(Overrides(dns=(ipa("127.0.0.53"), ipa("2001:db8::1")), search=("a.test",),
                         dns_forward=(ipa("192.0.2.53"), ipa("2001:db8::35"))), host, RESOLV)
    assert net.dns == (ipa("127.0.0.53"), ipa("2001:db8::1"))  # as given, like upstream
    assert net.search == ("a.test",)
    assert net.dns_host4 == ipa("127.0.0.53")
    assert (net.dns_match4, net.dns_match6) == (ipa("192.0.2.53"), ipa("2001:db8::35"))
    net = pick(Overrides(dns=(), search=()), host, RESOLV)
    assert net.dns == () and net.search == () and net.dns_host4 is None
    net = pick(Overrides(), host, RESOLV)
    assert net.search == ("example.com",)


def test_parse_resolv_conf() -> None:
    text = """# comment
nameserver 10.0.0.1
nameserver fe80::1%eth0
nameserver bogus
nameserver 2001:db8::1
search first.test
options ndots:2
search b.test c.test
domain ignored.test
nameserver
"""
    resolv = hostnet.parse_resolv_conf(text)
    assert resolv.nameservers == (ipa("10.0.0.1"), ipa("2001:db8::1"))
    assert resolv.search == ("b.test", "c.test")
    assert hostnet.read_resolv_conf("/nonexistent/resolv.conf") == Resolv()


def test_overrides_from_conf() -> None:
    ov = hostnet.overrides_from_conf(parse("pasta", [
        "-a", "192.0.2.9", "-a", "2001:db8::9", "-n", "255.255.240.0", "-g", "192.0.2.1",
        "-M", "02:00:00:00:00:09", "-4", "-m", "0", "-D", "none", "-S", "x.test",
        "--dns-forward", "192.0.2.53"]))
    assert ov.address4 == ipa("192.0.2.9") and ov.address6 == ipa("2001:db8::9")
    assert ov.prefix4 == 20 and ov.gateway4 == ipa("192.0.2.1") and ov.gateway6 is None
    assert ov.mac == bytes.fromhex("020000000009")
    assert ov.ipv4 and not ov.ipv6 and ov.mtu == 0
    assert ov.dns == () and ov.search == ("x.test",)
    assert ov.dns_forward == (ipa("192.0.2.53"),)
    assert not ov.dhcp_dns  # pasta doesn't advertise resolvers unless --dhcp-dns
    assert hostnet.overrides_from_conf(parse("pasta", ["--dhcp-dns"])).dhcp_dns
    ov = hostnet.overrides_from_conf(parse("passt", ["-n", "16"]))
    assert ov.dhcp_dns and ov.dhcp_search and ov.prefix4 == 16 and ov.mtu == 65520
    assert ov.dns is None and ov.search is None


# -- the real query, in a namespace of our own ----------------------------------


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def veth_world():
    """Namespace ``hn`` with veth ``ext0`` (addresses, default routes) to ``rn``."""
    if os.geteuid() != 0:
        pytest.fail("needs root to build namespaces")
    suffix = os.getpid()
    hn, rn = f"hnt-h{suffix}", f"hnt-r{suffix}"
    try:
        ip("netns", "add", hn)
        ip("netns", "add", rn)
        ip("-n", hn, "link", "add", "ext0", "type", "veth", "peer", "name", "ext0", "netns", rn)
        ip("-n", hn, "link", "set", "ext0", "address", "02:00:5e:00:53:01")
        ip("-n", hn, "addr", "add", "198.51.100.1/24", "dev", "ext0")
        ip("-n", hn, "addr", "add", "2001:db8:1::1/64", "dev", "ext0", "nodad")
        ip("-n", hn, "link", "set", "ext0", "up")
        ip("-n", rn, "link", "set", "ext0", "up")
        ip("-n", hn, "route", "add", "default", "via", "198.51.100.2")
        ip("-n", hn, "-6", "route", "add", "default", "via", "2001:db8:1::2", "dev", "ext0")
        yield hn
    finally:
        for ns in (hn, rn):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def test_query_host_in_a_namespace(veth_world: str) -> None:
    from passt.host.netns import NsRunner

    fd = os.open(f"/run/netns/{veth_world}", os.O_RDONLY | os.O_CLOEXEC)
    runner = NsRunner(fd)
    try:
        snapshot = runner.call(hostnet.query_host)
    finally:
        runner.close()
        os.close(fd)
    net = pick(Overrides(), snapshot, Resolv((ipa("127.0.0.53"),), ()))
    assert net.ifname4 == net.ifname6 == "ext0"
    assert (net.addr4, net.prefix4, net.gw4) == (ipa("198.51.100.1"), 24, ipa("198.51.100.2"))
    assert (net.addr6, net.prefix6, net.gw6) == (ipa("2001:db8:1::1"), 64, ipa("2001:db8:1::2"))
    assert net.ll6 is not None and net.ll6.is_link_local
    assert net.mac == hostnet.DEFAULT_MAC  # upstream 2026: whatever the template
    assert net.dns == (ipa("198.51.100.2"),)


def test_sysctl_int_reads_zero_when_missing(tmp_path):
    assert hostnet.read_sysctl_int(str(tmp_path / "absent")) == 0
    (tmp_path / "garbage").write_text("x\n")
    assert hostnet.read_sysctl_int(str(tmp_path / "garbage")) == 0


def test_dns_host_overrides_the_resolver_dns_forward_goes_to():
    net = pick(Overrides(dns_host=(ipa("192.0.2.99"),)), HOST, RESOLV)
    assert net.dns_host4 == ipa("192.0.2.99")


def test_hostname_and_fqdn_reach_net_info():
    net = pick(Overrides(hostname="box", fqdn="box.example.com"), HOST, RESOLV)
    assert (net.hostname, net.fqdn) == ("box", "box.example.com")


def test_other_addresses_and_routes_of_the_template_are_copied():
    """Upstream 2026: all of the template interface's addresses and routes."""
    from ipaddress import ip_network

    from passt.host.hostnet import Route

    route = Route(2, ip_network("198.51.100.0/24"), ipa("192.0.2.1"), 10)
    elsewhere = Route(3, ip_network("198.51.101.0/24"), ipa("10.1.0.1"), 10)
    host = replace(HOST, routes=HOST.routes[:4], other_routes=(route, elsewhere))
    net = pick(Overrides(), host, RESOLV)
    assert net.extra_addrs == ((ipa("192.0.2.3"), 24),)
    assert net.extra_routes == (route,)
    fixed = pick(Overrides(address4=ipa("192.0.2.9"), gateway4=ipa("192.0.2.1")), host, RESOLV)
    assert fixed.extra_addrs == () and fixed.extra_routes == ()
    legacy = pick(Overrides(copy_addrs=False, copy_routes=False), host, RESOLV)
    assert legacy.extra_addrs == () and legacy.extra_routes == ()


def test_a_loopback_resolver_is_advertised_as_the_host_loopback_mapping():
    host = replace(HOST, routes=HOST.routes[:4])
    resolv = Resolv((ipa("127.0.0.53"),), ())
    net = pick(Overrides(map_gw=False, map_host_loopback=(ipa("169.254.1.9"),)), host, resolv)
    assert net.dns == (ipa("169.254.1.9"),)
