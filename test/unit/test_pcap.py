"""pcap writer: the file reads back, frame for frame, with tshark and by hand."""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
import time

import pytest

from passt import packet
from passt.pcap import IOV_MAX, LINKTYPE_ETHERNET, MAGIC, SNAPLEN, Pcap, PcapError

GUEST_MAC = bytes.fromhex("525400000001")
HOST_MAC = bytes.fromhex("02fc00000001")
GUEST4 = ipaddress.IPv4Address("192.0.2.2").packed
HOST4 = ipaddress.IPv4Address("192.0.2.1").packed
GUEST6 = ipaddress.IPv6Address("2001:db8::2").packed
HOST6 = ipaddress.IPv6Address("2001:db8::1").packed


def sample_frames() -> list[bytes]:
    return [
        packet.build_frame_udp(HOST_MAC, GUEST_MAC, GUEST4, HOST4, 40000, 53, b"query"),
        packet.build_frame_tcp(
            GUEST_MAC, HOST_MAC, HOST6, GUEST6, 443, 50000, 1, 2, packet.ACK, 512,
            b"z" * 65000,
        ),  # fmt: skip
        packet.build_frame_arp(
            b"\xff" * 6, GUEST_MAC, packet.ARP_REQUEST, GUEST_MAC, GUEST4, bytes(6), HOST4
        ),
    ]


def read_records(data: bytes) -> tuple[tuple[int, ...], list[tuple[int, int, bytes]]]:
    """(global header fields, [(seconds, microseconds, frame)]) of a pcap file."""
    header = struct.unpack_from("=IHHiIII", data)
    records, offset = [], 24
    while offset < len(data):
        sec, usec, incl, orig = struct.unpack_from("=IIII", data, offset)
        assert incl == orig
        records.append((sec, usec, data[offset + 16 : offset + 16 + incl]))
        offset += 16 + incl
    assert offset == len(data)
    return header, records


def test_file_has_classic_header_and_one_record_per_frame(tmp_path):
    path = tmp_path / "x.pcap"
    pcap = Pcap.open(str(path))
    frames = sample_frames()
    before = time.time()
    pcap.write_frames([memoryview(f) for f in frames[:2]])
    pcap.write_frames(frames[2:])
    pcap.write_frames([])
    pcap.close()
    header, records = read_records(path.read_bytes())
    assert header == (MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)
    assert [r[2] for r in records] == frames
    for sec, usec, _ in records:
        assert 0 <= usec < 1_000_000
        assert abs(sec + usec / 1e6 - before) < 60
    assert path.stat().st_mode & 0o777 == 0o600


def test_batches_larger_than_iov_max_are_complete_and_in_order(tmp_path):
    path = tmp_path / "many.pcap"
    pcap = Pcap.open(str(path))
    frames = [
        packet.build_frame_udp(HOST_MAC, GUEST_MAC, GUEST4, HOST4, 1000 + i, 9, bytes(i % 50))
        for i in range(IOV_MAX + 77)
    ]
    pcap.write_frames(frames)
    pcap.close()
    assert [r[2] for r in read_records(path.read_bytes())[1]] == frames


def test_tshark_decodes_what_we_wrote(tmp_path):
    tshark = shutil.which("tshark")
    assert tshark, "tshark is a test dependency (Makefile APT_TEST_DEPS)"
    path = tmp_path / "t.pcap"
    pcap = Pcap.open(str(path))
    pcap.write_frames(sample_frames())
    pcap.close()
    fields = ["frame.len", "eth.src", "eth.type", "ip.src", "ipv6.dst", "udp.dstport",
              "tcp.srcport", "tcp.len", "arp.opcode"]  # fmt: skip
    out = subprocess.run(
        [tshark, "-n", "-r", str(path), "-T", "fields", "-E", "separator=|"]
        + [arg for f in fields for arg in ("-e", f)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines()]
    frames = sample_frames()
    assert rows == [
        [str(len(frames[0])), "52:54:00:00:00:01", "0x0800", "192.0.2.2", "", "53", "", "", ""],
        [str(len(frames[1])), "02:fc:00:00:00:01", "0x86dd", "", "2001:db8::2", "", "443",
         "65000", ""],
        [str(len(frames[2])), "52:54:00:00:00:01", "0x0806", "", "", "", "", "", "1"],
    ]  # fmt: skip


def test_unwritable_path_is_a_clear_error(tmp_path):
    with pytest.raises(PcapError, match=r"^Couldn't open pcap file .*/no/such\.pcap: "):
        Pcap.open(str(tmp_path / "no" / "such.pcap"))
