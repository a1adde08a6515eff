"""A QEMU guest on passt's socket: boot, console shell, QMP, shutdown.

Theory of operation: the guest image (``make guest``: a Debian cloud kernel
and a busybox/iperf3/socat initramfs, see test/guest/build.sh) boots under
TCG in a few seconds to a shell on the serial console.  QEMU's serial port
is its stdio, owned by pexpect, so the console becomes a ``Shell``; QEMU
itself is driven over QMP (qemu.qmp): it starts paused (``-S``), the
harness checks the start-up state and that the ``stream`` netdev is
connected to passt's socket, then lets it run; at the end it asks QEMU to
``quit`` and waits for it to exit, killing it only if it does not.

The guest connects to passt as libvirt and users do, through one of two
back ends (``BACKENDS``): ``stream``, ``-netdev stream,server=off,addr.type=unix``,
or ``vhost-user``, ``-netdev vhost-user`` on a ``-chardev socket``, with the
guest's RAM in a shared memfd (``-numa node,memdev=``) that passt maps.
QEMU is ``qemu-system-x86_64`` from ``PATH`` (``E2E_QEMU`` overrides it),
except for vhost-user while QEMU 10 from bookworm-backports is unpacked in
``build/qemu10`` (mk/qemu10.mk): Debian 12's QEMU 7.2 crashes (SIGSEGV) as
soon as the guest's driver starts a vhost-user net device under TCG, with
upstream's passt as with ours.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import pexpect
from qemu.qmp import QMPError
from qemu.qmp import protocol as qmp_error
from qemu.qmp.legacy import QEMUMonitorProtocol

from .shell import Shell

GUEST_DIR = os.environ.get(
    "E2E_GUEST_DIR",
    os.path.join(os.path.dirname(__file__), "..", "..", "build", "guest"),
)
GUEST_MAC = "52:54:00:12:34:56"
GUEST_WORKDIR = "/tmp/e2e"
BOOT_TIMEOUT = 90.0
READY_MARKER = "E2E-GUEST-READY"
MEMORY_MIB = 512
BACKENDS = ("stream", "vhost-user")
QEMU10 = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "build", "qemu10",
                                      "qemu-system-x86_64"))  # mk/qemu10.mk's wrapper


def qemu_command(backend: str) -> list[str]:
    """The QEMU binary for ``backend`` (a list: room for options that go with it)."""
    if "E2E_QEMU" in os.environ:
        return [os.environ["E2E_QEMU"]]
    if backend == "vhost-user" and os.path.exists(QEMU10):
        return [QEMU10]  # it finds its firmware in ../share/qemu
    return ["qemu-system-x86_64"]


def image_paths() -> tuple[str, str]:
    """Kernel and initramfs of the guest image; raise if not built."""
    kernel = os.path.join(GUEST_DIR, "vmlinuz")
    initrd = os.path.join(GUEST_DIR, "initramfs.cpio")
    for path in (kernel, initrd):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing: run `make guest` first")
    return kernel, initrd


def netdev_argv(backend: str, socket_path: str, memory_mib: int = MEMORY_MIB) -> list[str]:
    """QEMU options connecting ``net0`` to passt's socket through ``backend``."""
    if backend == "vhost-user":
        return [
            "-object", f"memory-backend-memfd,id=mem0,size={memory_mib}M,share=on",
            "-numa", "node,memdev=mem0",
            "-chardev", f"socket,id=vu0,path={socket_path}",
            "-netdev", "vhost-user,id=net0,chardev=vu0",
        ]
    return ["-netdev", f"stream,id=net0,server=off,addr.type=unix,addr.path={socket_path}"]


def qemu_argv(socket_path: str, qmp_path: str, backend: str = "stream",
              memory_mib: int = MEMORY_MIB, incoming: str | None = None,
              device_options: str = "") -> list[str]:
    """QEMU's options; with ``incoming``, a migration target that runs the guest
    as soon as its state has come (instead of starting paused, ``-S``);
    ``device_options`` are added to the virtio-net device's (``,csum=off``)."""
    kernel, initrd = image_paths()
    start = ["-incoming", incoming] if incoming else ["-S"]
    return [
        "-accel", "tcg", "-cpu", "max", "-m", str(memory_mib), "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", *start,
        "-kernel", kernel, "-initrd", initrd,
        "-append", "console=ttyS0 quiet panic=-1",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
        *netdev_argv(backend, socket_path, memory_mib),
        "-device", f"virtio-net-pci,netdev=net0,mac={GUEST_MAC}{device_options}",
    ]


@dataclass
class BootReport:
    """What the harness observed while starting the guest."""

    initial_status: str
    netdev_info: str
    boot_seconds: float


class Guest:
    """One QEMU process, its console shell and its QMP connection."""

    def __init__(self, socket_path: str, workdir: str, backend: str = "stream",
                 memory_mib: int = MEMORY_MIB, device_options: str = "") -> None:
        self.socket_path = socket_path
        self.backend = backend
        self.memory_mib = memory_mib
        self.device_options = device_options
        self.qmp_path = os.path.join(workdir, "qmp.sock")
        self.console_log = os.path.join(workdir, "console.log")
        self.child: pexpect.spawn | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.shell: Shell
        self.report: BootReport

    def _spawn(self, incoming: str | None = None) -> None:
        qemu, *options = qemu_command(self.backend)
        argv = qemu_argv(self.socket_path, self.qmp_path, self.backend, self.memory_mib, incoming,
                         self.device_options)
        self.child = pexpect.spawn(qemu, [*options, *argv], encoding="utf-8",
                                   codec_errors="replace", timeout=BOOT_TIMEOUT)
        self.child.logfile_read = open(self.console_log, "a")
        self.qmp = self._connect_qmp()

    def listen_incoming(self, uri: str) -> Guest:
        """Start QEMU as the target of a migration from ``uri``, its netdev connected."""
        self._spawn(uri)
        self._wait_netdev_connected()
        return self

    def take_over(self, source: Guest) -> Shell:
        """The migrated guest's console shell, from this (target) QEMU's serial port."""
        assert self.child is not None
        self.shell = Shell("guest", self.child, GUEST_WORKDIR, source.shell.ifname)
        return self.shell

    def boot(self) -> Guest:
        """Start QEMU paused, check it over QMP, run it to the console shell."""
        self._spawn()
        assert self.qmp is not None
        status = self.qmp_command("query-status")["status"]
        netdev = self._wait_netdev_connected()
        began = time.monotonic()
        self.qmp.cmd("cont")
        try:
            self.child.expect(READY_MARKER, timeout=BOOT_TIMEOUT)
        except (pexpect.TIMEOUT, pexpect.EOF):
            raise RuntimeError(f"guest did not boot:\n{self.console()[-3000:]}") from None
        self.report = BootReport(status, netdev, time.monotonic() - began)
        self.shell = Shell("guest", self.child, GUEST_WORKDIR, "eth0")
        self.shell.check(f"mkdir -p {GUEST_WORKDIR}")
        return self

    def qmp_command(self, command: str, **arguments: object) -> Any:
        """A QMP command's return value.  (``cmd_obj`` returns the raw response
        in every qemu.qmp release; ``cmd`` does not since 0.0.4.)"""
        assert self.qmp is not None
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        response = self.qmp.cmd_obj(message)
        if "error" in response:
            raise RuntimeError(f"QMP {command}: {response['error']}")
        return response["return"]

    def info_network(self) -> str:
        return self.qmp_command("human-monitor-command", **{"command-line": "info network"})

    def _wait_netdev_connected(self, timeout: float = 15.0) -> str:
        """``info network`` once the netdev is connected to passt.

        QEMU connects a stream socket asynchronously: the netdev line appears
        once it is connected, even while the machine is still paused.  A
        vhost-user netdev has done its handshake before QMP answers.
        """
        deadline = time.monotonic() + timeout
        while True:
            info = self.info_network()
            if self.backend == "vhost-user" and "vhost-user" in info:
                return info
            if "type=stream" in info and self.socket_path in info:
                return info
            if time.monotonic() >= deadline:
                raise RuntimeError(f"QEMU did not connect to {self.socket_path}:\n{info}")
            time.sleep(0.05)

    def _connect_qmp(self, timeout: float = 20.0) -> QEMUMonitorProtocol:
        """Connect once QEMU listens (the socket file appears before it does)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.child or not self.child.isalive():
                raise RuntimeError(f"QEMU exited at start-up:\n{self.console()}")
            if not os.path.exists(self.qmp_path):
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"QEMU did not open its QMP socket:\n{self.console()}")
                time.sleep(0.05)
                continue
            qmp = QEMUMonitorProtocol(self.qmp_path)
            try:
                qmp.connect()
                return qmp
            except (OSError, EOFError, qmp_error.ConnectError):
                qmp.close()
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def console(self) -> str:
        """Everything the serial console printed so far."""
        try:
            with open(self.console_log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def shutdown(self, timeout: float = 15.0) -> bool:
        """Ask QEMU to quit over QMP; True if it exited on its own.

        Whatever happens, QEMU is gone afterwards: killed if it did not quit.
        """
        clean = False
        try:
            if self.qmp is not None:
                try:
                    self.qmp.cmd("quit")
                except (OSError, EOFError, QMPError):
                    pass  # QEMU may close QMP before its answer to "quit" is read
                clean = self._wait_exit(timeout)
        finally:
            self._close_qmp()
            if self.child is not None:
                self.child.close(force=True)
                if self.child.logfile_read:
                    self.child.logfile_read.close()
        return clean

    def _close_qmp(self) -> None:
        if self.qmp is not None:
            qmp, self.qmp = self.qmp, None
            try:
                qmp.close()
            except (OSError, EOFError, QMPError):
                pass  # QEMU closed its end first, as it does on quit

    def _wait_exit(self, timeout: float) -> bool:
        assert self.child is not None
        try:
            self.child.expect(pexpect.EOF, timeout=timeout)
        except pexpect.TIMEOUT:
            return False
        self.child.wait()
        return True
