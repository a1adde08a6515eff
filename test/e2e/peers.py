"""Tiny servers and clients that say who they saw, run inside test namespaces.

``python3 peers.py serve SECONDS TCPPORT,... UDPPORT,...`` serves, dual-stack (or
``PORT@ADDR``: on that IPv4 address only), for
at most SECONDS: each TCP connection gets the peer's address and a newline,
then is closed; each UDP datagram is answered the same way.  Prints "ready".

``python3 peers.py ask PROTO:ADDR:PORT ...`` asks each (3 s each, at most) and
prints one JSON object: "PROTO:ADDR:PORT" → the answer, or "error: ...".
IPv6 addresses are written in brackets: ``tcp:[::1]:80``.

``python3 peers.py sha256 ADDR PORT BYTES`` sends BYTES of random data over TCP,
half-closes, and prints the SHA-256 of what was sent and of what came back.
``python3 peers.py udpsha256 ADDR PORT COUNT`` does the same with COUNT
datagrams of 1400 bytes, one at a time.  ``serve`` echoes on port 7 (TCP, UDP).

``python3 peers.py hold ADDR PORT SECONDS`` connects over TCP, prints
"connected", and then what became of the connection within SECONDS: "reset",
"eof" or "timeout".
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time

TIMEOUT = 3.0


def _shown(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


def _listener(kind: int, port: str) -> socket.socket:
    """Dual-stack on every address, or ``PORT@IPV4ADDR`` on that one (UDP answers
    then come from it, whatever the routes' preferred source)."""
    number, _, address = port.partition("@")
    s = socket.socket(socket.AF_INET if address else socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not address:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((address or "::", int(number)))
    return s


def _serve_tcp(port: str) -> None:
    s = _listener(socket.SOCK_STREAM, port)
    s.listen(16)
    while True:
        conn, peer = s.accept()
        threading.Thread(target=_answer, args=(conn, peer, port), daemon=True).start()


def _answer(conn: socket.socket, peer: tuple, port: str) -> None:
    """One connection, on its own thread: a reset ends it, not the server."""
    with conn:
        try:
            if port == "7":
                _echo(conn)
            else:
                conn.sendall(_shown(peer[0]).encode() + b"\n")
        except OSError:
            pass


def _echo(conn: socket.socket) -> None:
    conn.settimeout(30)
    for _ in range(1 << 16):
        data = conn.recv(1 << 16)
        if not data:
            return
        conn.sendall(data)


def _serve_udp(port: str) -> None:
    s = _listener(socket.SOCK_DGRAM, port)
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(data if port == "7" else _shown(peer[0]).encode() + b"\n", peer)


def serve(seconds: str, tcp: str, udp: str) -> None:
    for ports, target in ((tcp, _serve_tcp), (udp, _serve_udp)):
        for port in filter(None, ports.split(",")):
            threading.Thread(target=target, args=(port,), daemon=True).start()
    time.sleep(0.2)
    print("ready", flush=True)
    time.sleep(float(seconds))


def _split(target: str) -> tuple[str, str, int]:
    proto, _, rest = target.partition(":")
    host, _, port = rest.rpartition(":")
    return proto, host.strip("[]"), int(port)


def ask_one(target: str) -> str:
    proto, host, port = _split(target)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        with socket.socket(family, kind) as s:
            s.settimeout(TIMEOUT)
            s.connect((host, port))
            if proto == "udp":
                s.send(b"who?")
            return s.recv(512).decode().strip() or "error: closed"
    except OSError as e:
        return f"error: {e.strerror or type(e).__name__}"


def sha256(host: str, port: str, size: str) -> None:
    data = os.urandom(int(size))
    back = hashlib.sha256()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
        sender.start()
        for _ in range(1 << 20):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            back.update(chunk)
        sender.join(10)
    print(json.dumps({"sent": hashlib.sha256(data).hexdigest(), "back": back.hexdigest()}))


def udp_sha256(host: str, port: str, count: str) -> None:
    sent, back = hashlib.sha256(), hashlib.sha256()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.connect((host, int(port)))
        for _ in range(int(count)):
            data = os.urandom(1400)
            sent.update(data)
            s.send(data)
            back.update(s.recv(65536))
    print(json.dumps({"sent": sent.hexdigest(), "back": back.hexdigest()}))


def hold(host: str, port: str, seconds: str) -> None:
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        print("connected", flush=True)
        s.settimeout(float(seconds))
        try:
            print("eof" if not s.recv(1) else "data")
        except ConnectionResetError:
            print("reset")
        except TimeoutError:
            print("timeout")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "serve":
        serve(*args)
    elif command == "ask":
        print(json.dumps({t: ask_one(t) for t in args}))
    elif command == "hold":
        hold(*args)
    elif command == "udpsha256":
        udp_sha256(*args)
    else:
        sha256(*args)
