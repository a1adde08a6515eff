"""Large TCP transfers checked by SHA-256: concurrent exchanges, readers that pause.

Theory of operation: the checks run on a cell's ``Path`` (cells.py), with
the same tools in a guest (busybox, socat) and in a namespace, so they are
written once as shell commands.  Every program runs under ``timeout``: a
stalled transfer ends by itself and shows up as a short count or a wrong
digest, never as a hang.

- ``concurrent_exchanges``: the server (socat with ``fork``) serves
  ``count`` connections at once; on each, the client sends a random file
  of ``size`` bytes and shuts down its writing side, the server stores
  what it received and only then sends its own file back.  Both ends then
  compare each received file's size and SHA-256 with the file sent: bulk
  data both ways on every connection, a half-close between, and
  ``count`` connections' worth of data in flight at once.
- ``paused_downloads``: the server sends a file of ``size`` bytes to each
  reader; each reader takes 1 MiB, stops reading for its pause (its
  receive buffer fills, it advertises a zero window for the whole pause),
  then reads the rest.  Each reports the byte count and SHA-256 of the
  whole stream.  Readers run concurrently, so one test waits for the
  longest pause only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cells import Path
from .shell import Shell, sha256
from .traffic import TrafficError, socat_listen, socat_peer, start_server

MIB = 1 << 20
BULK_TX, BULK_RX = "bulk-tx", "bulk-rx"
TRANSFER_TIMEOUT = 180  # seconds: 4 x 16 MiB each way take 25 s in a TCG guest; a guard against hangs
PAUSE_HEAD = MIB  # what a paused reader takes before its pause


def make_file(shell: Shell, name: str, size: int) -> str:
    """A random file of ``size`` bytes in ``shell``'s working directory; its SHA-256."""
    shell.check(f"mkdir -p {shell.workdir}")
    shell.check(f"head -c {size} /dev/urandom > {shell.path(name)}", timeout=120)
    return sha256(shell, shell.path(name))


@dataclass(frozen=True)
class Received:
    """What one end received on one connection."""

    size: int
    digest: str


def received(shell: Shell, pattern: str) -> dict[str, Received]:
    """Size and SHA-256 of each file matching ``pattern`` (a glob in the workdir)."""
    files = shell.path(pattern)
    sizes = shell.check(f"for f in {files}; do [ -e \"$f\" ] && wc -c < \"$f\"; done; true")
    digests = shell.check(f"for f in {files}; do [ -e \"$f\" ] && sha256sum \"$f\"; done; true",
                          timeout=120)
    names = [line.split()[1] for line in digests.splitlines() if line.strip()]
    hashes = [line.split()[0] for line in digests.splitlines() if line.strip()]
    counts = [int(n) for n in sizes.split()]
    return {name: Received(n, h) for name, n, h in zip(names, counts, hashes, strict=True)}


def _check_all(what: str, got: dict[str, Received], count: int, size: int, digest: str) -> None:
    wrong = {name: r for name, r in got.items() if (r.size, r.digest) != (size, digest)}
    if len(got) != count or wrong:
        sizes = ", ".join(f"{r.size}" for r in got.values())
        raise TrafficError(
            f"{what}: {len(got)} of {count} connections received their data, "
            f"{len(wrong)} wrong; sizes received: [{sizes}] of {size} each"
        )


def concurrent_exchanges(p: Path, count: int, size: int) -> None:
    """``count`` connections at once, each ``size`` bytes each way (see above)."""
    srv, cli = p.server, p.client
    sent = {shell.name: make_file(shell, BULK_TX, size) for shell in (srv, cli)}
    for shell in (srv, cli):
        shell.check(f"rm -f {shell.path(BULK_RX)}.*")
    reply = f"cat > {srv.path(BULK_RX)}.$$; cat {srv.path(BULK_TX)}"
    socat = f"timeout {TRANSFER_TIMEOUT} socat -t {TRANSFER_TIMEOUT} -T 60"
    start_server(srv, "bulk", f"{socat} {socat_listen(p, 'tcp', p.ports.stream)},reuseaddr,fork "
                 f"SYSTEM:'{reply}'", "tcp", p.ports.stream)
    clients = [
        cli.start(f"( {socat} - {socat_peer(p, 'tcp', p.ports.stream)} "
                  f"< {cli.path(BULK_TX)} > {cli.path(BULK_RX)}.{i} )", cli.path(f"bulk-{i}.log"))
        for i in range(count)
    ]
    statuses = [cli.wait(pid, TRANSFER_TIMEOUT + 20) for pid in clients]
    srv.kill_background()
    try:
        _check_all(f"{srv.name} (server)", received(srv, f"{BULK_RX}.*"), count, size,
                   sent[cli.name])
        _check_all(f"{cli.name} (client)", received(cli, f"{BULK_RX}.*"), count, size,
                   sent[srv.name])
    except TrafficError as e:
        _, logs = cli.run(f"cat {cli.path('bulk-*.log')}")
        raise TrafficError(f"{e}\nclients exited {statuses}:\n{logs[-2000:]}") from None
    if any(statuses):
        raise TrafficError(f"socat clients exited {statuses} though their data arrived")


def paused_reader(p: Path, name: str, pause: int) -> str:
    """The command of a reader that pauses for ``pause`` seconds after PAUSE_HEAD bytes
    and writes the byte count and SHA-256 of the whole stream to ``name``.count and .sum."""
    c = p.client
    fifo, count, digest = (c.path(f"{name}.{ext}") for ext in ("fifo", "count", "sum"))
    source = f"timeout {TRANSFER_TIMEOUT + pause} socat -u {socat_peer(p, 'tcp', p.ports.stream)} -"
    pausing = (f"{{ dd bs={PAUSE_HEAD} count=1 iflag=fullblock 2>/dev/null; "
               f"sleep {pause}; cat; }}")
    return (f"( rm -f {fifo}; mkfifo {fifo}; wc -c < {fifo} > {count} & "
            f"{source} | {pausing} | tee {fifo} | sha256sum > {digest}; wait )")


def paused_downloads(p: Path, size: int, pauses: tuple[int, ...]) -> list[Received]:
    """One download of ``size`` bytes per pause, at once; what each reader received."""
    srv, cli = p.server, p.client
    sent = make_file(srv, BULK_TX, size)
    # No inactivity timeout (-T): the server is blocked for the whole pause.
    start_server(srv, "paused", f"timeout {TRANSFER_TIMEOUT + max(pauses)} socat -U "
                 f"{socat_listen(p, 'tcp', p.ports.stream)},reuseaddr,fork "
                 f"OPEN:{srv.path(BULK_TX)},rdonly", "tcp", p.ports.stream)
    names = [f"paused-{pause}" for pause in pauses]
    readers = [cli.start(paused_reader(p, name, pause), cli.path(f"{name}.log"))
               for name, pause in zip(names, pauses, strict=True)]
    for pid, pause in zip(readers, pauses, strict=True):
        cli.wait(pid, TRANSFER_TIMEOUT + pause + 20)
    srv.kill_background()
    results = [
        Received(int(cli.check(f"cat {cli.path(name)}.count").strip() or 0),
                 cli.check(f"cat {cli.path(name)}.sum").split()[0])
        for name in names
    ]
    for pause, r in zip(pauses, results, strict=True):
        print(f"reader paused {pause} s after {PAUSE_HEAD} bytes: received {r.size} bytes, "
              f"sha256 {r.digest[:16]}...")
    wrong = [(pause, r.size) for pause, r in zip(pauses, results, strict=True)
             if (r.size, r.digest) != (size, sent)]
    if wrong:
        raise TrafficError(f"readers (pause s, bytes) that did not get all {size} bytes "
                           f"intact: {wrong}")
    return results
