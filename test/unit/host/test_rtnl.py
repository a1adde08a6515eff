"""rtnl: messages built and decoded byte for byte, then against a real kernel.

The kernel cases run in a namespace of their own: what ``Rtnl`` adds there
``ip`` must show, what ``ip`` adds ``Rtnl`` must read, and, where pyroute2 is
installed (the package no longer uses it), its decoding of the same dumps
must agree with ours.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from ipaddress import ip_address, ip_network

import pytest

from passt.host import rtnl
from passt.host.netns import NsRunner


def test_a_request_is_a_header_and_a_body() -> None:
    body = rtnl.dump_body(rtnl.RTM_GETROUTE, socket.AF_INET6)
    msg = rtnl.request(rtnl.RTM_GETROUTE, rtnl.NLM_F_DUMP, 7, body)
    assert struct.unpack_from("=IHHII", msg) == (16 + 12, rtnl.RTM_GETROUTE,
                                                 rtnl.NLM_F_DUMP | rtnl.NLM_F_REQUEST, 7, 0)
    assert msg[16] == socket.AF_INET6 and len(msg) == 28


def test_attributes_are_padded_and_read_back() -> None:
    packed = rtnl.attribute(rtnl.IFLA_IFNAME, b"tap0\0") + rtnl.attribute(rtnl.IFLA_MTU,
                                                                         struct.pack("=I", 9000))
    assert len(packed) == 12 + 8  # 4 + 5 bytes, padded to 12
    assert rtnl.attributes(packed) == {rtnl.IFLA_IFNAME: b"tap0\0",
                                       rtnl.IFLA_MTU: struct.pack("=I", 9000)}


def test_messages_split_a_datagram_and_refuse_a_bad_length() -> None:
    one = rtnl.request(rtnl.RTM_NEWLINK, 0, 1, b"abcde")  # 21 bytes, next one aligned
    two = rtnl.request(rtnl.NLMSG_DONE, 0, 1, b"")
    buf = one + b"\0" * 3 + two
    assert [(kind, seq, payload) for kind, _flags, seq, payload in rtnl.messages(buf)] == [
        (rtnl.RTM_NEWLINK, 1, b"abcde"), (rtnl.NLMSG_DONE, 1, b"")]
    with pytest.raises(rtnl.RtnlError):
        list(rtnl.messages(struct.pack("=IHHII", 99, 0, 0, 0, 0)))


def test_an_error_message_carries_the_negative_errno() -> None:
    assert rtnl.error_code(struct.pack("=i", -errno.EEXIST) + bytes(16)) == errno.EEXIST
    assert rtnl.error_code(struct.pack("=i", 0) + bytes(16)) == 0


def test_a_route_body_as_ip_route_add_makes_it() -> None:
    body = rtnl.route_body(5, ip_network("0.0.0.0/0"), ip_address("192.0.2.1"), 3,
                           flags=0x04)
    family, dst_len, _src, _tos, table, proto, scope, kind, flags = struct.unpack_from(
        "=BBBBBBBBI", body)
    assert (family, dst_len, table, proto, scope, kind, flags) == (
        socket.AF_INET, 0, rtnl.RT_TABLE_MAIN, 3, rtnl.RT_SCOPE_UNIVERSE, rtnl.RTN_UNICAST, 4)
    attrs = rtnl.attributes(body, 12)
    assert rtnl.RTA_DST not in attrs  # the default route has none
    assert attrs[rtnl.RTA_GATEWAY] == bytes([192, 0, 2, 1])
    assert attrs[rtnl.RTA_OIF] == struct.pack("=I", 5)
    link = rtnl.route_body(5, ip_network("2001:db8::/32"), None, 3, metric=10)
    assert link[6] == rtnl.RT_SCOPE_LINK  # as ip: a route without a gateway is on the link
    assert rtnl.decode_route(link)[:7] == (socket.AF_INET6, 32, rtnl.RT_TABLE_MAIN, 3,
                                          rtnl.RT_SCOPE_LINK, rtnl.RTN_UNICAST,
                                          ip_address("2001:db8::").packed)


def test_multipath_hops_are_decoded() -> None:
    hop = lambda index, gw: (struct.pack("=HBBi", 8 + 8, 0, 0, index)  # noqa: E731
                             + rtnl.attribute(rtnl.RTA_GATEWAY, gw))
    body = (rtnl.route_body(0, ip_network("0.0.0.0/0"), None, 3)
            + rtnl.attribute(rtnl.RTA_MULTIPATH, hop(2, b"\x0a\0\0\x01") + hop(3, b"\x0a\0\0\x02")))
    assert rtnl.decode_route(body).hops == ((2, b"\x0a\0\0\x01"), (3, b"\x0a\0\0\x02"))


# -- against the kernel ----------------------------------------------------------------


@pytest.fixture
def netns(scratch_netns) -> Iterator[tuple[str, NsRunner]]:  # noqa: ANN001 - conftest's
    """``scratch_netns`` with a veth pair ``d0``/``d1`` in it, and a runner inside."""
    name, fd = scratch_netns
    subprocess.run(["ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                   check=True, timeout=20)
    runner = NsRunner(fd)
    try:
        yield name, runner
    finally:
        runner.close()


def ip_json(name: str, *args: str) -> list[dict]:
    return json.loads(subprocess.run(["ip", "-n", name, "-j", *args], check=True,
                                     capture_output=True, text=True, timeout=20).stdout)


def configure(nl: rtnl.Rtnl) -> int:
    lo = nl.link("lo")
    nl.set_link(lo.ifindex, up=True)
    index = nl.link("d0").ifindex
    nl.set_link(index, mtu=9000, mac=b"\x02\0\0\0\0\x07")
    nl.set_link(index, up=True)
    nl.add_addr(index, ip_address("198.51.100.1"), 24)
    nl.add_addr(index, ip_address("2001:db8:1::1"), 64, flags=0x02)  # nodad
    nl.add_route(index, ip_network("0.0.0.0/0"), ip_address("198.51.100.2"), 3)
    nl.add_route(index, ip_network("203.0.113.0/24"), None, 3, metric=7)
    nl.add_route(index, ip_network("::/0"), ip_address("2001:db8:1::2"), 3)
    return index


def test_what_rtnl_sets_ip_shows(netns) -> None:
    name, runner = netns

    def work() -> None:
        with rtnl.Rtnl() as nl:
            configure(nl)
            with pytest.raises(rtnl.RtnlError) as refused:
                nl.add_addr(nl.link("d0").ifindex, ip_address("198.51.100.1"), 24)
            assert refused.value.errno == errno.EEXIST
            with pytest.raises(rtnl.RtnlError) as missing:
                nl.link("nonexistent0")
            assert missing.value.errno == errno.ENODEV

    runner.call(work)
    (link,) = ip_json(name, "addr", "show", "d0")
    assert link["mtu"] == 9000 and "UP" in link["flags"] and link["address"] == "02:00:00:00:00:07"
    assert {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["scope"] == "global"} \
        == {("198.51.100.1", 24), ("2001:db8:1::1", 64)}
    routes4 = {(r["dst"], r.get("gateway"), r.get("scope"), r.get("metric"))
               for r in ip_json(name, "-4", "route")}
    assert ("default", "198.51.100.2", None, None) in routes4
    assert ("203.0.113.0/24", None, "link", 7) in routes4
    assert ("default", "2001:db8:1::2") in {(r["dst"], r.get("gateway"))
                                            for r in ip_json(name, "-6", "route")}


def test_dumps_agree_with_pyroute2(netns) -> None:
    pyroute2 = pytest.importorskip("pyroute2")
    _name, runner = netns

    def configured() -> None:
        with rtnl.Rtnl() as nl:
            configure(nl)

    def ours() -> tuple:
        with rtnl.Rtnl() as nl:
            return nl.links(), nl.addrs(), nl.routes(socket.AF_INET) + nl.routes(socket.AF_INET6)

    def theirs() -> tuple:
        with pyroute2.IPRoute() as ipr:
            links = [(m["index"], m["flags"], m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()]
            addrs = [(m["family"], m["prefixlen"], m["scope"], m["index"],
                      m.get_attr("IFA_LOCAL"), m.get_attr("IFA_ADDRESS")) for m in ipr.get_addr()]
            routes = [(m["family"], m["dst_len"], m.get_attr("RTA_TABLE") or m["table"],
                       m["proto"], m["scope"], m["type"], m.get_attr("RTA_DST"),
                       m.get_attr("RTA_GATEWAY"), m.get_attr("RTA_OIF") or 0,
                       m.get_attr("RTA_PRIORITY") or 0)
                      for family in (socket.AF_INET, socket.AF_INET6)
                      for m in ipr.route("dump", family=family)]
            return links, addrs, routes

    runner.call(configured)
    # The kernel settles on its own after the links come up (IPv6 link-local
    # addresses, their routes): compare dumps taken while nothing changed.
    for _ in range(50):
        before = runner.call(ours)
        want_links, want_addrs, want_routes = runner.call(theirs)
        if runner.call(ours) == before:
            break
        time.sleep(0.1)
    links, addrs, routes = before
    text = lambda packed: str(ip_address(packed)) if packed else None  # noqa: E731
    assert [(link.ifindex, link.flags, link.name) for link in links] == want_links
    assert [(a.family, a.prefixlen, a.scope, a.ifindex, text(a.local), text(a.address))
            for a in addrs] == want_addrs
    assert [(r.family, r.dst_len, r.table, r.protocol, r.scope, r.type, text(r.dst),
             text(r.gateway), r.oif, r.priority) for r in routes] == want_routes


def test_sock_diag_lists_the_listening_tcp_sockets_with_their_inodes(netns) -> None:
    _name, runner = netns

    def listeners() -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
        with rtnl.Rtnl() as nl:
            nl.set_link(nl.link("lo").ifindex, up=True)
        with socket.create_server(("127.0.0.1", 0)) as v4, \
                socket.create_server(("::1", 0), family=socket.AF_INET6) as v6, \
                socket.create_connection(v4.getsockname()[:2]), \
                rtnl.Rtnl(rtnl.NETLINK_SOCK_DIAG) as diag:
            mine = {(s.getsockname()[1], os.fstat(s.fileno()).st_ino) for s in (v4, v6)}
            seen = set(diag.tcp_listeners(socket.AF_INET)) | set(diag.tcp_listeners(
                socket.AF_INET6))
            return mine, seen

    mine, seen = runner.call(listeners)
    assert seen == mine  # the connection is not a listener, and nothing else is here
