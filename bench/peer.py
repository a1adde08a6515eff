#!/usr/bin/env python3
"""Request/response peers for the latency and connection-rate cells.

Theory of operation
-------------------
iperf3 measures bulk throughput only; round trips and connection set-up
are what interactive traffic and short-lived connections cost, and they
exercise the per-segment and per-connection paths rather than the per-byte
ones.  These peers are deliberately plain: one connection at a time, no
threads, so that what they add to each round trip is small and the same
whichever program sits between them (the figures that matter are the
ratios between programs, measured with the same peers).

- ``serve PORT LIFETIME``: a dual-stack echo server; each connection is
  echoed until end of file, then closed.  It exits after LIFETIME seconds
  whatever happens (``SIGALRM``), so it can never outlive the benchmark.
- ``rr HOST PORT SECONDS SIZE``: one connection (``TCP_NODELAY``); send SIZE
  bytes, wait for the SIZE-byte echo, repeat for SECONDS ("TCP_RR").
- ``crr HOST PORT SECONDS``: connect, one 1-byte exchange, close, repeat for
  SECONDS ("TCP_CRR").

Clients print one JSON line: ``{"count": N, "seconds": S}``.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time

CONNECT_TIMEOUT = 5.0


def serve(port: int, lifetime: int) -> None:
    signal.alarm(lifetime)
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(("::", port))
    server.listen(128)
    buf = bytearray(65536)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            echo(conn, memoryview(buf))


def echo(conn: socket.socket, buf: memoryview) -> None:
    try:
        while n := conn.recv_into(buf):
            conn.sendall(buf[:n])
    except ConnectionError:
        pass


def exchange(sock: socket.socket, message: bytes) -> None:
    """Send ``message``; return once as many bytes came back."""
    sock.sendall(message)
    left = len(message)
    while left:
        got = len(sock.recv(left))
        if not got:
            raise ConnectionError("echo server closed the connection")
        left -= got


def request_response(host: str, port: int, seconds: float, size: int) -> dict:
    message = b"x" * size
    with socket.create_connection((host, port), CONNECT_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        began = time.monotonic()
        deadline = began + seconds
        count = 0
        while time.monotonic() < deadline:
            exchange(sock, message)
            count += 1
        return {"count": count, "seconds": time.monotonic() - began}


def connect_request_close(host: str, port: int, seconds: float) -> dict:
    began = time.monotonic()
    deadline = began + seconds
    count = 0
    while time.monotonic() < deadline:
        with socket.create_connection((host, port), CONNECT_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            exchange(sock, b"x")
        count += 1
    return {"count": count, "seconds": time.monotonic() - began}


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "serve":
        serve(int(args[0]), int(args[1]))
        return 0
    if mode == "rr":
        result = request_response(args[0], int(args[1]), float(args[2]), int(args[3]))
    elif mode == "crr":
        result = connect_request_close(args[0], int(args[1]), float(args[2]))
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
