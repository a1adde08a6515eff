"""Deployments: a world with passt and a booted guest, or pasta and a namespace.

Theory of operation: booting a guest under TCG costs seconds, so one
deployment serves every test of a configuration (a module-scoped fixture
holds it in a ``Stage``).  Sharing must not let one broken test break the
rest: after each test the stage checks the deployment (program alive,
guest alive, no shell left hung by a timeout, and no failed test: a
program that failed once may be left in any state) and rebuilds it if
needed, a bounded number of times.  A deployment that cannot be built at all is
not retried for every test: its error is kept and re-raised.

Teardown always runs to the end: QEMU is asked to quit over QMP, the
program is stopped, then the namespaces' processes are killed and the
namespaces deleted, each step guarded so that one failure cannot leave
the others undone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from . import l2, traffic
from .cells import FORWARDED, NS_FORWARDED, forward_options
from .daemon import Daemon
from .guest import GUEST_DIR, Guest
from .impl import Impl
from .shell import Shell, listening
from .world import IFNAME, V4, V6, World

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_BUILD = os.path.join(HERE, "..", "guest", "build.sh")
UDHCPC_SCRIPT = os.path.join(HERE, "..", "guest", "udhcpc.script")
MAX_REBUILDS = 40


@dataclass
class Deployment:
    """A running configuration: the world, the program, the inside shell."""

    world: World
    daemon: Daemon
    inner: Shell
    guest: Guest | None = None
    notes: list[str] = field(default_factory=list)
    tainted: bool = False  # a test failed on it: it may be in any state now

    def shells(self) -> list[Shell]:
        return [self.inner, self.world.host, self.world.remote]

    def healthy(self) -> bool:
        guest_alive = self.guest is None or (
            self.guest.child is not None and self.guest.child.isalive()
        )
        return (
            not self.tainted
            and self.daemon.alive()
            and guest_alive
            and not any(s.broken for s in self.shells())
        )

    def after_test(self) -> None:
        """Kill what the test left running."""
        for shell in self.shells():
            if not shell.broken:
                shell.kill_background()

    def diagnostics(self) -> list[tuple[str, str]]:
        """Report sections for a failing test: the program's log, the console."""
        sections = [(f"{self.daemon.argv[0]} log", self.daemon.describe())]
        if self.guest is not None:
            sections.append(("guest console", self.guest.console()[-3000:]))
        return sections

    def teardown(self) -> None:
        """Stop everything, each step guarded so that all of them run."""
        try:
            if self.guest is not None:
                self.guest.shutdown()
        finally:
            try:
                self.daemon.stop()
            finally:
                self.world.destroy()


class Stage:
    """Holds the deployment of one configuration across a module's tests."""

    def __init__(self, build: Callable[[], Deployment]) -> None:
        self._build = build
        self._current: Deployment | None = None
        self._error: Exception | None = None
        self._builds = 0
        self.notes: list[str] = []

    def get(self) -> Deployment:
        if self._current is not None and not self._current.healthy():
            self.close()
        if self._error is not None:
            raise self._error
        if self._current is None:
            if self._builds >= MAX_REBUILDS:
                self._error = RuntimeError(f"deployment broke {MAX_REBUILDS} times: giving up")
                raise self._error
            self._builds += 1
            try:
                self._current = self._build()
                self.notes += self._current.notes
            except Exception as e:
                self._error = e
                raise
        return self._current

    def close(self) -> None:
        """Tear the deployment down; a failure is noted, never passed to a test."""
        if self._current is not None:
            current, self._current = self._current, None
            try:
                current.teardown()
            except Exception as e:
                self.notes.append(f"teardown failed: {e!r}")


@functools.cache
def build_guest_image() -> None:
    """Build the guest image (test/guest/build.sh; cached on disk), once a run."""
    result = subprocess.run([GUEST_BUILD, GUEST_DIR], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"guest image build failed:\n{result.stdout}{result.stderr}")


@contextlib.contextmanager
def torn_down_on_error(deployment: Deployment) -> Iterator[None]:
    """Tear ``deployment`` down if what the block does to build it fails."""
    try:
        yield
    except BaseException:
        deployment.teardown()
        raise


def _prepare(shells: list[Shell]) -> None:
    for shell in shells:
        traffic.make_payloads(shell)


def deploy_passt(impl: Impl, workdir: str, backend: str = "stream",
                 env: Mapping[str, str] | None = None) -> Deployment:
    """A world, passt in its host namespace (``env`` added to its environment),
    a guest configured by DHCP/SLAAC, connected through ``backend``
    (guest.BACKENDS)."""
    world = World("passt" if backend == "stream" else "passt-vu", workdir).create()
    socket_path = os.path.join(workdir, "passt.sock")
    vhost_user = ["--vhost-user"] if backend == "vhost-user" else []
    options = ["-s", socket_path, "-1", *vhost_user, *forward_options("passt")]
    daemon = Daemon(impl.argv("passt", options), world.host_ns,
                    os.path.join(workdir, "passt.log"), env)
    deployment = Deployment(world, daemon, world.host)  # inner: the guest, once booted
    with torn_down_on_error(deployment):
        build_guest_image()
        daemon.start(lambda: os.path.exists(socket_path))
        deployment.guest = Guest(socket_path, workdir, backend)
        deployment.inner = shell = deployment.guest.boot().shell
        deployment.notes.append(
            f"passt started in {daemon.start_seconds:.1f} s; "
            f"guest booted in {deployment.guest.report.boot_seconds:.1f} s"
        )
        shell.check(f"cp /usr/share/udhcpc/default.script {shell.path(l2.UDHCPC_SCRIPT)}")
        l2.configure(shell)
        _prepare(deployment.shells())
    return deployment


def _ns_addresses_ready(netns: str) -> bool:
    result = subprocess.run(
        ["ip", "-n", netns, "addr", "show", "dev", IFNAME],
        capture_output=True, text=True, timeout=10,
    )
    out = result.stdout
    return f"{V4.host}/" in out and f"{V6.host}/" in out and "tentative" not in out


def _pasta_ready(world: World, inner: Shell, config_net: bool) -> bool:
    """pasta's namespace interface exists; configured and forwarding if asked to."""
    if not config_net:
        return inner.run(f"test -e /sys/class/net/{IFNAME}")[0] == 0
    return (
        _ns_addresses_ready(world.extra_ns[0])
        and listening(world.host, "tcp", FORWARDED.stream)
        and listening(inner, "tcp", NS_FORWARDED.stream)
    )


def deploy_pasta(
    impl: Impl, workdir: str, config_net: bool = True, start_timeout: float = 20.0,
    env: Mapping[str, str] | None = None,
) -> Deployment:
    """A world and pasta attached to a namespace of its own (``env`` added to
    its environment).

    With ``config_net`` pasta configures the namespace and forwards the
    matrix's ports; without it, the namespace configures itself by DHCP and
    SLAAC (the L2 checks) and nothing is forwarded.  ``start_timeout`` bounds
    pasta's start (longer under an emulated CPU: kernel_guest.py).
    """
    world = World("pasta" if config_net else "pasta-l2", workdir, extra=("ns",)).create()
    netns = world.extra_ns[0]
    if config_net:
        options = ["--config-net", *forward_options("pasta")]
    else:
        # pasta hands out DNS servers by DHCP only when asked to.
        options = ["--dhcp-dns", "-t", "none", "-u", "none", "-T", "none", "-U", "none"]
    argv = impl.argv("pasta", [*options, "--netns", f"/run/netns/{netns}"])
    daemon = Daemon(argv, world.host_ns, os.path.join(workdir, "pasta.log"), env)
    deployment = Deployment(world, daemon, world.host)  # inner: the namespace's shell
    with torn_down_on_error(deployment):
        deployment.inner = inner = world.shell(netns, "ns")
        daemon.start(functools.partial(_pasta_ready, world, inner, config_net), start_timeout)
        deployment.notes.append(f"pasta ready in {daemon.start_seconds:.1f} s")
        if not config_net:
            shutil.copy(UDHCPC_SCRIPT, inner.path(l2.UDHCPC_SCRIPT))
            l2.configure(inner)
        _prepare(deployment.shells())
    return deployment
