#!/usr/bin/env python3
"""Our cost per TCP round trip, measured in one process, without the machine's noise.

Theory of operation
-------------------
``make bench`` measures round trips through a real tap between processes,
and on this shared two-core machine its figures move by a factor of two
within minutes (the cost of waking another process dominates, and it
varies): a change worth 10 % cannot be seen there.  This script measures
what the change affects, our own work per exchange, and nothing else:

* the "tap" is one end of a ``SOCK_SEQPACKET`` socket pair, driven by the
  real ``TunTap`` backend (one frame per ``readv``/``write``, as on a tap)
  and the real ``Dispatcher``, parser and TCP driver, all on a real
  ``EventLoop``;
* the "guest" is this script on the other end of the pair: it opens a
  connection to an echo server on 127.0.0.1 (the gateway address, mapped to
  loopback) and then sends 1-byte requests, each acknowledging the previous
  answer, as the benchmark's peer does;
* the echo server is a socket of this process too, answered synchronously.

Only the two ``run_once`` calls of each exchange are timed (the request's
way to the socket, the answer's way to the tap), so the guest's and the
server's work is left out, and nobody ever sleeps.  The figure is the
median over ``--repeat`` runs of ``--exchanges`` exchanges each, in µs per
exchange; ``--profile`` prints cProfile's call counts per exchange instead.
It includes the system calls (about 5 µs of the loopback's and the socket
pair's work) and, on this machine, varies by a few per cent run to run.
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import os
import pstats
import socket
import statistics
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from passt import tcp  # noqa: E402
from passt.context import Ctx  # noqa: E402
from passt.loop import EventLoop  # noqa: E402
from passt.packet import ACK, PSH, SYN, build_frame_tcp, parse_frame, parse_tcp, tcp_options  # noqa: E402
from passt.tap import Dispatcher, SourceFilter, TunTap  # noqa: E402

OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = bytes.fromhex("020000000002")
GUEST = ipaddress.ip_address("198.51.100.1")
GATEWAY = ipaddress.ip_address("198.51.100.2")
GUEST_PORT = 40000


class World:
    """Our driver on one end of a frame pipe, the guest on the other, an echo server."""

    def __init__(self) -> None:
        net = SimpleNamespace(mac=OUR_MAC, mtu=65520, addr4=GUEST, gw4=GATEWAY, addr6=None,
                              gw6=None, ll6=None, ifname6="")
        self.ctx = Ctx(conf=SimpleNamespace(), net=net, loop=EventLoop())
        self.ctx.guest_mac = GUEST_MAC
        tcp.init(self.ctx)
        ours, self.guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ours = ours
        dispatcher = Dispatcher(self.ctx, {"tcp": tcp}, SourceFilter(GUEST.packed))
        dispatcher.attach(TunTap(os.dup(ours.fileno())))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seq = 1000
        self.ack = 0
        self.server = self._handshake()

    def frame(self, flags: int, payload: bytes = b"", options: bytes = b"") -> bytes:
        return build_frame_tcp(GUEST_MAC, OUR_MAC, GUEST.packed, GATEWAY.packed, GUEST_PORT,
                               self.port, self.seq, self.ack, flags, 65535, payload,
                               options=options)

    def _from_us(self) -> list:
        """Segments we sent to the guest so far."""
        self.guest.setblocking(False)
        segments = []
        try:
            while True:
                segments.append(parse_tcp(parse_frame(self.guest.recv(70000)).l4))
        except BlockingIOError:
            pass
        return segments

    def _handshake(self) -> socket.socket:
        self.guest.send(self.frame(SYN, options=tcp_options(mss=65480, wscale=7)))
        for _ in range(100):
            self.ctx.loop.run_once(0.01)
            synacks = [s for s in self._from_us() if s.flags & SYN]
            if synacks:
                break
        else:
            raise SystemExit("inproc_rr: no SYN-ACK")
        self.seq += 1
        self.ack = (synacks[0].seq + 1) & 0xFFFFFFFF
        self.guest.send(self.frame(ACK))
        self.ctx.loop.run_once(0)
        server, _ = self.listener.accept()
        server.settimeout(5)
        return server

    def exchanges(self, count: int) -> float:
        """Seconds spent in our loop over ``count`` 1-byte round trips."""
        run_once = self.ctx.loop.run_once
        guest, server = self.guest, self.server
        guest.setblocking(True)
        guest.settimeout(5)
        spent = 0.0
        clock = time.perf_counter
        for _ in range(count):
            guest.send(self.frame(ACK | PSH, b"q"))
            self.seq += 1
            start = clock()
            run_once(0)
            spent += clock() - start
            server.send(server.recv(1))
            start = clock()
            run_once(0)
            spent += clock() - start
            answer = parse_tcp(parse_frame(guest.recv(70000)).l4)
            self.ack = (answer.seq + len(answer.payload)) & 0xFFFFFFFF
        return spent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exchanges", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile call counts per exchange")
    args = ap.parse_args()
    world = World()
    world.exchanges(1000)  # warm up
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(world.exchanges, args.exchanges)
        stats = pstats.Stats(profile)
        rows = sorted(((calls / args.exchanges, func) for func, (_, calls, *_rest)
                       in stats.stats.items()), reverse=True)  # type: ignore[attr-defined]
        for per, (path, line, name) in rows:
            if per >= 0.5:
                print(f"{per:6.2f}  {os.path.basename(path)}:{line} {name}")
        print(f"{sum(per for per, _ in rows):6.2f}  calls per exchange")
        return 0
    samples = [world.exchanges(args.exchanges) / args.exchanges * 1e6 for _ in range(args.repeat)]
    print(f"{statistics.median(samples):.2f} us per exchange (median of {args.repeat}; "
          f"min {min(samples):.2f}, max {max(samples):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
