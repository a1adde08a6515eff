#!/usr/bin/env python3
"""The TCP core's cost per guest segment with header prediction on and off.

Theory of operation
-------------------
Header prediction (passt/tcp/core.py, "Header prediction") saves a few
Python calls per segment: far below what ``make bench-ab`` resolves on a
shared machine, where a round trip costs tens of microseconds of process
switches and system calls.  This script measures the core alone, in one
process, on segments built beforehand: ``TcpConn.fast_path`` on against off,
alternately (off first in even repeats, on first in odd ones), and prints
the medians and in how many repeats the fast path was cheaper.  Times are
the thread's CPU time (``time.thread_time``), so that other processes on
the machine count for little.

* ``rr``: one round trip's core calls (our 1-byte answer peeked and sent,
  the guest's 1-byte request acknowledging it, the socket taking it, the
  ACK flushed), per exchange;
* ``data``: ``on_segment`` alone for in-order 64 KiB segments (namespace
  to host);
* ``ack``: ``on_segment`` alone for pure ACKs of 64 KiB each (host to
  namespace).

``PASST_MYPYC`` applies as anywhere: the same comparison on the mypyc build.
Usage: ``core_prediction.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from passt.packet import ACK, PSH, SYN, TcpSegment
from passt.tcp.core import SEQ_MASK, TcpConn

SEGMENTS = 20000
BATCH = 100  # segments per timed batch
BIG = 65000


def segment(seq: int, ack: int, flags: int, payload: bytes | memoryview) -> TcpSegment:
    return TcpSegment(1, 2, seq & SEQ_MASK, ack & SEQ_MASK, flags, 512, None, None, False,
                      None, None, memoryview(payload))


def established(fast: bool) -> TcpConn:
    syn = TcpSegment(1, 2, 1000, 0, SYN, 64240, 65480, 7, False, None, None, memoryview(b""))
    conn, _ = TcpConn.outbound(syn, 5000, 65480)
    conn.on_connected()
    conn.on_segment(segment(1001, 5001, ACK, b""))
    conn.fast_path = fast
    return conn


def rr(fast: bool) -> float:
    """µs of core calls per 1-byte exchange."""
    conn = established(fast)
    start = time.thread_time()
    for _ in range(SEGMENTS):
        conn.on_sock_readable()
        conn.on_sock_data(1)
        conn.on_segment(segment(conn.rcv_nxt, conn.snd_nxt, ACK | PSH, b"x"))
        conn.on_sock_accepted(1, 1)
        conn.flush_ack(1 << 20, 4 << 20)
    return (time.thread_time() - start) / SEGMENTS * 1e6


def data(fast: bool) -> float:
    """µs per in-order 64 KiB segment, ``on_segment`` alone."""
    conn = established(fast)
    payload = memoryview(bytes(BIG))
    total = 0.0
    for _ in range(SEGMENTS // BATCH):
        segs = [segment(conn.rcv_nxt + BIG * i, conn.snd_nxt, ACK, payload) for i in range(BATCH)]
        start = time.thread_time()
        for seg in segs:
            conn.on_segment(seg)
            conn.rcv_nxt = (conn.rcv_nxt + BIG) & SEQ_MASK  # as if the socket took it all
        total += time.thread_time() - start
    return total / SEGMENTS * 1e6


def ack(fast: bool) -> float:
    """µs per pure ACK of 64 KiB, ``on_segment`` alone."""
    conn = established(fast)
    total = 0.0
    for _ in range(SEGMENTS // BATCH):
        conn.on_sock_readable()
        conn.on_sock_data(BIG * BATCH)
        segs = [segment(conn.rcv_nxt, conn.snd_una + BIG * i, ACK, b"")
                for i in range(1, BATCH + 1)]
        start = time.thread_time()
        for seg in segs:
            conn.on_segment(seg)
        total += time.thread_time() - start
    return total / SEGMENTS * 1e6


WORKLOADS: dict[str, Callable[[bool], float]] = {"rr": rr, "data": data, "ack": ack}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    samples: dict[tuple[str, bool], list[float]] = {}
    for index in range(args.repeat):
        for fast in (False, True) if index % 2 == 0 else (True, False):
            for name, workload in WORKLOADS.items():
                samples.setdefault((name, fast), []).append(workload(fast))
    for name in WORKLOADS:
        off, on = samples[(name, False)], samples[(name, True)]
        better = sum(b < a for a, b in zip(off, on, strict=True))
        print(f"{name:5} off {statistics.median(off):7.3f} µs  on {statistics.median(on):7.3f} µs"
              f"  on/off {statistics.median(on) / statistics.median(off):.3f}"
              f"  on better {better}/{len(off)}")


if __name__ == "__main__":
    main()
