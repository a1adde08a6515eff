"""TunTap: frames through a message-preserving socket pair, and a real tap device."""

from __future__ import annotations

import ctypes
import os
import select
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from passt.backends.tap import (
    TCP4_HEADER,
    TCP6_HEADER,
    TX_HEADER,
    UDP6_HEADER,
    VNET_HDR_LEN,
    TapError,
    TunTap,
    open_tap,
)
from passt.packet import build_frame_icmp, build_frame_tcp, build_frame_udp

GUEST_MAC = bytes.fromhex("525400000001")
TEST_ETHERTYPE = 0x88B5  # IEEE "local experimental": nothing else sends it


def raw_frame(payload: bytes, src_mac: bytes = b"\x02\x00\x00\x00\x00\xaa") -> bytes:
    return b"\xff" * 6 + src_mac + TEST_ETHERTYPE.to_bytes(2, "big") + payload


def test_tuntap_reads_frames_in_bounded_batches(seqpacket):
    ours, peer = seqpacket
    tap = TunTap(os.dup(ours.fileno()), batch=4)
    try:
        assert tap.recv_frames() == []
        sent = [raw_frame(bytes([i]) * (20 + i)) for i in range(10)]
        for frame in sent:
            peer.send(frame)
        batches = [[bytes(f) for f in tap.recv_frames()] for _ in range(4)]
    finally:
        tap.close()
    assert [len(b) for b in batches] == [4, 4, 2, 0]
    assert sum(batches, []) == sent


def test_tuntap_writes_one_frame_each_and_drops_when_full(seqpacket):
    ours, peer = seqpacket
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    tap = TunTap(os.dup(ours.fileno()))
    try:
        assert tap.send_frames([raw_frame(b"one"), raw_frame(b"two")]) == 2
        assert [peer.recv(100), peer.recv(100)] == [raw_frame(b"one"), raw_frame(b"two")]
        big = [raw_frame(bytes(1000))] * 1000
        started = time.monotonic()
        sent = tap.send_frames(big)
        print(f"\nsent {sent} of {len(big)} before the peer's queue was full, "
              f"{time.monotonic() - started:.4f} s")  # fmt: skip
    finally:
        tap.close()
    assert 0 < sent < len(big)


def test_tuntap_closes_only_a_descriptor_it_owns(seqpacket):
    ours, _ = seqpacket
    fd = os.dup(ours.fileno())
    try:
        tap = TunTap(fd, owns_fd=False)  # pasta's: the namespace closes it
        tap.close()
        os.fstat(fd)  # still open
    finally:
        os.close(fd)
    owned = TunTap(os.dup(ours.fileno()))
    dup = owned.fileno()
    owned.close()
    with pytest.raises(OSError):
        os.fstat(dup)


def test_tuntap_with_vnet_hdr_strips_and_prepends_the_header(seqpacket):
    ours, peer = seqpacket
    tap = TunTap(os.dup(ours.fileno()), vnet_hdr=True)
    try:
        peer.send(bytes(range(VNET_HDR_LEN)) + raw_frame(b"in"))
        peer.send(bytes(VNET_HDR_LEN))  # a header alone: no frame
        assert [bytes(f) for f in tap.recv_frames()] == [raw_frame(b"in")]
        assert tap.send_frames([raw_frame(b"out")]) == 1
        assert peer.recv(100) == TX_HEADER + raw_frame(b"out")
    finally:
        tap.close()
    assert TX_HEADER == bytes(VNET_HDR_LEN)  # no flags, no GSO: checksums complete


def test_tuntap_marks_tcp_and_udp6_frames_needs_csum_when_checksums_are_partial(seqpacket):
    ours, peer = seqpacket
    tap = TunTap(os.dup(ours.fileno()), vnet_hdr=True, partial_csum=True)
    v4, v6 = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])), (bytes(15) + b"\1", bytes(15) + b"\2")
    frames = [build_frame_tcp(GUEST_MAC, GUEST_MAC, *v4, 1, 2, 3, 4, 0x10, 5, b"x"),
              build_frame_tcp(GUEST_MAC, GUEST_MAC, *v6, 1, 2, 3, 4, 0x10, 5, b"x"),
              build_frame_udp(GUEST_MAC, GUEST_MAC, *v4, 1, 2, b"x"),
              build_frame_udp(GUEST_MAC, GUEST_MAC, *v6, 1, 2, b"x", partial_csum=True),
              build_frame_icmp(GUEST_MAC, GUEST_MAC, *v6, 129, 0, 1, 2, b"x"),
              raw_frame(b"arp-ish")]
    try:
        assert tap.send_frames(frames) == 6
        got = [peer.recv(200) for _ in frames]
    finally:
        tap.close()
    headers = [TCP4_HEADER, TCP6_HEADER, TX_HEADER, UDP6_HEADER, TX_HEADER, TX_HEADER]
    assert got == [h + f for h, f in zip(headers, frames, strict=True)]
    # flags NEEDS_CSUM; csum_start at the TCP or UDP header, csum_offset 16 or 6
    assert TCP4_HEADER[0] == 1 and TCP4_HEADER[6:] == bytes([34, 0, 16, 0])
    assert TCP6_HEADER[6:] == bytes([54, 0, 16, 0])
    assert UDP6_HEADER[0] == 1 and UDP6_HEADER[6:] == bytes([54, 0, 6, 0])


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(name: str, work: Callable[[], Any]) -> Any:
    """Run ``work`` in a thread that joined network namespace ``name``."""
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            result["value"] = work()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            result["error"] = e

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=30)
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"rt-tap-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def open_tap_and_packet_socket(name: str, vnet_hdr: bool = False
                                ) -> tuple[int, str, socket.socket]:
    """Both belong to the caller's namespace; bind the socket once the link is up."""
    fd, ifname = open_tap(name, vnet_hdr)
    return fd, ifname, socket.socket(socket.AF_PACKET, socket.SOCK_RAW)


def receive_test_frames(tap: TunTap, want: int, timeout: float = 5.0) -> list[bytes]:
    found: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(found) < want and time.monotonic() < deadline:
        select.select([tap.fileno()], [], [], 0.1)
        found += [bytes(f) for f in tap.recv_frames() if f[12:14] == b"\x88\xb5"]
    return found


@pytest.mark.parametrize("vnet_hdr", [False, True], ids=["plain", "vnet_hdr"])
def test_tuntap_exchanges_frames_with_the_kernel_in_a_fresh_namespace(netns, vnet_hdr):
    fd, ifname, sock = in_netns(netns, lambda: open_tap_and_packet_socket("rttap0", vnet_hdr))
    tap = TunTap(fd, vnet_hdr=vnet_hdr)
    try:
        assert ifname == "rttap0"
        subprocess.run(["ip", "-n", netns, "link", "set", ifname, "up"], check=True)
        sock.bind((ifname, TEST_ETHERTYPE))
        to_us = raw_frame(b"from the kernel side".ljust(46, b"."))
        sock.send(to_us)
        assert receive_test_frames(tap, 1) == [to_us]

        to_kernel = raw_frame(b"from the tap side".ljust(46, b"."), src_mac=GUEST_MAC)
        assert tap.send_frames([to_kernel]) == 1
        sock.settimeout(5)
        while (got := sock.recv(65536)) != to_kernel:
            assert got.startswith(b"\xff" * 6), got  # only our own test frames expected
    finally:
        sock.close()
        tap.close()


def test_open_tap_refuses_bad_names_clearly(netns):
    with pytest.raises(TapError, match="Interface name too long"):
        open_tap("x" * 16)
    with pytest.raises(TapError, match=r"^Failed to set up tap device lo: "):
        in_netns(netns, lambda: open_tap("lo"))
