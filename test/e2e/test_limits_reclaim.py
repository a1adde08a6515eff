"""Thousands of UDP flows, reclaimed by the idle timeout: the UDP handler in-process.

Theory of operation: the 180 s idle timeout of UDP flows is too long to wait
for in ``make check`` and has no command-line knob (nor should it get one for
a test).  ``udp.UdpState`` takes the timeout and the sweep interval as
parameters, so this test builds the handler in-process with a table of
``MAX_FLOWS`` entries and a one-second timeout, inside a network namespace of
its own (loopback only: the flows go to the gateway address, which is the
host's loopback).  It asks for ``FLOWS`` flows, checks that the table and
this process's descriptors stay bounded and that the rest are refused,
then runs the event loop past the timeout and checks that every flow and
every descriptor is gone, and that new flows are accepted again.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from passt import conf
from passt.context import Ctx
from passt.flow.table import FlowTable
from passt.host.hostnet import NetInfo
from passt.loop import EventLoop
from passt.packet import build_frame_udp, parse_frame
from passt.udp import tap as udp

from .test_hostile_harness import in_netns

pytestmark = pytest.mark.e2e

FLOWS = 5000
MAX_FLOWS = 1000
IDLE_TIMEOUT = 1.0
SWEEP_INTERVAL = 0.25
OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = bytes.fromhex("525400123456")
GUEST4 = ipaddress.IPv4Address("198.51.100.1")
GATEWAY4 = ipaddress.IPv4Address("198.51.100.2")
NET = NetInfo(mac=OUR_MAC, mtu=65520, ifname4="lo", addr4=GUEST4, prefix4=24, gw4=GATEWAY4)


class NullTap:
    """Frames to the guest go nowhere."""

    def fileno(self) -> int:
        return -1

    def recv_frames(self) -> list[memoryview]:
        return []

    def send_frames(self, frames) -> int:
        return len(frames)

    def close(self) -> None:
        pass


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"reclaim-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=20)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                       capture_output=True, timeout=20)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def ask_for_flows(ctx: Ctx, ports: range) -> None:
    for port in ports:
        frame = build_frame_udp(OUR_MAC, GUEST_MAC, GUEST4.packed, GATEWAY4.packed, port, 9,
                                b"x")
        udp.from_tap_batch(ctx, [parse_frame(frame)])


def run_loop(loop: EventLoop, seconds: float) -> None:
    loop.call_later(seconds, lambda: loop.stop(0))
    loop.run()


def test_thousands_of_udp_flows_are_bounded_then_reclaimed(netns: str) -> None:
    in_netns(netns, flood_and_reclaim)


def flood_and_reclaim() -> None:
    loop = EventLoop()
    ctx = Ctx(conf=conf.parse("passt", []), net=NET, loop=loop, flows=FlowTable(MAX_FLOWS))
    ctx.tap = NullTap()
    ctx.guest_mac = GUEST_MAC
    ctx.udp = udp.UdpState(ctx, timeout=IDLE_TIMEOUT, sweep_interval=SWEEP_INTERVAL)
    baseline = descriptors()
    try:
        started = time.monotonic()
        ask_for_flows(ctx, range(20000, 20000 + FLOWS))
        opened, peak = len(ctx.flows), descriptors()
        print(f"{FLOWS} flows asked for in {time.monotonic() - started:.2f} s: {opened} opened "
              f"(table of {MAX_FLOWS}), {ctx.stats['udp.refused_table']} refused; "
              f"descriptors {baseline} -> {peak}")
        assert opened == MAX_FLOWS
        assert ctx.stats["udp.refused_table"] == FLOWS - MAX_FLOWS
        assert peak - baseline <= MAX_FLOWS
        began = time.monotonic()
        run_loop(loop, IDLE_TIMEOUT + 4 * SWEEP_INTERVAL)
        print(f"after {time.monotonic() - began:.2f} s: {len(ctx.flows)} flows, "
              f"{ctx.stats['udp.expired']} expired, descriptors {descriptors()}")
        assert len(ctx.flows) == 0 and ctx.stats["udp.expired"] == MAX_FLOWS
        assert descriptors() == baseline
        ask_for_flows(ctx, range(40000, 40010))
        assert len(ctx.flows) == 10, "new flows refused after the reclaim"
    finally:
        ctx.udp.close()
        loop.close()
