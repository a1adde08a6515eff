"""One measurement of one workload: iperf3, round trips, connections, start-up.

Theory of operation
-------------------
Each function here runs one bounded measurement between two ends given by
the caller and returns a ``Sample``; it knows nothing of which program sits
in between.  Servers are started fresh for every measurement (a server
left in a bad state by a failed run cannot spoil the next), in a namespace,
under ``timeout``, and only once their socket shows up in ``/proc/net`` does
the client start; clients run under ``timeout`` too, and every wait has a
deadline, so a hung program costs one failed sample, never a hung run.

- Throughput: iperf3 with ``-J``; the receiver's rate.  ``reverse`` is
  iperf3's ``-R`` (the server sends).  UDP runs at a fixed offered rate and
  datagram size (``UdpLoad``); the sample then also carries the loss.
- Round trips (``peer.py rr``) and connection rate (``peer.py crr``): count
  per second.
- Start-up: seconds from spawning a fresh instance until a predicate holds
  (``harness.time_to_ready``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from harness import Endpoint, Namespace, stop_group

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")
SLACK = 30  # seconds a bounded program may take beyond its nominal duration


@dataclass(frozen=True)
class Sample:
    value: float
    loss: float | None = None  # percent of datagrams lost (UDP)
    cpu: float | None = None  # the program's CPU time per unit of work (report.work)


@dataclass(frozen=True)
class UdpLoad:
    """iperf3 ``-u -b RATE -l LENGTH``."""

    rate: str = "1G"
    length: int = 8192

    def options(self) -> list[str]:
        return ["-u", "-b", self.rate, "-l", str(self.length)]


class Server:
    """A server program in a namespace for the length of one measurement."""

    def __init__(self, ns: Namespace, argv: list[str], port: int, lifetime: float) -> None:
        self.proc = ns.spawn(["timeout", str(int(lifetime) + SLACK), *argv])
        try:
            ns.wait_listening("tcp", port, self.proc)
        except BaseException:
            stop_group(self.proc)
            raise

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        stop_group(self.proc, timeout=2)


def iperf3(client: Endpoint, server: Namespace, target: str, port: int, seconds: float,
           *, reverse: bool = False, udp: UdpLoad | None = None) -> Sample:
    """Gbit/s received, from one iperf3 run (``-R`` when ``reverse``)."""
    argv = ["timeout", str(int(seconds) + SLACK), "iperf3", "-J", "-c", target, "-p", str(port),
            "-t", f"{seconds:g}", "--connect-timeout", "5000"]
    if reverse:
        argv.append("-R")
    if udp is not None:
        argv += udp.options()
    with Server(server, ["iperf3", "-s", "-1", "-p", str(port)], port, seconds):
        status, output = client.run(argv, timeout=seconds + 2 * SLACK)
    return parse_iperf3(status, output, udp is not None)


def parse_iperf3(status: int, output: str, udp: bool) -> Sample:
    start = output.find("{")
    try:
        report = json.loads(output[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        report = {}
    if status != 0 or "error" in report or "end" not in report:
        reason = report.get("error") or output.strip()[-300:] or f"exit status {status}"
        raise RuntimeError(f"iperf3: {reason}")
    received = report["end"]["sum_received"]
    gbits = received["bits_per_second"] / 1e9
    if not udp:
        return Sample(gbits)
    return Sample(gbits, loss=float(report["end"]["sum"].get("lost_percent", 0.0)))


def _peer(client: Endpoint, mode: str, args: list[object], seconds: float) -> Sample:
    argv = ["timeout", str(int(seconds) + SLACK), sys.executable, PEER, mode,
            *map(str, args)]
    status, output = client.run(argv, timeout=seconds + 2 * SLACK)
    if status != 0:
        raise RuntimeError(f"peer {mode}: exit status {status}: {output.strip()[-300:]}")
    result = json.loads(output.strip().splitlines()[-1])
    return Sample(result["count"] / result["seconds"])


def round_trips(client: Endpoint, server: Namespace, target: str, port: int, seconds: float,
                size: int = 1) -> Sample:
    """Request/response round trips per second over one TCP connection."""
    with Server(server, [sys.executable, PEER, "serve", str(port), str(int(seconds) + SLACK)],
                port, seconds):
        return _peer(client, "rr", [target, port, seconds, size], seconds)


def connection_rate(client: Endpoint, server: Namespace, target: str, port: int,
                    seconds: float) -> Sample:
    """Connections per second: connect, one 1-byte exchange, close."""
    with Server(server, [sys.executable, PEER, "serve", str(port), str(int(seconds) + SLACK)],
                port, seconds):
        return _peer(client, "crr", [target, port, seconds], seconds)
