#!/usr/bin/env python3
"""Our cost per TCP round trip and per connection, measured in one process,
without the machine's noise.

Theory of operation
-------------------
``make bench`` measures round trips through a real tap between processes,
and on this shared two-core machine its figures move by a factor of two
within minutes (the cost of waking another process dominates, and it
varies): a change worth 10 % cannot be seen there.  This script measures
what such a change affects, our own work, and nothing else:

* the "tap" is one end of a ``SOCK_SEQPACKET`` socket pair, driven by the
  real ``TunTap`` backend (one frame per ``readv``/``write``, as on a tap)
  and the real ``Dispatcher``, parser and TCP driver, all on a real
  ``EventLoop``;
* the "guest" is this script on the other end of the pair: it opens
  connections to an echo server on the gateway address (mapped to
  127.0.0.1) and sends 1-byte requests, each acknowledging the previous
  answer, as the benchmark's peer (bench/peer.py) does;
* the echo server is a socket of this process too, answered synchronously.

Two workloads, as in the benchmark: ``rr``, round trips on one connection,
and ``crr``, connections that each open, make one round trip and close (the
guest first).  Only our loop's turns are timed, so the guest's and the
server's work is left out, and nobody ever sleeps.  The figure is the median
over ``--repeat`` runs, in µs per exchange or per connection; ``--profile``
prints cProfile's call counts per unit instead (the guest's calls
included).  It includes our system calls, and on this machine it moves by a
few per cent from run to run.
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
from collections.abc import Callable
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from passt.backends.dispatch import Dispatcher, SourceFilter  # noqa: E402
from passt.backends.tap import TunTap  # noqa: E402
from passt.context import Ctx  # noqa: E402
from passt.loop import EventLoop  # noqa: E402
from passt.packet import (  # noqa: E402
    ACK,
    FIN,
    PSH,
    SYN,
    build_frame_tcp,
    parse_frame,
    parse_tcp,
    tcp_options,
)  # fmt: skip
from passt.tcp import tap as tcp  # noqa: E402
from passt.tcp.core import seq_lt  # noqa: E402

OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = bytes.fromhex("020000000002")
GUEST = ipaddress.ip_address("198.51.100.1")
GATEWAY = ipaddress.ip_address("198.51.100.2")
FIRST_GUEST_PORT = 20000
GUEST_PORTS = 40000
TURNS_MAX = 100  # loop turns to wait for one of our segments


class World:
    """Our driver on one end of a frame pipe, the guest on the other, an echo server."""

    def __init__(self) -> None:
        net = SimpleNamespace(mac=OUR_MAC, mtu=65520, addr4=GUEST, gw4=GATEWAY, addr6=None,
                              gw6=None, ll6=None, ifname6="")
        self.ctx = Ctx(conf=SimpleNamespace(), net=net, loop=EventLoop())
        self.ctx.guest_mac = GUEST_MAC
        tcp.init(self.ctx)
        ours, self.guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.guest.setblocking(False)
        dispatcher = Dispatcher(self.ctx, {"tcp": tcp}, SourceFilter(GUEST.packed))
        dispatcher.attach(TunTap(os.dup(ours.fileno())))
        ours.close()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.listener.settimeout(5)
        self.port = self.listener.getsockname()[1]
        self.sport = FIRST_GUEST_PORT
        self.seq = self.ack = 0

    def frame(self, flags: int, payload: bytes = b"", options: bytes = b"") -> bytes:
        return build_frame_tcp(GUEST_MAC, OUR_MAC, GUEST.packed, GATEWAY.packed, self.sport,
                               self.port, self.seq, self.ack, flags, 65535, payload,
                               options=options)

    def send(self, flags: int, payload: bytes = b"", options: bytes = b"") -> None:
        """A segment from the guest, its sequence space accounted for."""
        self.guest.send(self.frame(flags, payload, options))
        self.seq = (self.seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF

    def turn(self) -> float:
        """One turn of our loop, not waiting: the seconds it took."""
        start = time.perf_counter()
        self.ctx.loop.run_once(0)
        return time.perf_counter() - start

    def until(self, flags: int) -> float:
        """Turns until a segment with ``flags`` reaches the guest, which takes in
        everything sent to it; the seconds our loop took."""
        spent = 0.0
        for _ in range(TURNS_MAX):
            spent += self.turn()
            done = False
            try:
                while True:
                    seg = parse_tcp(parse_frame(self.guest.recv(70000)).l4)
                    if seg.flags & SYN:
                        self.ack = (seg.seq + 1) & 0xFFFFFFFF
                    elif seq_lt(self.ack, end := (seg.seq + len(seg.payload)) & 0xFFFFFFFF):
                        self.ack = end
                    if seg.flags & FIN:
                        self.ack = (seg.seq + len(seg.payload) + 1) & 0xFFFFFFFF
                    done |= seg.flags & flags == flags
            except BlockingIOError:
                pass
            if done:
                return spent
        raise SystemExit(f"inproc_rr: no segment with flags {flags:#x} from us")

    def open(self) -> tuple[socket.socket, float]:
        """A new connection from the guest to the echo server: its server side, and
        the seconds our loop took (SYN to the guest's ACK)."""
        self.sport = FIRST_GUEST_PORT + (self.sport + 1 - FIRST_GUEST_PORT) % GUEST_PORTS
        self.seq, self.ack = 1000, 0
        self.send(SYN, options=tcp_options(mss=65480, wscale=7))
        spent = self.until(SYN | ACK)
        self.send(ACK)
        spent += self.turn()
        server, _ = self.listener.accept()
        server.settimeout(5)
        return server, spent

    def exchange(self, server: socket.socket) -> float:
        """One 1-byte request and its answer (whose frame carries the request's ACK)."""
        self.send(ACK | PSH, b"q")
        spent = self.turn()
        server.send(server.recv(1))
        return spent + self.until(ACK | PSH)

    def round_trips(self, count: int) -> float:
        """Seconds spent in our loop over ``count`` round trips on one connection."""
        server, _ = self.open()
        spent = sum(self.exchange(server) for _ in range(count))
        self.close(server)
        return spent

    def close(self, server: socket.socket) -> float:
        """The guest closes, then the server: the seconds our loop took."""
        self.send(ACK | FIN)
        spent = self.turn()
        if server.recv(1):
            raise SystemExit("inproc_rr: the server got data after the guest's FIN")
        server.close()
        spent += self.until(FIN)
        self.send(ACK)
        return spent + self.turn()

    def connections(self, count: int) -> float:
        """Seconds spent in our loop over ``count`` connections: open, one round trip,
        the guest closes, the server closes."""
        spent = 0.0
        for _ in range(count):
            server, opening = self.open()
            spent += opening + self.exchange(server) + self.close(server)
        if self.ctx.flows.stats().get("tcp", 0):
            raise SystemExit("inproc_rr: closed connections left flows behind")
        return spent


def profile(run: Callable[[int], float], count: int, unit: str) -> None:
    """cProfile's call counts per unit of work."""
    profiler = cProfile.Profile()
    profiler.runcall(run, count)
    stats = pstats.Stats(profiler)
    rows = sorted(((calls / count, func) for func, (_, calls, *_rest)
                   in stats.stats.items()), reverse=True)  # type: ignore[attr-defined]
    for per, (path, line, name) in rows:
        if per >= 0.5:
            print(f"{per:6.2f}  {os.path.basename(path)}:{line} {name}")
    print(f"{sum(per for per, _ in rows):6.2f}  calls per {unit}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exchanges", type=int, default=20000, help="round trips per run")
    ap.add_argument("--connections", type=int, default=2000, help="connections per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each (the median is shown)")
    ap.add_argument("--only", choices=("rr", "crr"), help="one of the two workloads")
    ap.add_argument("--profile", action="store_true", help="cProfile call counts per unit")
    args = ap.parse_args()
    world = World()
    workloads = [("rr", world.round_trips, args.exchanges, "exchange"),
                 ("crr", world.connections, args.connections, "connection")]
    for name, run, count, unit in workloads:
        if args.only not in (None, name):
            continue
        run(max(count // 20, 1))  # warm up
        if args.profile:
            profile(run, count, unit)
            continue
        samples = [run(count) / count * 1e6 for _ in range(args.repeat)]
        print(f"{name}: {statistics.median(samples):.2f} us per {unit} (median of "
              f"{args.repeat}; min {min(samples):.2f}, max {max(samples):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
