"""Start-up, run and tear-down of passt and pasta: the order of things.

Theory of operation
-------------------
Both programs go through the same stages; only the tap side differs.

1. *Host discovery* (``hostnet.discover``): what the guest will be told,
   read while we still see the host's network namespace.
2. *Files named on the command line* (PID file, pcap, ``-c``'s socket) are opened now: once
   isolated we could not open them any more, and an unwritable path must be
   refused before anything starts.
3. *Daemonizing* forks before any thread exists (pasta's namespace helper is
   a thread).  The parent waits and exits 0 only when the child says it is
   ready: libvirt treats passt's exit status as "the socket listens".
4. *The tap side*: passt listens on its UNIX socket (``qemu``), pasta creates
   or joins the namespace and its tap device (``netns``).
5. *Handlers*: the forwarder (listening sockets, spliced paths) first, then
   the protocol handlers, each registering itself in ``Ctx``; ``--no-tcp``
   and friends simply leave a handler out of the dispatcher's table.
6. *Ready*: the parent is released, pasta's command may start.
7. *Isolation* (``isolation``), then the event loop runs until a signal
   (``STOP_SIGNALS``: exit status 0), the command's exit, the namespace's
   disappearance or (``--one-off``) the client's departure says stop.
8. *Tear-down* in reverse order; the exit status is the loop's.  The
   protocol handlers close before the tap is detached, so that the guest's
   TCP connections are reset, not left hanging; passt's socket and the PID
   file are removed.

Every stage raises its own one-line exception type on failure; ``cli``
prints it and exits 1 (``STARTUP_ERRORS``).
"""

from __future__ import annotations

import functools
import gc
import resource
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

from passt import checksum, log
from passt.backends.dispatch import Dispatcher, SourceFilter
from passt.backends.tap import PASTA_VNET_HDR, TunTap
from passt.context import Ctx
from passt.errors import StartupError
from passt.flow import fwd, icmp
from passt.flow.table import FlowTable
from passt.host import daemon, hostnet, isolation
from passt.host.daemon import PidFile, Readiness
from passt.host.hostnet import NetInfo
from passt.l2 import arp, dhcp, dhcpv6, ndp
from passt.loop import EventLoop
from passt.pcap import Pcap
from passt.tcp import splice as tcp_splice
from passt.tcp import tap as tcp
from passt.udp import splice as udp_splice
from passt.udp import tap as udp

# What only some runs need is imported by the function that needs it, at
# start-up (before isolation, after which nothing can be imported), and
# nowhere else: pasta never uses QEMU's socket or vhost-user, passt never a
# namespace, and the control socket exists only with -c.  Together about a
# quarter of our import time.  test/unit/test_layout.py allows these imports
# in functions, and only these, only here.
LAZY_MODULES = ("passt.backends.qemu", "passt.control_socket.server", "passt.host.netns",
                "passt.migrate.device")

# Exceptions whose message is the one line a user sees before exit status 1.
STARTUP_ERRORS: tuple[type[Exception], ...] = (StartupError, OSError)

# Flows per descriptor budget: every flow owns at most two descriptors (a
# spliced connection: two sockets; pipes come from a pool), and some are
# kept for listeners, the tap and pools.
RESERVED_FDS = 128


def _handler_table(conf: Any) -> dict[str, ModuleType]:
    """Route name → handler module, leaving out what the options disable."""
    optional = (("tcp", tcp, conf.no_tcp), ("udp", udp, conf.no_udp), ("icmp", icmp, conf.no_icmp),
                ("dhcp", dhcp, conf.no_dhcp), ("dhcpv6", dhcpv6, conf.no_dhcpv6),
                ("ndp", ndp, conf.no_ndp))
    table: dict[str, ModuleType] = {route: module for route, module, off in optional if not off}
    table["arp"] = arp
    return table


def setup_forwarding(ctx: Ctx, ns_call: Callable[..., Any] | None) -> None:
    """``ctx.fwd`` and, for pasta (``ns_call``), the spliced paths."""
    fwd.setup(ctx, ns_call)
    if ns_call is not None:
        tcp_splice.setup(ctx, ns_call)
        udp_splice.setup(ctx, ns_call)


def max_flows() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return max(16, (soft - RESERVED_FDS) // 2)


class Runtime:
    """One run of passt or pasta: the context, the handlers, the tap side."""

    def __init__(self, conf: Any) -> None:
        self.conf = conf
        self.net: NetInfo = hostnet.discover(conf)
        self.pidfile = PidFile.open(conf.pid) if conf.pid else None
        self.pcap = Pcap.open(conf.pcap) if conf.pcap else None
        self.control = _bind_control(conf.conf_path) if conf.conf_path else None
        self.loop = EventLoop()
        self.ctx = Ctx(
            conf=conf, net=self.net, loop=self.loop, flows=FlowTable(max_flows()), pcap=self.pcap
        )
        self.handlers = _handler_table(conf)
        self.dispatcher: Dispatcher | None = None
        self._cleanups: list[Callable[[], None]] = []

    # -- stages --------------------------------------------------------------

    def daemonize(self, detach: bool) -> Readiness:
        if detach:
            return daemon.daemonize(self.pidfile)
        return daemon.foreground(self.pidfile)

    def start_handlers(self, ns_call: Callable[..., Any] | None) -> None:
        """Forwarder, then protocol handlers, then the dispatcher."""
        setup_forwarding(self.ctx, ns_call)
        self._cleanups.append(lambda: fwd.close(self.ctx))
        self._cleanups.append(self._detach)   # after the handlers' resets went out
        for handler in dict.fromkeys(self.handlers.values()):
            init = getattr(handler, "init", None)
            if init is not None:
                init(self.ctx)
            close = getattr(handler, "close", None)
            if close is not None:
                self._cleanups.append(functools.partial(close, self.ctx))
        fwd.start(self.ctx)
        if self.control is not None:  # -c: pesto's socket, serving the tables just opened
            from passt.control_socket import server as control_server
            self._cleanups.append(control_server.setup(self.ctx, self.control,
                                                       self.conf.conf_path).close)
        self.dispatcher = Dispatcher(self.ctx, self.handlers, SourceFilter.for_guest(self.net))

    def _detach(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.detach()

    def run_loop(self) -> int:
        settle_gc()
        if self.conf.stats is not None:
            show_stats(self.loop, self.ctx.stats, self.conf.stats)
        status = self.loop.run()
        log.debug("event loop stopped, status %d", status)
        return status

    def close(self) -> None:
        """Undo the stages in reverse order; every step runs even if one fails."""
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - tear-down must finish
                log.debug("tear-down step failed: %s", exc)
        if self.pcap is not None:
            self.pcap.close()
        if self.pidfile is not None:
            self.pidfile.remove()
        self.loop.close()


def _bind_control(path: str) -> socket.socket:
    from passt.control_socket import server as control_server
    return control_server.bind(path)


def run_pasta(conf: Any) -> int:
    from passt.host import netns
    rt = Runtime(conf)
    readiness = rt.daemonize(netns.daemonizes(conf))
    try:
        ns = netns.setup_pasta(conf, rt.net, rt.loop)
        stop_on_signals(rt.loop)
        rt.ctx.netns = ns
        rt._cleanups.append(ns.teardown)
        rt.ctx.partial_csum = PASTA_VNET_HDR and rt.pcap is None
        rt.start_handlers(ns.runner.call)
        assert rt.dispatcher is not None
        rt.dispatcher.attach(TunTap(ns.tap_fd, vnet_hdr=PASTA_VNET_HDR,
                                    partial_csum=rt.ctx.partial_csum, owns_fd=False))
        readiness.ready()
        ns.start_command()
        if rt.ctx.partial_csum:
            checksum.without_numpy()
        else:
            checksum.load_numpy()  # after readiness (not on start-up's path), before isolation
        isolation.isolate(conf, "pasta", ns.runner, ns.child_pid is not None)  # stage 7
        return rt.run_loop()
    finally:
        rt.close()


def run_passt(conf: Any) -> int:
    """passt: ``qemu.listen(conf)`` gives a listener with ``start(loop, on_client)``,
    ``resume()`` (accept the next client) and ``close()``; a client is a ``TapBackend``."""
    from passt.backends import qemu
    rt = Runtime(conf)
    listener = qemu.listen(conf)
    rt._cleanups.append(listener.close)
    readiness = rt.daemonize(not conf.foreground)
    migrated = False  # the guest went elsewhere: --one-off no longer applies (upstream's way)
    try:
        rt.start_handlers(None)
        dispatcher = rt.dispatcher
        assert dispatcher is not None

        def on_client(backend: Any) -> None:
            dispatcher.attach(backend, on_hangup=on_hangup)

        def on_hangup() -> None:
            dispatcher.detach()
            if conf.one_off and not migrated:
                rt.loop.stop(0)
            else:
                listener.resume()

        def on_migrated() -> None:
            nonlocal migrated
            migrated = True
            if conf.migrate_exit:
                log.info("Migration complete, exiting")
                rt.loop.stop(0)

        if conf.vhost_user:
            from passt.migrate import device as migrate
            listener.migration = migrate.setup(rt.ctx, conf, listener.path, on_migrated)
            rt._cleanups.append(functools.partial(migrate.close, listener.migration))

        listener.start(rt.loop, on_client, rt.ctx.stats)
        stop_on_signals(rt.loop)
        readiness.ready()
        checksum.load_numpy()  # after readiness (not on start-up's path), before isolation
        isolation.isolate(conf, "passt")  # stage 7: host/isolation.py
        return rt.run_loop()
    finally:
        rt.close()


def settle_gc() -> None:
    """Start-up is over: what it made lives until exit, so the cyclic collector
    need not walk it again (``gc.freeze``); the launchers kept the collector
    off during start-up (``gc.disable``), it runs again from now on."""
    gc.freeze()
    gc.enable()


STATS_MIN_INTERVAL = 1.0     # --stats 0: still at most once a second


def show_stats(loop: EventLoop, stats: Counter[str], delay: int) -> None:
    """``--stats DELAY``: the event counters on stderr every DELAY seconds (as
    upstream 2026 prints its event table, in the foreground only)."""
    interval = max(float(delay), STATS_MIN_INTERVAL)

    def tick() -> None:
        counts = " ".join(f"{name}={count}" for name, count in sorted(stats.items()))
        sys.stderr.write(f"stats: {counts or 'no events'}\n")
        sys.stderr.flush()
        loop.call_later(interval, tick)

    loop.call_later(interval, tick)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def stop_on_signals(loop: EventLoop) -> None:
    """These signals end the loop cleanly, with status 0 (upstream 2026: SIGTERM
    and SIGQUIT exit 0; SIGINT and SIGHUP kill it, leaving its files behind)."""
    for signum in STOP_SIGNALS:
        loop.add_signal(signum, functools.partial(_stop, loop, signum))


def _stop(loop: EventLoop, signum: int) -> None:
    log.info("%s received, exiting", signal.Signals(signum).name)
    loop.stop(0)
