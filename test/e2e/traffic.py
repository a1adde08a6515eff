"""Traffic checks run on a cell's path: iperf3, a stream exchange, a datagram echo.

Theory of operation: each check starts a server in the background on one
shell, waits until its socket shows up in ``/proc/net`` (never sleeps on
hope), runs the client in the foreground on the other, and compares what
arrived with what was sent by SHA-256, computed on both ends by their own
``sha256sum``.  Every program runs under ``timeout`` and socat's own
inactivity timeouts, so a check that hangs ends by itself.

- ``iperf3``: 3 s of traffic from client to server; the receiver's
  throughput is returned for the summary and never asserted.
- ``stream_exchange`` (TCP): the client sends PAYLOAD_BYTES and shuts down
  its writing side; the server reads to end-of-file and only then sends
  its own PAYLOAD_BYTES back, and closes.  That is a bulk transfer both
  ways and a half-close check at once: the server's reply exists only if
  the client's FIN arrived, and the client receives it only if the
  half-closed connection still carries data the other way.
- ``datagram_echo`` (UDP): DGRAM_COUNT datagrams of DGRAM_SIZE bytes to an
  echo server; the echoes, in order, must be what was sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .cells import Cell, Path, path
from .shell import Shell, sha256, wait_listening
from .world import World

PAYLOAD_BYTES = 4 * 1024 * 1024
DGRAM_SIZE = 1400
DGRAM_COUNT = 24
IPERF_SECONDS = 3
STREAM_TX, STREAM_RX = "stream-tx", "stream-rx"
DGRAM_TX, DGRAM_RX = "dgram-tx", "dgram-rx"


class TrafficError(AssertionError):
    """Traffic did not arrive as sent."""


def make_payloads(shell: Shell) -> None:
    """Random payload files in ``shell``'s working directory."""
    shell.check(f"mkdir -p {shell.workdir}")
    shell.check(f"head -c {PAYLOAD_BYTES} /dev/urandom > {shell.path(STREAM_TX)}")
    shell.check(f"head -c {DGRAM_SIZE * DGRAM_COUNT} /dev/urandom > {shell.path(DGRAM_TX)}")


def socat_listen(p: Path, proto: str, port: int) -> str:
    """socat address on which the server of ``p`` listens, e.g. TCP6-LISTEN:..."""
    return f"{proto.upper()}{p.family.version}-LISTEN:{port},bind={p.family.url_host(p.bind)}"


def socat_peer(p: Path, proto: str, port: int) -> str:
    """socat address the client of ``p`` dials, e.g. UDP4:203.0.113.1:10002."""
    return f"{proto.upper()}{p.family.version}:{p.family.url_host(p.target)}:{port}"


def start_server(shell: Shell, what: str, command: str, proto: str, port: int) -> tuple[int, str]:
    """Start a server in the background, wait until it listens; its PID and log."""
    log = shell.path(f"{what}-server.log")
    pid = shell.start(command, log)
    wait_listening(shell, proto, port)
    return pid, log


def _finish_server(shell: Shell, pid: int, log: str, timeout: float) -> None:
    status = shell.wait(pid, timeout)
    if status != 0:
        _, output = shell.run(f"cat {log}")
        raise TrafficError(f"{shell.name}: server exited {status}:\n{output}")


@dataclass(frozen=True)
class Throughput:
    mbits: float
    text: str  # e.g. "312 Mbit/s" or "95 Mbit/s, 3% lost"


_RECEIVER = re.compile(r"([\d.]+) Mbits/sec.*?(?:\((\d+(?:\.\d+)?)%\))?\s+receiver")


def parse_iperf3(output: str) -> Throughput:
    """The receiver's throughput from iperf3 client output (``-f m``)."""
    match = _RECEIVER.search(output)
    if not match:
        raise TrafficError(f"no receiver summary in iperf3 output:\n{output}")
    mbits = float(match.group(1))
    text = f"{mbits:.0f} Mbit/s"
    if match.group(2) is not None:
        text += f", {match.group(2)}% lost"
    return Throughput(mbits, text)


def iperf3(p: Path, proto: str) -> Throughput:
    """iperf3 from client to server over ``p``; the measured throughput."""
    pid, log = start_server(
        p.server, "iperf3", f"timeout 30 iperf3 -s -1 -B {p.bind} -p {p.ports.iperf}",
        "tcp", p.ports.iperf,
    )
    udp = " -u -b 1G" if proto == "udp" else ""
    status, output = p.client.run(
        f"timeout 15 iperf3 -c {p.target} -p {p.ports.iperf} -t {IPERF_SECONDS} -f m"
        f" --connect-timeout 5000{udp}",
        timeout=30,
    )
    if status != 0:
        _, server_output = p.server.run(f"cat {log}")
        raise TrafficError(
            f"iperf3 client exited {status}:\n{output}\nserver:\n{server_output}"
        )
    _finish_server(p.server, pid, log, timeout=20)
    return parse_iperf3(output)


def stream_exchange(p: Path) -> None:
    """Bulk data both ways over one TCP connection, with a half-close between."""
    srv, cli = p.server, p.client
    reply = f"cat > {srv.path(STREAM_RX)}; cat {srv.path(STREAM_TX)}"
    listen = socat_listen(p, "tcp", p.ports.stream)
    srv.check(f"rm -f {srv.path(STREAM_RX)}")
    pid, log = start_server(
        srv, "stream", f"timeout 25 socat -t 15 -T 10 {listen},reuseaddr SYSTEM:'{reply}'",
        "tcp", p.ports.stream,
    )
    status, output = cli.run(
        f"timeout 20 socat -t 15 -T 10 - {socat_peer(p, 'tcp', p.ports.stream)} "
        f"< {cli.path(STREAM_TX)} > {cli.path(STREAM_RX)}",
        timeout=40,
    )
    if status != 0:
        raise TrafficError(f"socat client exited {status}: {output} ({_sizes(srv, cli)})")
    _finish_server(srv, pid, log, timeout=35)
    if sha256(srv, srv.path(STREAM_RX)) != sha256(cli, cli.path(STREAM_TX)):
        raise TrafficError(f"client -> server data differs: {_sizes(srv, cli)}")
    if sha256(cli, cli.path(STREAM_RX)) != sha256(srv, srv.path(STREAM_TX)):
        raise TrafficError(
            "server -> client data after the client's half-close differs "
            f"(was the FIN forwarded? does the other direction still flow?): {_sizes(srv, cli)}"
        )


def _sizes(server: Shell, client: Shell) -> str:
    def size(shell: Shell, name: str) -> str:
        status, output = shell.run(f"wc -c < {shell.path(name)}")
        return output.strip() if status == 0 else "missing"

    return (
        f"server received {size(server, STREAM_RX)} bytes, "
        f"client received {size(client, STREAM_RX)} bytes, of {PAYLOAD_BYTES} each way"
    )


def datagram_echo(p: Path) -> None:
    """DGRAM_COUNT datagrams to an echo server; the echoes must match them."""
    srv, cli = p.server, p.client
    listen = socat_listen(p, "udp", p.ports.dgram)
    start_server(
        srv, "dgram", f"timeout 30 socat -b {DGRAM_SIZE} -T 10 {listen} PIPE", "udp", p.ports.dgram
    )
    status, output = cli.run(
        f"timeout 15 socat -b {DGRAM_SIZE} -t 2 -T 10 - {socat_peer(p, 'udp', p.ports.dgram)} "
        f"< {cli.path(DGRAM_TX)} > {cli.path(DGRAM_RX)}",
        timeout=30,
    )
    srv.kill_background()
    if status != 0:
        raise TrafficError(f"socat datagram client exited {status}:\n{output}")
    sent, echoed = sha256(cli, cli.path(DGRAM_TX)), sha256(cli, cli.path(DGRAM_RX))
    if sent != echoed:
        _, size = cli.run(f"wc -c < {cli.path(DGRAM_RX)}")
        raise TrafficError(
            f"echoed datagrams differ from those sent: {size.strip()} of "
            f"{DGRAM_SIZE * DGRAM_COUNT} bytes came back"
        )


def data_check(p: Path, proto: str) -> None:
    """The data check of ``proto`` over ``p``: the TCP exchange or the UDP echo."""
    if proto == "tcp":
        stream_exchange(p)
    else:
        datagram_echo(p)


def run_cell(cell: Cell, world: World, inner: Shell, address: str | None = None) -> Throughput:
    """All checks of one direction cell; the iperf3 throughput.  ``address``:
    the inner end's own, where it is not the host's (cells.path)."""
    p = path(cell, world, inner, address)
    throughput = iperf3(p, cell.proto)
    data_check(p, cell.proto)
    return throughput
