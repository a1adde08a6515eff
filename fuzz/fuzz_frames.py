"""Coverage-guided fuzzing of everything a guest's bytes reach before a socket does.

Theory of operation
-------------------
A guest controls every byte passt reads from its socket and pasta reads
from its tap.  Those bytes go through the stream framing (``qemu``: length
prefixes), the frame parser (``packet.parse_frame``), the source check and
routing (``tap``), and then either an L2/L3 service that answers from
memory (``arp``, ``ndp``, ``dhcp``, ``dhcpv6``) or an L4 parser on the way to
a flow (``parse_tcp``, ``parse_udp``, ``parse_icmp``, TCP's answer to a
stray segment).  None of this needs a socket, so all of it can run in
one process thousands of times a second under atheris (libFuzzer for
Python), which instruments the ``passt`` package and steers inputs towards
new branches.

The rule being checked is the project's: nothing a guest sends may raise
out of a handler.  ``ParseError`` is the parsers' way of saying "drop
this", so it is expected; any other exception is a finding.  The
dispatcher normally counts such an exception as ``drop.handler_error`` and
goes on; here every handler is wrapped so that it escapes as ``Finding``
(a ``BaseException``, which the dispatcher does not catch) and atheris
reports the input.  The stream target feeds the input to a
``QemuStream`` through a socket pair, in chunks: frames or
``CorruptStream`` are the only acceptable outcomes.

The first input byte selects the target (even: one frame, odd: a stream).
``--write-seeds DIR`` writes a starting corpus of well-formed frames of
every kind (then exits); ``make fuzz`` runs long, ``make fuzz-short`` (part
of ``make check``) runs for a bounded time.  Both print libFuzzer's
figures: inputs tried, coverage, corpus size.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import atheris

with atheris.instrument_imports(include=["passt"]):
    from passt import packet
    from passt.backends import dispatch, qemu
    from passt.context import Ctx
    from passt.host.hostnet import NetInfo
    from passt.l2 import arp, dhcp, dhcpv6, ndp
    from passt.loop import EventLoop
    from passt.tcp import core as tcp_core

GUEST_MAC = bytes.fromhex("525400123456")
OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST4 = ipaddress.IPv4Address("198.51.100.1")
GW4 = ipaddress.IPv4Address("198.51.100.2")
GUEST6 = ipaddress.IPv6Address("2001:db8:1::1")
GW6 = ipaddress.IPv6Address("2001:db8:1::2")
LL6 = ipaddress.IPv6Address("fe80::1")
STREAM_MAX = 1 << 18
CHUNK = 4096

NET = NetInfo(mac=OUR_MAC, mtu=65520, ifname4="ext0", addr4=GUEST4, prefix4=24, gw4=GW4,
              ifname6="ext0", addr6=GUEST6, prefix6=64, gw6=GW6, ll6=LL6,
              dns=(ipaddress.IPv4Address("198.51.100.53"),), search=("example.com",))


class Finding(BaseException):
    """An exception other than ``ParseError`` escaped a handler."""


class NullTap:
    """Answers go nowhere; counting them is enough."""

    def __init__(self) -> None:
        self.sent = 0

    def fileno(self) -> int:
        return -1

    def recv_frames(self) -> list[memoryview]:
        return []

    def send_frames(self, frames: Any) -> int:
        self.sent += len(frames)
        return len(frames)

    def close(self) -> None:
        pass


class Checked:
    """A handler whose unexpected exceptions escape the dispatcher as ``Finding``."""

    def __init__(self, from_tap: Callable[[Ctx, packet.Packet], object]) -> None:
        self._from_tap = from_tap

    def from_tap(self, ctx: Ctx, pkt: packet.Packet) -> None:
        try:
            self._from_tap(ctx, pkt)
        except packet.ParseError:
            raise
        except Exception as e:
            raise Finding(f"{type(e).__name__}: {e}") from e


def _service(module: ModuleType) -> Checked:
    return Checked(module.from_tap)


def _tcp(_ctx: Ctx, pkt: packet.Packet) -> None:
    seg = packet.parse_tcp(pkt.l4)
    tcp_core.rst_for_stray(seg)
    packet.verify_l4(pkt)


def _udp(_ctx: Ctx, pkt: packet.Packet) -> None:
    packet.parse_udp(pkt.l4)
    packet.verify_l4(pkt)


def _icmp(_ctx: Ctx, pkt: packet.Packet) -> None:
    packet.parse_icmp(pkt.l4)
    packet.verify_ipv4_header(pkt)


def make_dispatcher() -> dispatch.Dispatcher:
    conf = SimpleNamespace(no_ra=False, no_dhcpv6=False, no_map_gw=False)
    ctx = Ctx(conf=conf, net=NET, loop=EventLoop())
    ctx.tap = NullTap()
    handlers = {"arp": _service(arp), "ndp": _service(ndp), "dhcp": _service(dhcp),
                "dhcpv6": _service(dhcpv6), "tcp": Checked(_tcp), "udp": Checked(_udp),
                "icmp": Checked(_icmp)}
    return dispatch.Dispatcher(ctx, handlers, dispatch.SourceFilter.for_guest(NET))


DISPATCHER = make_dispatcher()


def one_frame(frame: bytes) -> None:
    DISPATCHER.handle_frames([frame])


def stream(data: bytes) -> None:
    """``data`` as QEMU's side of the socket, read back by ``QemuStream`` in chunks."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        backend = qemu.QemuStream(ours, buffer_size=qemu.FRAME_MAX + qemu.PREFIX_LEN)
        for start in range(0, min(len(data), STREAM_MAX), CHUNK):
            theirs.sendall(data[start : start + CHUNK])
            try:
                frames = backend.recv_frames()
            except qemu.CorruptStream:
                return
            if frames:
                DISPATCHER.handle_frames(frames)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        stream(data[1:])
    else:
        one_frame(data[1:])


def seeds() -> dict[str, bytes]:
    """Well-formed inputs of every kind the targets know (frame target: first byte 0)."""
    g4, r4 = GUEST4.packed, ipaddress.IPv4Address("203.0.113.1").packed
    g6, r6 = GUEST6.packed, ipaddress.IPv6Address("2001:db8:2::1").packed
    ll6 = ipaddress.IPv6Address("fe80::5054:ff:fe12:3456").packed
    dhcp_discover = (bytes([1, 1, 6, 0]) + os.urandom(4) + bytes(20) + GUEST_MAC + bytes(202)
                     + b"\x63\x82\x53\x63" + bytes([53, 1, 1, 55, 3, 1, 3, 6, 255]))
    frames = {
        "arp": packet.build_frame_arp(b"\xff" * 6, GUEST_MAC, 1, GUEST_MAC, g4, bytes(6),
                                      GW4.packed),
        "tcp4-syn": packet.build_frame_tcp(OUR_MAC, GUEST_MAC, g4, r4, 40000, 80, 1, 0,
                                           packet.SYN, 65535,
                                           options=packet.tcp_options(1460, 7, True, (1, 0))),
        "tcp6-data": packet.build_frame_tcp(OUR_MAC, GUEST_MAC, g6, r6, 40000, 80, 1, 1,
                                            packet.ACK | packet.PSH, 65535, b"GET /"),
        "udp4": packet.build_frame_udp(OUR_MAC, GUEST_MAC, g4, r4, 5353, 53, b"query"),
        "dhcp": packet.build_frame_udp(b"\xff" * 6, GUEST_MAC, bytes(4), b"\xff" * 4, 68, 67,
                                       dhcp_discover),
        "dhcpv6": packet.build_frame_udp(OUR_MAC, GUEST_MAC, ll6, bytes.fromhex(
            "ff020000000000000000000000010002"), 546, 547,
            bytes([1, 0, 0, 1]) + struct.pack("!HH", 1, 10) + bytes(10)),
        "ndp-rs": packet.build_frame_icmp(OUR_MAC, GUEST_MAC, ll6, bytes.fromhex(
            "ff020000000000000000000000000002"), 133, 0, 0, 0, b"\x01\x01" + GUEST_MAC,
            ttl=255),
        "ping4": packet.build_frame_icmp(OUR_MAC, GUEST_MAC, g4, r4, 8, 0, 1, 1, b"ping"),
        "ping6": packet.build_frame_icmp(OUR_MAC, GUEST_MAC, g6, r6, 128, 0, 1, 1, b"ping"),
    }
    inputs = {f"frame-{name}": b"\x00" + frame for name, frame in frames.items()}
    inputs["stream"] = b"\x01" + b"".join(struct.pack("!I", len(f)) + f for f in frames.values())
    return inputs


def write_seeds(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds().items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds())} seeds in {directory}")


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        write_seeds(argv[2])
        return
    for data in seeds().values():  # the seeds must pass before anything else
        test_one_input(data)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
