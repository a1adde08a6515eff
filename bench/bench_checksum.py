#!/usr/bin/env python3
"""Checksum and packet hot-path timings, side by side in one run.

Run as ``python3 bench/bench_checksum.py``.  Prints microseconds per call
(best of several repeats: the machines are shared and noisy, compare the
columns of one run rather than figures across runs):

1. the Internet checksum of 64 B, 1500 B and 64 KiB with ``checksum()`` and
   with each candidate method (NumPy '>u2', NumPy '<u4' as checksum.py does,
   ``int.from_bytes``, ``array('H')``);
2. the crossover between the integer and NumPy paths, which sets
   ``checksum.NUMPY_THRESHOLD``;
3. parsing (``parse_frame`` + ``parse_tcp``) and building a 64 KiB TCP frame,
   with ``build_frame_tcp`` and with ``TcpFrameTemplate``.
"""

from __future__ import annotations

import os
import sys
import timeit
from array import array
from collections.abc import Callable

import numpy as np

from passt import checksum as cs
from passt import packet as pk

SIZES = {"64 B": 64, "1500 B": 1500, "64 KiB": 65536}


def best_us(fn: Callable[[], object], budget: float = 0.2) -> float:
    """Best time per call in microseconds, over 5 repeats of about ``budget`` seconds."""
    number = max(1, int(budget / max(timeit.timeit(fn, number=1), 1e-7)))
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def numpy_be16(data: bytes) -> int:
    """The textbook NumPy way: big-endian 16-bit words, odd byte padded."""
    total = int(np.frombuffer(data, ">u2", len(data) >> 1).sum(dtype=np.uint64))
    if len(data) & 1:
        total += data[-1] << 8
    return cs.csum_fold(total)


cs.load_numpy()  # _sum_numpy is only bound once NumPy is loaded


def int_from_bytes(data: bytes) -> int:
    return cs.csum_fold(cs._sum_small(data, len(data)))


def numpy_le32(data: bytes) -> int:
    return cs.csum_fold(cs._sum_numpy(data, len(data)))


def array_h(data: bytes) -> int:
    words = array("H", data if not len(data) & 1 else data + b"\0")
    if sys.byteorder == "little":
        words.byteswap()
    return cs.csum_fold(sum(words))


METHODS: dict[str, Callable[[bytes], int]] = {
    "checksum()": cs.checksum,
    "numpy >u2": numpy_be16,
    "numpy <u4": numpy_le32,
    "int.from_bytes": int_from_bytes,
    "array('H')": array_h,
}


def bench_methods() -> None:
    print("Internet checksum, us per call")
    print(f"{'method':>16}" + "".join(f"{name:>12}" for name in SIZES))
    buffers = {name: os.urandom(size) for name, size in SIZES.items()}
    reference = {name: cs.checksum(buf) for name, buf in buffers.items()}
    for method, fn in METHODS.items():
        cells = []
        for name, buf in buffers.items():
            assert fn(buf) == reference[name], method
            cells.append(f"{best_us(lambda fn=fn, buf=buf: fn(buf)):12.2f}")
        print(f"{method:>16}" + "".join(cells))


def bench_crossover() -> None:
    print(f"\nint.from_bytes vs numpy <u4 by size (NUMPY_THRESHOLD = {cs.NUMPY_THRESHOLD})")
    for size in (256, 512, 768, 1024, 1280, 1536, 2048, 4096):
        buf = os.urandom(size)
        small = best_us(lambda buf=buf, size=size: cs._sum_small(buf, size), 0.05)
        large = best_us(lambda buf=buf, size=size: cs._sum_numpy(buf, size), 0.05)
        print(f"{size:>6} B  int {small:6.2f} us  numpy {large:6.2f} us")


def bench_frames() -> None:
    mac_a, mac_b = b"\x02" * 6, b"\x04" * 6
    payload = memoryview(os.urandom(65536 - 14 - 20 - 20))
    print("\n64 KiB TCP frames, us per call")
    for family, (src, dst) in {
        "IPv4": (b"\x0a\0\0\x01", b"\x0a\0\0\x02"),
        "IPv6": (b"\x20\x01" + bytes(13) + b"\x01", b"\x20\x01" + bytes(13) + b"\x02"),
    }.items():
        data = payload[: 65536 - 14 - (20 if len(src) == 4 else 40) - 20]
        tpl = pk.TcpFrameTemplate(mac_a, mac_b, src, dst, 80, 40000)
        frame = tpl.build(1, 2, pk.ACK | pk.PSH, 65535, data)
        ack = tpl.build(1, 2, pk.ACK, 65535)

        def parse(frame: bytes = frame) -> object:
            return pk.parse_tcp(pk.parse_frame(frame).l4)

        figures = {
            "parse_frame+parse_tcp": best_us(parse),
            "parse, bare ACK": best_us(lambda ack=ack: pk.parse_tcp(pk.parse_frame(ack).l4)),
            "parse_frame+verify_l4": best_us(
                lambda frame=frame: pk.verify_l4(pk.parse_frame(frame))
            ),
            "build_frame_tcp": best_us(
                lambda src=src, dst=dst, data=data: pk.build_frame_tcp(
                    mac_a, mac_b, src, dst, 80, 40000, 1, 2, pk.ACK, 65535, data
                )
            ),
            "TcpFrameTemplate.build": best_us(
                lambda tpl=tpl, data=data: tpl.build(1, 2, pk.ACK, 65535, data)
            ),
            "TcpFrameTemplate.headers": best_us(
                lambda tpl=tpl, data=data: tpl.headers(1, 2, pk.ACK, 65535, data)
            ),
            "TcpFrameTemplate, bare ACK": best_us(lambda tpl=tpl: tpl.build(1, 2, pk.ACK, 65535)),
        }
        for what, us in figures.items():
            print(f"{family} {what:>26} {us:8.2f}")


if __name__ == "__main__":
    bench_methods()
    bench_crossover()
    bench_frames()
