"""fwd: /proc/net parsing, scan diffs, listener options and dispatch by source address."""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from passt import runtime
from passt.conf import Conf, parse
from passt.context import Ctx
from passt.flow import fwd
from passt.flow.table import FlowTable
from passt.loop import EventLoop
from passt.udp.splice import UdpSplice

T = TypeVar("T")
CLONE_NEWNET = 0x40000000

TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 100 0 0 10 0
   2: 0100007F:8000 0100007F:0016 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 100 0 0 10 0
   3: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2000 1 0 100 0 0 10 0
"""

TCP6_TABLE = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1BB9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3001 1 0 100 0 0 10 0
"""

UDP_TABLE = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4001 2 0 0
  101: 0100007F:A000 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 4002 2 0 0
"""


def test_bound_ports_keeps_listening_tcp_only() -> None:
    assert fwd.bound_ports(TCP_TABLE, fwd.TCP_LISTEN, set()) == {22, 8080, 80}


def test_bound_ports_skips_our_own_inodes() -> None:
    assert fwd.bound_ports(TCP_TABLE, fwd.TCP_LISTEN, {2000}) == {22, 8080}


def test_bound_ports_ipv6_table() -> None:
    assert fwd.bound_ports(TCP6_TABLE, fwd.TCP_LISTEN, set()) == {7097}


def test_bound_ports_udp_unconnected_only() -> None:
    assert fwd.bound_ports(UDP_TABLE, fwd.UDP_UNCONNECTED, set()) == {53}


@pytest.mark.parametrize("garbage", [
    "", "header only\n", "header\n   0: zz:zz zz 0A a b c d e f\n",
    "header\n   0: 00000000:0016 00000000:0000 0A\n",
    "header\n   0: 00000000:XYZ 00000000:0000 0A 0 0 0 0 0 1 1\n",
    "header\n   0: 00000000:0016 00000000:0000 0A 0 0 0 0 0 notanumber 1\n",
])
def test_bound_ports_ignores_malformed_lines(garbage: str) -> None:
    assert fwd.bound_ports(garbage, fwd.TCP_LISTEN, set()) == set()


@pytest.mark.parametrize("current,wanted,to_open,to_close", [
    (set(), {1, 2}, {1, 2}, set()),
    ({1, 2}, set(), set(), {1, 2}),
    ({1, 2}, {2, 3}, {3}, {1}),
    ({5}, {5}, set(), set()),
])
def test_scan_diff(current: set[int], wanted: set[int], to_open: set[int],
                   to_close: set[int]) -> None:
    assert fwd.scan_diff(current, wanted) == (to_open, to_close)


@pytest.mark.parametrize("addr,expected", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.1", False), ("::", False), ("2001:db8::1", False), ("::ffff:192.0.2.1", False),
    ("0.0.0.0", False),
])
def test_is_loopback(addr: str, expected: bool) -> None:
    assert fwd.is_loopback(addr) is expected


BOTH = (socket.AF_INET, socket.AF_INET6)


def test_default_listens_wildcard_on_host_loopback_in_namespace() -> None:
    assert [lst.addr for lst in fwd.default_listens(fwd.TCP, fwd.HOST, 80, BOTH)] == ["0.0.0.0",
                                                                                       "::"]
    assert [lst.addr for lst in fwd.default_listens(fwd.UDP, fwd.NS, 53, BOTH)] == ["127.0.0.1",
                                                                                     "::1"]


def test_listens_for_bind_address_picks_its_family() -> None:
    (v6,) = fwd.listens_for(fwd.TCP, fwd.HOST, 22, "2001:db8::1", "eth0", BOTH)
    assert (v6.family, v6.addr, v6.ifname) == (socket.AF_INET6, "2001:db8::1", "eth0")
    (v4,) = fwd.listens_for(fwd.TCP, fwd.HOST, 22, "192.0.2.1", None, BOTH)
    assert v4.family == socket.AF_INET


def test_listens_for_interface_only_keeps_both_families() -> None:
    listens = fwd.listens_for(fwd.UDP, fwd.HOST, 22, None, "lo", BOTH)
    assert [(lst.family, lst.ifname) for lst in listens] == [(socket.AF_INET, "lo"),
                                                             (socket.AF_INET6, "lo")]


def test_open_listen_socket_options() -> None:
    listen = fwd.Listen(fwd.TCP, fwd.HOST, socket.AF_INET6, "::1", 0)
    s = fwd.open_listen_socket(listen)
    try:
        assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert s.gettimeout() == 0.0
    finally:
        s.close()


def test_open_listen_socket_freebind_allows_an_absent_address() -> None:
    listen = fwd.Listen(fwd.UDP, fwd.HOST, socket.AF_INET, "192.0.2.123", 0)
    s = fwd.open_listen_socket(listen, freebind=True)
    assert s.getsockname()[0] == "192.0.2.123"
    s.close()
    with pytest.raises(OSError):    # without --freebind, as upstream 2026
        fwd.open_listen_socket(listen)


def test_open_listen_socket_bound_to_device() -> None:
    listen = fwd.Listen(fwd.TCP, fwd.HOST, socket.AF_INET, "127.0.0.1", 0, "lo")
    s = fwd.open_listen_socket(listen)
    try:
        name = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
        assert name.rstrip(b"\0") == b"lo"
    finally:
        s.close()


def test_open_listen_socket_busy_port_raises_and_leaks_nothing() -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    before = len(os.listdir("/proc/self/fd"))
    listen = fwd.Listen(fwd.TCP, fwd.HOST, socket.AF_INET, "127.0.0.1", busy.getsockname()[1])
    with pytest.raises(OSError):
        fwd.open_listen_socket(listen)
    assert len(os.listdir("/proc/self/fd")) == before
    busy.close()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __call__(self, kind: str):  # noqa: ANN204
        def record(*args: object) -> None:
            self.calls.append((kind, args))
            first = args[0]
            if isinstance(first, socket.socket):
                first.close()
        return record


@pytest.fixture
def forwarder() -> Iterator[tuple[fwd.Forwarder, Recorder]]:
    loop = EventLoop()
    f = fwd.Forwarder(loop, lambda fn, *a: fn(*a))
    rec = Recorder()
    f.handlers = fwd.Handlers(tcp_tap=rec("tcp_tap"), tcp_splice=rec("tcp_splice"),
                              udp_tap=rec("udp_tap"), udp_splice=rec("udp_splice"))
    try:
        yield f, rec
    finally:
        f.close()
        loop.close()


def connect_through(f: fwd.Forwarder, listen: fwd.Listen, target_port: int = 4242
                    ) -> tuple[socket.socket, int]:
    """Open ``listen``, connect a client to it, let the loop accept: (client, port)."""
    listener = f.open(listen, target_port)
    port = listener.sock.getsockname()[1]
    client = socket.create_connection((listen.addr, port))
    f.loop.run_once(1)
    return client, port


V4_LOOPBACK = fwd.Listen(fwd.TCP, fwd.HOST, socket.AF_INET, "127.0.0.1", 0)


def test_tcp_dispatch_by_source(forwarder: tuple[fwd.Forwarder, Recorder]) -> None:
    f, rec = forwarder
    client, _ = connect_through(f, V4_LOOPBACK)
    assert [c[0] for c in rec.calls] == ["tcp_splice"]
    _sock, peer, origin, target = rec.calls[0][1]
    assert (peer[0], origin, target) == ("127.0.0.1", fwd.HOST, 4242)
    client.close()


def test_tcp_without_splice_handler_goes_to_tap(forwarder: tuple[fwd.Forwarder, Recorder]
                                                ) -> None:
    f, rec = forwarder
    f.handlers.tcp_splice = None  # passt: no spliced path
    client, port = connect_through(f, V4_LOOPBACK)
    assert [c[0] for c in rec.calls] == ["tcp_tap"]
    sock, peer, local, target = rec.calls[0][1]
    assert local == ("127.0.0.1", port) and target == 4242 and peer == client.getsockname()
    client.close()


def test_namespace_side_listener_never_hands_to_tap(forwarder: tuple[fwd.Forwarder, Recorder]
                                                    ) -> None:
    f, rec = forwarder
    f.handlers.tcp_splice = None
    client, _ = connect_through(f, fwd.Listen(fwd.TCP, fwd.NS, socket.AF_INET, "127.0.0.1", 0))
    assert rec.calls == [] and f.stats["tcp_unhandled"] == 1
    assert client.recv(1) == b""  # closed
    client.close()


def test_accepted_sockets_are_non_blocking(forwarder: tuple[fwd.Forwarder, Recorder]) -> None:
    f, rec = forwarder
    kept: list[socket.socket] = []
    f.handlers.tcp_splice = lambda sock, *rest: kept.append(sock)
    client, _ = connect_through(f, fwd.Listen(fwd.TCP, fwd.HOST, socket.AF_INET6, "::1", 0))
    assert len(kept) == 1 and kept[0].gettimeout() == 0.0
    with pytest.raises(BlockingIOError):
        kept[0].recv(1)
    kept[0].close()
    client.close()


def test_udp_dispatch_and_reply_through_listener(forwarder: tuple[fwd.Forwarder, Recorder]
                                                 ) -> None:
    f, rec = forwarder
    got: list[tuple] = []

    def splice(listener: fwd.Listener, data: memoryview, peer: tuple) -> None:
        got.append((bytes(data), peer, listener.target_port))
        listener.sock.sendto(b"re:" + data, peer)

    f.handlers.udp_splice = splice
    listener = f.open(fwd.Listen(fwd.UDP, fwd.HOST, socket.AF_INET, "127.0.0.1", 0), 5353)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    for i in range(3):
        client.sendto(b"%d" % i, listener.sock.getsockname())
    f.loop.run_once(1)
    assert [g[0] for g in got] == [b"0", b"1", b"2"]
    assert {g[2] for g in got} == {5353}
    assert client.recvfrom(10) == (b"re:0", listener.sock.getsockname())
    client.close()


def test_close_listener_and_ports(forwarder: tuple[fwd.Forwarder, Recorder]) -> None:
    f, _ = forwarder
    listens = fwd.default_listens(fwd.UDP, fwd.NS, 0, BOTH)
    assert f.open_all((lst, 1) for lst in listens) == []
    assert f.ports(fwd.UDP, fwd.NS) == {0}
    inodes = f.own_inodes()
    assert len(inodes) == 2
    for lst in listens:
        f.close_listener(lst)
    assert f.listeners == {} and f.ports(fwd.UDP, fwd.NS) == set()


def test_open_all_reports_failures_and_continues(forwarder: tuple[fwd.Forwarder, Recorder]
                                                 ) -> None:
    f, _ = forwarder
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    listens = [fwd.Listen(fwd.TCP, fwd.HOST, socket.AF_INET, "127.0.0.1", port),
               fwd.Listen(fwd.TCP, fwd.HOST, socket.AF_INET6, "::1", port)]
    failures = f.open_all((lst, port) for lst in listens)
    assert [lst.family for lst, _ in failures] == [socket.AF_INET]
    assert list(f.listeners) == [listens[1]]
    busy.close()


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread that joined the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: list = []

    def run() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns")
            box.append(fn())
        except BaseException as e:
            box.append(e)
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    name = f"fwdtest{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", "192.0.2.5/32", "dev", "lo"], check=True)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_non_loopback_source_takes_the_tap_path(forwarder: tuple[fwd.Forwarder, Recorder],
                                                scratch_netns: str) -> None:
    f, rec = forwarder
    # a host-side listener made in the scratch namespace, which has a non-loopback address
    listen = fwd.Listen(fwd.TCP, fwd.HOST, socket.AF_INET, "0.0.0.0", 0)
    listener = in_netns(scratch_netns, lambda: f.open(listen, 80))
    port = listener.sock.getsockname()[1]
    client = in_netns(scratch_netns, lambda: socket.create_connection(
        ("192.0.2.5", port), source_address=("192.0.2.5", 0)))
    f.loop.run_once(1)
    assert [c[0] for c in rec.calls] == ["tcp_tap"]
    assert rec.calls[0][1][1][0] == "192.0.2.5"
    client.close()


def test_descriptor_exhaustion_pauses_accepting_instead_of_spinning(
        forwarder: tuple[fwd.Forwarder, Recorder]) -> None:
    f, _ = forwarder
    kept: list[socket.socket] = []
    f.handlers.tcp_splice = lambda sock, *rest: kept.append(sock)
    listener = f.open(fwd.Listen(fwd.TCP, fwd.HOST, socket.AF_INET, "127.0.0.1", 0), 1)
    clients = [socket.create_connection(listener.sock.getsockname()) for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # no descriptor left: fill every free number below the limit we then set
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers = [os.open("/dev/null", os.O_RDONLY)]
    while fillers[-1] <= highest:
        fillers.append(os.open("/dev/null", os.O_RDONLY))
    resource.setrlimit(resource.RLIMIT_NOFILE, (fillers[-1], hard))
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            f.loop.run_once(0.05)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    failures = f.stats[f"accept_error.{errno.EMFILE}"]
    assert 1 <= failures <= 10, failures
    assert kept == []
    deadline = time.monotonic() + 2
    while len(kept) < 3 and time.monotonic() < deadline:
        f.loop.run_once(0.05)
    assert len(kept) == 3
    for s in kept + clients:
        s.close()


@pytest.mark.parametrize("content,expected", [
    ("32768\t60999\n", range(1, 32768)), ("1024 65535", range(1, 1024)),
    ("garbage", range(1, 32768)), ("", range(1, 32768)),
])
def test_non_ephemeral_ports(tmp_path: pathlib.Path, content: str, expected: range) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text(content)
    assert fwd.non_ephemeral_ports(str(path)) == expected


def free_low_port(start: int) -> int:
    """A non-ephemeral TCP port nobody holds on 0.0.0.0 right now, from ``start`` up."""
    for port in range(start, start + 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


def test_all_skips_ports_someone_else_holds(forwarder: tuple[fwd.Forwarder, Recorder]) -> None:
    f, _ = forwarder
    held = free_low_port(23000)
    busy = socket.create_server(("0.0.0.0", held))
    free = free_low_port(held + 1)
    opened = fwd.open_all_ports(f, fwd.TCP, {held, free}.__contains__, (socket.AF_INET,))
    assert opened == 1
    assert f.ports(fwd.TCP, fwd.HOST) == {free}
    busy.close()


def test_setup_wires_splicing_for_pasta_only() -> None:
    ctx = Ctx(loop=EventLoop())
    try:
        runtime.setup_forwarding(ctx, None)
        assert ctx.fwd.handlers.tcp_splice is None and ctx.tcp_splice is None
        fwd.close(ctx)
        assert ctx.fwd is None
        runtime.setup_forwarding(ctx, lambda fn, *args: fn(*args))
        assert ctx.fwd.handlers.tcp_splice == ctx.tcp_splice.accept
        assert ctx.fwd.handlers.udp_splice == ctx.fwd.udp_splice.forward
        fwd.close(ctx)
        assert ctx.fwd is None and ctx.tcp_splice is None
    finally:
        ctx.loop.close()


def pasta_conf(*argv: str) -> Conf:
    return parse("pasta", [*argv, "--netns", "/run/netns/unused"])


def started(conf: Conf, pasta: bool) -> Ctx:
    ctx = Ctx(loop=EventLoop(), conf=conf)
    runtime.setup_forwarding(ctx, (lambda fn, *args: fn(*args)) if pasta else None)
    fwd.start(ctx)
    return ctx


def stop(ctx: Ctx) -> None:
    fwd.close(ctx)
    ctx.loop.close()


def test_start_opens_spec_ports_with_their_targets() -> None:
    p1, p2 = free_low_port(23100), free_low_port(23200)
    ctx = started(pasta_conf("-t", f"127.0.0.1/{p1}:8080", "-U", f"{p2}", "-u", "none",
                             "-T", "none"), pasta=True)
    try:
        (tcp,) = [lst for lst in ctx.fwd.listeners.values() if lst.listen.proto == fwd.TCP]
        assert (tcp.listen.addr, tcp.port, tcp.target_port, tcp.origin) == (
            "127.0.0.1", p1, 8080, fwd.HOST)
        udp = sorted(lst.listen.addr for lst in ctx.fwd.listeners.values()
                     if lst.listen.proto == fwd.UDP)
        assert udp == ["127.0.0.1", "::1"]  # -U: the namespace's loopback, both families
        assert ctx.fwd.scanner is None
    finally:
        stop(ctx)


def test_start_spec_range_maps_onto_target_range() -> None:
    first = free_low_port(23400)
    ctx = started(pasta_conf("-u", f"::1/{first}-{first + 1}:{first + 100}-{first + 101}",
                             "-t", "none", "-T", "none", "-U", "none"), pasta=True)
    try:
        got = sorted((lst.port, lst.target_port) for lst in ctx.fwd.listeners.values())
        assert got == [(first, first + 100), (first + 1, first + 101)]
    finally:
        stop(ctx)


def test_start_passt_ignores_namespace_directions() -> None:
    port = free_low_port(23300)
    # without a namespace (passt), -T and -U have nothing to listen in
    ctx = started(pasta_conf("-T", str(port), "-t", "none", "-u", "none", "-U", "none"),
                  pasta=False)
    try:
        assert ctx.fwd.listeners == {}
    finally:
        stop(ctx)


def test_start_auto_rules_and_udp_following_tcp() -> None:
    ctx = started(pasta_conf("-t", "~22", "-T", "none", "-U", "none"), pasta=True)
    try:
        rules = {(r.proto, r.origin): r for r in ctx.fwd.scanner.rules}
        assert set(rules) == {(fwd.TCP, fwd.HOST), (fwd.UDP, fwd.HOST)}
        assert rules[(fwd.UDP, fwd.HOST)].follow_tcp
        assert not rules[(fwd.TCP, fwd.HOST)].allowed(22)
        assert rules[(fwd.TCP, fwd.HOST)].allowed(80)
    finally:
        stop(ctx)


def test_start_udp_given_does_not_follow_tcp() -> None:
    ctx = started(pasta_conf("-t", "auto", "-u", "auto", "-T", "none", "-U", "none"), pasta=True)
    try:
        assert not any(r.follow_tcp for r in ctx.fwd.scanner.rules)
    finally:
        stop(ctx)


def test_udp_splice_relays_interleaved_senders_and_forgets_closed_flows() -> None:
    loop = EventLoop()
    f = fwd.Forwarder(loop, lambda fn, *a: fn(*a))
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.settimeout(2)
    splice = UdpSplice(loop, FlowTable(), lambda fn, *a: fn(*a))
    f.handlers = fwd.Handlers(udp_splice=splice.forward)
    listener = f.open(fwd.Listen(fwd.UDP, fwd.HOST, socket.AF_INET, "127.0.0.1", 0),
                      target.getsockname()[1])
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for i, sender in enumerate([*senders, senders[0], senders[0], senders[1]]):
            sender.sendto(b"%d" % i, listener.sock.getsockname())
        loop.run_once(1)
        got = [target.recvfrom(10) for _ in range(5)]
        assert [g[0] for g in got] == [b"0", b"1", b"2", b"3", b"4"]
        assert got[0][1] == got[2][1] == got[3][1] != got[1][1] == got[4][1]  # one flow each
        assert splice.last is not None
        splice.last.close()  # as on expiry: the next datagram makes a new flow
        assert splice.last is None
        senders[1].sendto(b"again", listener.sock.getsockname())
        loop.run_once(1)
        assert target.recvfrom(10)[0] == b"again" and splice.last is not None
    finally:
        for s in (*senders, target):
            s.close()
        splice.close()
        f.close()
        loop.close()
