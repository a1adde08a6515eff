"""The far end of test_migration.py's connections: a stdlib-only program run in the
world's remote namespace while the guest migrates.

Theory of operation: one process serves, each on its own port (``PORTS``)
and thread:

* ``sink``: takes the guest's upload as fast as it comes (the guest paces
  it) and reports its SHA-256, its size and the longest wait for bytes;
* ``source``: sends the guest ``SIZE`` bytes of a seeded pseudo-random
  stream at the same pace, and reports their SHA-256;
* ``ticker``: sends a byte every ``TICK`` to a guest that echoes it back
  and records when each echo arrives: the largest gap between two echoes
  is the time no byte moved through a migration (the downtime figure);
* ``echo``: an interactive, mostly idle connection (what SSH is): every line
  echoed back;
* ``udp``: every datagram echoed back.

``WORKDIR/<service>.started`` appears once ``STARTED`` bytes have moved
through the sink or the source; results go to ``WORKDIR/<service>.json``
when a service's connection ends
(the ticker's when ``WORKDIR/stop`` appears).  Everything is bounded: the
whole process exits after ``DEADLINE`` seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import sys
import threading
import time

PORTS = {"sink": 7001, "echo": 7002, "udp": 7003, "source": 7004, "ticker": 7005}
SIZE = 16 << 20
PACE = 16 << 10
STARTED = 1 << 20  # bytes moved when <service>.started appears
TICK = 0.01
DEADLINE = 400.0


def _report(workdir: str, name: str, result: dict[str, object]) -> None:
    path = os.path.join(workdir, f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(path + ".tmp", path)


def _started(workdir: str, name: str) -> None:
    with open(os.path.join(workdir, f"{name}.started"), "w"):
        pass


def _accept(port: int) -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(1)
    conn, _ = listener.accept()
    listener.close()
    return conn


def sink(workdir: str) -> None:
    conn = _accept(PORTS["sink"])
    digest, size, gaps, last = hashlib.sha256(), 0, 0.0, None
    while True:
        data = conn.recv(1 << 16)
        now = time.monotonic()
        if not data:
            break
        if last is not None:
            gaps = max(gaps, now - last)
        last = now
        digest.update(data)
        if size < STARTED <= size + len(data):
            _started(workdir, "sink")
        size += len(data)
    _report(workdir, "sink", {"sha256": digest.hexdigest(), "bytes": size, "max_gap": gaps})


def stream(seed: int = 25) -> bytes:
    return random.Random(seed).randbytes(SIZE)


def source(workdir: str) -> None:
    conn = _accept(PORTS["source"])
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PACE)
    data = memoryview(stream())
    for start in range(0, SIZE, PACE):
        conn.sendall(data[start:start + PACE])
        if start == STARTED:
            _started(workdir, "source")
        time.sleep(TICK)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # the guest closes once it has it all
    _report(workdir, "source", {"sha256": hashlib.sha256(data).hexdigest(), "bytes": SIZE})


def ticker(workdir: str) -> None:
    conn = _accept(PORTS["ticker"])
    conn.settimeout(TICK)
    arrivals: list[float] = []
    stop = os.path.join(workdir, "stop")
    while not os.path.exists(stop):
        conn.sendall(b".")
        try:
            echoed = conn.recv(4096)
        except TimeoutError:
            continue
        if not echoed:
            break
        arrivals += [time.monotonic()] * len(echoed)
        time.sleep(TICK)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    _report(workdir, "ticker", {"echoes": len(arrivals), "max_gap": max(gaps, default=0.0)})


def echo(workdir: str) -> None:
    conn = _accept(PORTS["echo"])
    lines = []
    with conn.makefile("rwb", buffering=0) as f:
        for line in f:
            lines.append(line.decode().strip())
            f.write(line)
    _report(workdir, "echo", {"lines": lines})


def udp(workdir: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", PORTS["udp"]))
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def main() -> None:
    workdir = sys.argv[1]
    for service in (sink, source, ticker, echo, udp):
        threading.Thread(target=service, args=(workdir,), daemon=True).start()
    with open(os.path.join(workdir, "ready"), "w"):
        pass
    time.sleep(DEADLINE)


if __name__ == "__main__":
    main()
