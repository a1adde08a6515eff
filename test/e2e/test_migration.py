"""Live migration of a guest between two QEMU 10 instances, each with its own passt.

Theory of operation: one world (world.py), and in its host namespace two
passts with ``--vhost-user`` (the source with ``--migrate-exit
--migrate-no-linger``, as upstream's own migration tests run it: both are on
one host, so the source must let go of its sockets for the target to bind
the same addresses), each with its ``passt-repair``, and two QEMU 10
instances under TCG with the guest's RAM in a shared memfd
(``MEMORY_MIB``): the source boots the guest, the target waits for it
(``-incoming``).  The guest opens, toward a peer program in the remote
namespace (migration_peer.py), an upload and a download of 16 MiB each
at a bounded pace (SHA-256 checked at the end; the guest paces its upload,
the peer its download), a ticker it echoes
(the downtime figure: the longest time no byte moved), an idle
interactive connection (one line before, one after) and a UDP flow (same
source port before and after).  Once the transfers are under way, QMP
``migrate`` moves the guest; then every connection must finish or answer
on the target, and the source passt must have exited with status 0.

Both passts share the host namespace, so between the source closing its
sockets (in repair mode: silently) and the target restoring them, a
segment from the peer (a window update, data) finds no socket and the
host's kernel answers it with a reset, which ends the connection for the
peer: a race of a few tens of milliseconds that a migration between two
hosts does not have (there the source keeps its sockets, in repair mode,
until the network has moved, upstream's default without
``--migrate-no-linger``).  So the test moves the network too: QEMU pauses
before the switch-over (capability ``pause-before-switchover``, the guest
stopped), the host's neighbour entry for the gateway is pointed at a
MAC nobody has (``_network_away``), the migration goes on, and once the
target runs the entry is resolved afresh.  Segments of that moment are
lost, as in a real migration, and retransmitted.

Cells: ours on both sides, and upstream 2026's passt and passt-repair on
one side with ours on the other, both ways: the device state format is
upstream's (doc/migration.md), so a guest can move between the two; and
upstream on both sides, the reference for the figures.  The
virtio features the guest negotiated must be offered on the target too
(QEMU checks): ours offers ``VIRTIO_NET_F_CSUM``, upstream does not, so the
mixed cells give the device ``csum=off``, as an administrator mixing the
two would.
Figures (downtime seen by the ticker, QEMU's own downtime, the time the
migration took) are printed and recorded as the test's properties.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from . import l2
from .daemon import Daemon
from .deploy import build_guest_image
from .guest import Guest
from .impl import UPSTREAM_2026, Impl, named
from .shell import Shell
from .world import V4, World

pytestmark = pytest.mark.e2e

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "migration_peer.py")
sys.path.insert(0, HERE)
import migration_peer  # noqa: E402  (the peer's ports and sizes, one definition)

MEMORY_MIB = 256  # the image needs little, and TCG copies every byte of it
MIGRATE_TIMEOUT = 180.0
TRANSFER_TIMEOUT = 240.0


@dataclass
class Side:
    """One passt (with its passt-repair) and the QEMU it serves."""

    passt: Daemon
    repair: Daemon
    guest: Guest


def _repair_argv(impl: Impl, path: str) -> list[str]:
    if impl.name == "upstream2026":
        return [os.path.join(os.path.abspath(UPSTREAM_2026), "passt-repair"), path]
    return [sys.executable, "-m", "passt.repair_helper", path]


def _start_side(world: World, impl: Impl, workdir: str, source: bool,
                device_options: str) -> Side:
    os.makedirs(workdir, exist_ok=True)
    sock = os.path.join(workdir, "passt.sock")
    options = ["-s", sock, "-1", "--vhost-user", "-t", "none", "-u", "none"]
    if source:
        options += ["--migrate-exit", "--migrate-no-linger"]
    passt = Daemon(impl.argv("passt", options), world.host_ns, os.path.join(workdir, "passt.log"))
    passt.start(lambda: os.path.exists(sock) and os.path.exists(sock + ".repair"))
    repair = Daemon(_repair_argv(impl, sock + ".repair"), world.host_ns,
                    os.path.join(workdir, "passt-repair.log"))
    repair.start(lambda: True)
    return Side(passt, repair, Guest(sock, workdir, "vhost-user", MEMORY_MIB, device_options))


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[World, Side, Side]]:
    source_impl, target_impl = request.param
    workdir = str(tmp_path)
    build_guest_image()
    world = World("mig", workdir).create()
    sides: list[Side] = []
    try:
        device = "" if source_impl == target_impl else ",csum=off"
        sides.append(_start_side(world, named(source_impl), os.path.join(workdir, "src"), True,
                                 device))
        sides.append(_start_side(world, named(target_impl), os.path.join(workdir, "tgt"), False,
                                 device))
        yield world, sides[0], sides[1]
    finally:
        for side in sides:
            for stop in (side.guest.shutdown, side.passt.stop, side.repair.stop):
                try:
                    stop()
                except Exception as e:  # noqa: BLE001 - teardown goes on
                    print(f"teardown: {e!r}")
        for side in sides:  # shown if the test failed
            print(side.passt.describe())
            print(side.repair.describe())
            print(side.guest.console()[-2000:])
        world.destroy()


def _wait_file(path: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{os.path.basename(path)} not reported in {timeout} s")
        time.sleep(0.2)
    with open(path) as f:
        result: dict[str, object] = json.load(f)
    return result


def _udp(shell: Shell, text: str) -> str:
    return shell.check(f"echo {text} | socat -t 5 - UDP4:{V4.remote}:"
                       f"{migration_peer.PORTS['udp']},sourceport=40003", timeout=30)


NOWHERE = "02:00:00:00:00:01"


@contextlib.contextmanager
def _network_away(host: Shell) -> Iterator[None]:
    """The host's frames to the gateway go nowhere (see the module docstring)."""
    host.check(f"ip neigh replace {V4.gateway} lladdr {NOWHERE} dev ext0 nud permanent")
    try:
        yield
    finally:
        host.check(f"ip neigh del {V4.gateway} dev ext0")


def _wait_migration(source: Guest, states: tuple[str, ...], deadline: float) -> dict[str, object]:
    while True:
        info: dict[str, object] = source.qmp_command("query-migrate")
        if info.get("status") in states:
            return info
        if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
            raise AssertionError(f"migration did not complete: {info}")
        time.sleep(0.01)


def _migrate(source: Guest, target: Guest, uri: str, host: Shell) -> dict[str, object]:
    """QMP ``migrate``, with the network moved at the switch-over; QEMU's figures."""
    began = time.monotonic()
    deadline = began + MIGRATE_TIMEOUT
    source.qmp_command("migrate-set-capabilities", capabilities=[
        {"capability": "pause-before-switchover", "state": True}])
    source.qmp_command("migrate", uri=uri)
    _wait_migration(source, ("pre-switchover",), deadline)
    with _network_away(host):
        source.qmp_command("migrate-continue", state="pre-switchover")
        info = _wait_migration(source, ("completed",), deadline)
        while target.qmp_command("query-status")["status"] != "running":
            if time.monotonic() > deadline:
                raise AssertionError("target did not start running")
            time.sleep(0.01)
    info["wall_seconds"] = time.monotonic() - began
    return info


CELLS = [("ours", "ours"), ("upstream2026", "ours"), ("ours", "upstream2026"), ("upstream2026", "upstream2026")]


@pytest.mark.parametrize("stack", CELLS, indirect=True, ids=["ours-ours", "u26-ours", "ours-u26", "u26-u26"])
def test_connections_survive_migration(stack, record_property) -> None:
    world, src, tgt = stack
    remote = world.remote
    remote.check(f"mkdir -p {remote.workdir}")
    peer_dir = remote.workdir
    remote.start(f"{sys.executable} {PEER} {peer_dir}", remote.path("peer.log"))
    _wait_file_exists(os.path.join(peer_dir, "ready"))

    guest = src.guest.boot().shell
    tgt.guest.listen_incoming(f"unix:{os.path.join(world.workdir, 'migration.sock')}")
    guest.check(f"cp /usr/share/udhcpc/default.script {guest.path(l2.UDHCPC_SCRIPT)}")
    l2.configure(guest)
    size_mib = migration_peer.SIZE >> 20
    guest.check(f"dd if=/dev/urandom of={guest.path('up.bin')} bs=1M count={size_mib} "
                "2>/dev/null", timeout=120)
    fifo = guest.path("idle.in")
    guest.check(f"mkfifo {fifo}")
    ports = migration_peer.PORTS
    guest.start(f"sh -c 'exec sleep 900 > {fifo}'", "/dev/null")
    guest.start(f"sh -c 'exec socat TCP4:{V4.remote}:{ports['echo']} - < {fifo}'",
                guest.path("idle.out"))
    guest.check(f"echo before > {fifo}")
    guest.wait_until(f"grep -q before {guest.path('idle.out')}", 30)
    assert "udp-before" in _udp(guest, "udp-before")
    guest.start(f"socat TCP4:{V4.remote}:{ports['ticker']} EXEC:cat", guest.path("tick.log"))
    up = guest.start(_paced_upload(guest.path("up.bin"), ports["sink"]), guest.path("up.log"))
    down = guest.start(f"socat -u TCP4:{V4.remote}:{ports['source']} "
                       f"CREATE:{guest.path('down.bin')}", guest.path("down.log"))
    for name in ("sink", "source"):  # the transfers are under way
        _wait_file_exists(os.path.join(peer_dir, f"{name}.started"), 60)

    info = _migrate(src.guest, tgt.guest, f"unix:{os.path.join(world.workdir, 'migration.sock')}",
                    world.host)
    shell = tgt.guest.take_over(src.guest)
    for name in ("sink.json", "source.json"):  # both were still moving at the switch
        assert not os.path.exists(os.path.join(peer_dir, name)), f"{name}: over too soon"

    assert shell.run(f"wait {up}", TRANSFER_TIMEOUT)[0] == 0
    assert shell.run(f"wait {down}", TRANSFER_TIMEOUT)[0] == 0
    sink = _wait_file(os.path.join(peer_dir, "sink.json"), 30)
    sent = _wait_file(os.path.join(peer_dir, "source.json"), 30)
    assert sink["sha256"] == _sha256(shell, shell.path("up.bin"))
    assert sent["sha256"] == _sha256(shell, shell.path("down.bin"))
    shell.check(f"echo after > {fifo}")
    shell.wait_until(f"grep -q after {shell.path('idle.out')}", 30)
    assert "udp-after" in _udp(shell, "udp-after")
    with open(os.path.join(peer_dir, "stop"), "w"):
        pass
    ticker = _wait_file(os.path.join(peer_dir, "ticker.json"), 30)

    assert src.passt.proc is not None
    assert src.passt.proc.wait(30) == 0, src.passt.describe()
    figures = {
        "downtime_ms": round(float(ticker["max_gap"]) * 1000),  # type: ignore[arg-type]
        "upload_gap_ms": round(float(sink["max_gap"]) * 1000),  # type: ignore[arg-type]
        "qemu_downtime_ms": info.get("downtime"),
        "migration_s": round(float(info["wall_seconds"]), 1),  # type: ignore[arg-type]
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"migration {src.passt.argv[0]} -> {tgt.passt.argv[0]}: {figures}")


UPLOAD_CHUNK = 64 << 10
UPLOAD_PAUSE_US = 20000


def _paced_upload(path: str, port: int) -> str:
    """The guest's upload, paced by the guest (a chunk, a pause): the socket's send
    queue stays short, as upstream's target needs (doc/migration.md)."""
    chunks = migration_peer.SIZE // UPLOAD_CHUNK
    return (f"sh -c 'i=0; while [ $i -lt {chunks} ]; do dd if={path} bs={UPLOAD_CHUNK} "
            f"skip=$i count=1 2>/dev/null; usleep {UPLOAD_PAUSE_US}; i=$((i + 1)); done "
            f"| socat -u - TCP4:{V4.remote}:{port}'")


def _wait_file_exists(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.1)


def _sha256(shell: Shell, path: str) -> str:
    return shell.check(f"sha256sum {path}", timeout=120).split()[0]
