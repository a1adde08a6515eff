"""The L2/L3 services against real clients, without the command line.

Theory of operation: the L2 cells of test_pasta.py and test_passt.py need
the whole program; these tests need only the handlers (arp, ndp, dhcp,
dhcpv6, icmp), the tap dispatcher and ``TunTap``, wired by hand the way
pasta wires them, so they run as soon as those exist and tell a handler's
bug from a wiring one.  A thread of the test moves into the world's host
namespace (where the ping sockets must live, as pasta's would), takes the
host's addresses from ``hostnet`` as pasta does, opens a tap named like the
host's interface in a namespace of the world, and runs the event loop until
the test ends.  Inside, the namespace configures itself with busybox udhcpc
and the kernel's SLAAC, and every check of the L2 cells runs (l2.py), plus
one the cells leave out: a complete DHCPv6 exchange by ISC dhclient
(Solicit, Advertise, Request, Reply), recorded by a script of our own so
that the host's resolv.conf is never touched.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from passt.backends.dispatch import Dispatcher, SourceFilter
from passt.backends.tap import TunTap, open_tap
from passt.context import Ctx
from passt.flow import icmp
from passt.host import hostnet
from passt.host.netns import CLONE_NEWNET, setns
from passt.l2 import arp, dhcp, dhcpv6, ndp
from passt.loop import EventLoop

from . import l2
from .shell import Shell
from .world import FAMILIES, IFNAME, RESOLVERS, V6, World

pytestmark = pytest.mark.e2e

HERE = os.path.dirname(os.path.abspath(__file__))
UDHCPC_SCRIPT = os.path.join(HERE, "..", "guest", "udhcpc.script")


def _enter(netns: str) -> None:
    """Move the calling thread into network namespace ``netns``."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)


def _in_thread(netns: str, work):  # noqa: ANN001, ANN202 - a callable and its result
    """``work()`` run by a short-lived thread inside ``netns``."""
    result: list = []

    def run() -> None:
        try:
            _enter(netns)
            result.append(work())
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if not result:
        raise TimeoutError(f"work in {netns} did not finish")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class L2Stack:
    """Our handlers behind a tap in ``ns``, run by a thread in the world's host namespace."""

    HANDLERS = {"arp": arp, "ndp": ndp, "dhcp": dhcp, "dhcpv6": dhcpv6, "icmp": icmp}

    def __init__(self, world: World, ns: str) -> None:
        self.world = world
        self.ns = ns
        self.ctx: Ctx | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="l2-stack", daemon=True)

    def start(self) -> L2Stack:
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            self.stop()
            raise RuntimeError(f"L2 stack did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            _enter(self.world.host_ns)
            self._serve()
        except BaseException as e:  # noqa: BLE001 - reported by start() or the test
            self._error = e
            self._ready.set()

    def _serve(self) -> None:
        overrides = hostnet.Overrides(
            dns=tuple(ipaddress.ip_address(a) for a in RESOLVERS.values()), search=()
        )
        net = hostnet.pick(overrides, hostnet.query_host(), hostnet.Resolv())
        fd, _name = _in_thread(self.ns, lambda: open_tap(IFNAME))
        loop = EventLoop()
        ctx = self.ctx = Ctx(
            conf=SimpleNamespace(no_ra=False, no_dhcpv6=False, no_map_gw=False), net=net,
            loop=loop,
        )  # fmt: skip
        for module in (ndp, dhcp, dhcpv6, icmp):  # as runtime.Runtime.start_handlers
            module.init(ctx)
        dispatcher = Dispatcher(ctx, self.HANDLERS, SourceFilter.for_guest(net))
        dispatcher.attach(TunTap(fd))
        self._ready.set()
        try:
            while not self._stop.is_set():
                loop.run_once(0.1)
        finally:
            icmp.close(ctx)
            ndp.close(ctx)
            dispatcher.detach()
            loop.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[L2Stack, Shell]]:
    world = World("l2", str(tmp_path_factory.mktemp("l2")), extra=("ns",)).create()
    try:
        ns = world.extra_ns[0]
        running = L2Stack(world, ns).start()
        try:
            inner = world.shell(ns, "ns")
            shutil.copy(UDHCPC_SCRIPT, inner.path(l2.UDHCPC_SCRIPT))
            l2.configure(inner)
            yield running, inner
        finally:
            running.stop()
            if running.ctx is not None:
                print("counters:", dict(running.ctx.stats))
    finally:
        world.destroy()


@pytest.mark.parametrize(("name", "version"), l2.CHECKS, ids=lambda v: str(v))
def test_l2_check(stack: tuple[L2Stack, Shell], name: str, version: int) -> None:
    running, inner = stack
    print(l2.check(name, version, inner))
    assert running.ctx is not None and running.ctx.stats["drop.handler_error"] == 0


DHCLIENT_SCRIPT = """#!/bin/sh
echo "$reason ip6=$new_ip6_address dns=$new_dhcp6_name_servers" >> "$(dirname "$0")/dhclient6.out"
exit 0
"""


def test_dhclient_gets_the_address_over_a_full_exchange(stack: tuple[L2Stack, Shell]) -> None:
    running, inner = stack
    script, out = inner.path("dhclient6.sh"), inner.path("dhclient6.out")
    with open(script, "w") as f:
        f.write(DHCLIENT_SCRIPT)
    os.chmod(script, 0o755)
    open(inner.path("dhclient.conf"), "w").close()
    before = dict(running.ctx.stats) if running.ctx else {}
    inner.check(
        f"timeout 40 dhclient -6 -1 -cf {inner.path('dhclient.conf')} "
        f"-lf {inner.path('dhclient6.leases')} -pf {inner.path('dhclient6.pid')} "
        f"-sf {script} {IFNAME}",
        timeout=50,
    )
    inner.run(f"kill $(cat {inner.path('dhclient6.pid')})")
    bound = [line for line in inner.check(f"cat {out}").splitlines() if line.startswith("BOUND6")]
    assert bound, inner.check(f"cat {out}")
    assert f"ip6={V6.host}" in bound[0] and RESOLVERS[6] in bound[0]
    stats = running.ctx.stats if running.ctx else {}
    assert stats["dhcpv6.advertise"] > before.get("dhcpv6.advertise", 0)
    assert stats["dhcpv6.reply"] > before.get("dhcpv6.reply", 0)


PINGPONG = """
import socket, sys, time
dst, count = sys.argv[1], int(sys.argv[2])
v6 = ":" in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
s.settimeout(1.0)
got, began = 0, time.monotonic()
for seq in range(count):
    s.sendto(bytes((128 if v6 else 8, 0, 0, 0, 0, 0, seq >> 8, seq & 255)) + bytes(56), (dst, 0))
    try:
        got += s.recv(2048)[0] in (0, 129)
    except socket.timeout:
        pass
print(got, count / (time.monotonic() - began))
"""


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("target", ["gateway", "remote"])
def test_echo_round_trips_lose_nothing(stack: tuple[L2Stack, Shell], target: str,
                                       version: int) -> None:
    """One echo request at a time, 500 of them: every reply back (the rate is printed)."""
    _running, inner = stack
    script = inner.path("pingpong.py")
    with open(script, "w") as f:
        f.write(PINGPONG)
    inner.check("sysctl -qw net.ipv4.ping_group_range='0 2147483647'")
    address = getattr(FAMILIES[version], target)
    got, rate = inner.check(f"{sys.executable} {script} {address} 500", timeout=60).split()
    print(f"echo to {address}: {got}/500 replies, {float(rate):.0f} round trips/s")
    assert int(got) == 500
