"""QEMU killed in the middle of transfers: passt serves the next one, or leaves.

Theory of operation: a QEMU that dies (SIGKILL: no goodbye) while bulk data
flows both ways through passt leaves passt with half-written frames in its
send queue and connections whose guest vanished.  Without ``--one-off``
passt must stay up and serve the next QEMU on the same socket as well as
the first (a booted guest that gets its lease and moves data both ways);
with ``--one-off`` it must exit, status 0.

The transfer is iperf3 in both directions at once (``--bidir``) between
the guest and the remote namespace, and QEMU is killed once data has
flowed both ways for a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from . import impl, l2, traffic
from .cells import REMOTE_PORTS, Cell, cell_id, forward_options
from .daemon import Daemon
from .deploy import build_guest_image
from .guest import Guest
from .shell import Shell, wait_listening
from .world import V4, World

pytestmark = pytest.mark.e2e

BUSY_SECONDS = 3
FLOW_TIMEOUT = 60.0
EXIT_TIMEOUT = 15.0


@dataclass
class Setup:
    world: World
    daemon: Daemon
    socket_path: str
    workdir: str

    def boot(self, name: str) -> Guest:
        """A guest on passt's socket, configured by DHCP and SLAAC."""
        workdir = os.path.join(self.workdir, name)
        os.makedirs(workdir)
        guest = Guest(self.socket_path, workdir).boot()
        shell = guest.shell
        shell.check(f"cp /usr/share/udhcpc/default.script {shell.path(l2.UDHCPC_SCRIPT)}")
        l2.configure(shell)
        return guest

    def teardown(self) -> None:
        try:
            self.daemon.stop()
        finally:
            self.world.destroy()


def start_passt(chosen: impl.Impl, workdir: str, one_off: bool) -> Setup:
    build_guest_image()
    world = World("reconnect", workdir).create()
    socket_path = os.path.join(workdir, "passt.sock")
    options = ["-s", socket_path, *(["-1"] if one_off else []), *forward_options("passt")]
    daemon = Daemon(chosen.argv("passt", options), world.host_ns,
                    os.path.join(workdir, "passt.log"))
    setup = Setup(world, daemon, socket_path, workdir)
    try:
        daemon.start(lambda: os.path.exists(socket_path))
    except BaseException:
        setup.teardown()
        raise
    return setup


@pytest.fixture
def passt_setup(
    request: pytest.FixtureRequest, chosen_impl: impl.Impl,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    one_off = request.node.callspec.params["cell"].name.endswith("one_off")
    setup = start_passt(chosen_impl, str(tmp_path_factory.mktemp("reconnect")), one_off)
    request.node.e2e_deployment = _Diagnostics(setup)
    yield setup
    setup.teardown()


class _Diagnostics:
    """What conftest's report hook prints when a test here fails."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def diagnostics(self) -> list[tuple[str, str]]:
        return [("passt log", self.setup.daemon.describe())]


_INTERVAL = re.compile(r"\[(RX|TX)-S\]\s+\S+\s+sec\s+([\d.]+) MBytes")


def busy_intervals(server_log: str) -> dict[str, int]:
    """Per direction, the one-second intervals in which the server moved data."""
    counts = {"RX": 0, "TX": 0}
    for direction, mbytes in _INTERVAL.findall(server_log):
        counts[direction] += float(mbytes) > 0
    return counts


def transfers_in_flight(world: World, guest: Shell) -> None:
    """Bulk data both ways through passt (iperf3 --bidir from the guest), flowing
    for a few seconds.  Progress is read from the remote end's log: the guest's
    console is too slow under load to be asked."""
    log = world.remote.path("iperf3-bidir.log")
    world.remote.start(
        f"timeout 120 iperf3 -s -1 -B {V4.remote} -p {REMOTE_PORTS.iperf} -i 1 -f m", log)
    wait_listening(world.remote, "tcp", REMOTE_PORTS.iperf)
    guest.start(f"timeout 120 iperf3 -c {V4.remote} -p {REMOTE_PORTS.iperf} -t 90 --bidir",
                guest.path("iperf3-bidir.log"))
    deadline = time.monotonic() + FLOW_TIMEOUT
    while True:
        counts = busy_intervals(world.remote.check(f"cat {log}"))
        if min(counts.values()) >= BUSY_SECONDS:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"transfers did not get going: {counts}")
        time.sleep(0.5)


def kill_qemu(guest: Guest) -> None:
    """SIGKILL, then the harness's clean-up (its QMP connection is dead: EOF)."""
    assert guest.child is not None
    os.kill(guest.child.pid, signal.SIGKILL)
    with contextlib.suppress(EOFError, ConnectionError):
        guest.shutdown(timeout=5)


@pytest.mark.parametrize("cell", [Cell("passt", "qemu_killed_next_guest", "tcp", 4)],
                         ids=cell_id)
def test_next_guest_is_served_after_qemu_is_killed(cell: Cell, passt_setup: Setup) -> None:
    world = passt_setup.world
    first = passt_setup.boot("first")
    try:
        transfers_in_flight(world, first.shell)
    finally:
        kill_qemu(first)
    world.remote.kill_background()
    time.sleep(1)
    assert passt_setup.daemon.alive(), passt_setup.daemon.describe()

    second = passt_setup.boot("second")
    try:
        for shell in (second.shell, world.host, world.remote):
            traffic.make_payloads(shell)
        for direction, proto in (("in", "tcp"), ("out", "udp")):
            plain = Cell("passt", direction, proto, 4)
            print(f"second guest, {plain.label}: "
                  f"{traffic.run_cell(plain, world, second.shell).text}")
    finally:
        second.shutdown()
    assert passt_setup.daemon.alive(), "passt left when the second guest did (no --one-off)"


@pytest.mark.parametrize("cell", [Cell("passt", "qemu_killed_one_off", "tcp", 4)],
                         ids=cell_id)
def test_one_off_passt_exits_when_qemu_is_killed(cell: Cell, passt_setup: Setup) -> None:
    guest = passt_setup.boot("only")
    try:
        transfers_in_flight(passt_setup.world, guest.shell)
    finally:
        kill_qemu(guest)
    proc = passt_setup.daemon.proc
    assert proc is not None
    deadline = time.monotonic() + EXIT_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    status = proc.poll()
    assert status == 0, f"passt --one-off: {passt_setup.daemon.describe()}"
