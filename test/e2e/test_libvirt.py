"""passt under libvirt: libvirt's passt backend runs our passt, a guest boots and talks.

Theory of operation: this is the deployment distributions ship.  The test
runs a libvirtd of its own (bookworm-backports' libvirt, whose passt backend
Debian 12's 9.0.0 lacks: mk/libvirt.mk) and defines a domain with
``<interface type='user'><backend type='passt'/>``, so that libvirt itself
starts passt with its exact argv, as the QEMU user, with a PID file, waits
for passt's exit status 0 (we daemonize only once the socket listens),
starts QEMU on the socket, and at the end stops passt by its PID file.

The libvirtd runs inside the world's host namespace (so passt copies the
world's addresses and routes and its traffic stays in the world) and in a
private mount namespace where its configuration, state and runtime
directories are the test's own: nothing of the machine's libvirt is used or
left behind.  Its ``qemu.conf`` runs QEMU (and so passt) as ``libvirt-qemu``
with no security driver, cgroups or namespaces, which a container cannot
give.  libvirt finds ``passt`` in its ``PATH``; the first one there is a
wrapper that records the argv and runs the implementation under test
(``PASST_IMPL``); ours runs with Debian's python3, since ``libvirt-qemu``
cannot reach the test's interpreter under /root.

The module runs twice, once per interface type (``INTERFACES``):
``<interface type='user'>`` (passt's stream socket) and ``<interface
type='vhostuser'>`` (``passt --vhost-user``, the guest's RAM a shared memfd:
``<memoryBacking>``), whose emulator is QEMU 10 (guest.QEMU10, mk/qemu10.mk)
where it is unpacked: Debian 12's QEMU 7.2 crashes on vhost-user under TCG.

The guest's console is ``virsh console`` under pexpect; the domain starts
paused so that the console is attached before the first byte is printed.
The tests run in file order: the start-up checks, then every guest cell
test_passt.py runs, on this one guest per interface type: the direction
matrix (both ways, both protocols, both IP versions, forwarded ports
through libvirt's ``<portForward>``), the L2 checks (DHCP with the MTU,
DHCPv6, SLAAC, ARP and NDP, ping), and the tear-down, which must leave no
passt process, PID file or socket behind.  The guest's IPv4 address is
``GUEST_ADDRESS``, not the host's, so the cells are told it: the DHCP check
expects it in the lease, and inbound IPv4 servers bind it.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pexpect
import pytest

from . import impl, l2, traffic
from .cells import FORWARDED, Cell, cell_id, l2_cells, matrix
from .deploy import build_guest_image
from .guest import GUEST_MAC, GUEST_WORKDIR, READY_MARKER, image_paths, qemu_command
from .shell import Shell
from .test_passt_qrap import plain_cell, variant_params
from .world import IFNAME, V4, World

pytestmark = pytest.mark.e2e

QEMU_USER = "libvirt-qemu"
DEBIAN_PYTHON = "/usr/bin/python3"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOMAIN = f"e2e-passt-{os.getpid()}"
START_TIMEOUT = 60.0
BOOT_TIMEOUT = 120.0
GONE_TIMEOUT = 20.0
GUEST_ADDRESS = "198.51.100.77"  # not the host's: --address must be honoured
GUEST_ADDRESSES = {4: GUEST_ADDRESS}  # by IP version, where not the host's
# (No <mtu>: libvirt 11.3 then tries to set the MTU of a host interface named
# "(null)" and fails to start the domain.)

QEMU_CONF = f"""\
user = "{QEMU_USER}"
group = "{QEMU_USER}"
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
remember_owner = 0
"""

LIBVIRTD_CONF = """\
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

# Private mounts: libvirt's fixed paths become the test's directories.  The
# cache (QEMU's capabilities, which take libvirtd half a minute to probe under
# TCG) outlives the run, in the build directory; libvirt revalidates it
# against the binaries' timestamps.
MOUNTS = {
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
CACHE_DIR = os.path.join(REPO, "build", "libvirt-cache")


INTERFACES = ("user", "vhostuser")
SHARED_MEMORY = """
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>"""


def domain_xml(passt_dir: str, interface: str = "user") -> str:
    kernel, initrd = (os.path.abspath(p) for p in image_paths())
    vhost_user = interface == "vhostuser"
    # Resolved: libvirt caches capabilities by the emulator's path, in the
    # build directory, which a git worktree reaches through a link.
    command = qemu_command("vhost-user" if vhost_user else "stream")[0]
    emulator = os.path.realpath(shutil.which(command) or command)
    ranges = {
        "tcp": (FORWARDED.iperf, FORWARDED.stream),
        "udp": (FORWARDED.iperf, FORWARDED.dgram),
    }
    forwards = "".join(
        f"<portForward proto='{proto}'>"
        + "".join(f"<range start='{port}'/>" for port in ports)
        + "</portForward>"
        for proto, ports in ranges.items()
    )
    return f"""\
<domain type='qemu'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>512</memory>{SHARED_MEMORY if vhost_user else ""}
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <cpu mode='maximum' migratable='off'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{emulator}</emulator>
    <interface type='{interface}'>
      <backend type='passt' logFile='{passt_dir}/passt.log'/>
      <mac address='{GUEST_MAC}'/>
      <source dev='{IFNAME}'/>
      <model type='virtio'/>
      <ip family='ipv4' address='{GUEST_ADDRESS}' prefix='{V4.prefix}'/>
      {forwards}
    </interface>
    <serial type='pty'/>
    <console type='pty'/>
  </devices>
</domain>
"""


def passt_command(chosen: impl.Impl) -> list[str]:
    """How the wrapper runs the passt under test, as the QEMU user."""
    if chosen.name == "ours":  # the test's interpreter lives under /root
        return [DEBIAN_PYTHON, *chosen.passt[1:]]
    return list(chosen.passt)


def qemu_user() -> pwd.struct_passwd:
    """The QEMU user libvirt's packages would create (they don't here: no -system)."""
    try:
        return pwd.getpwnam(QEMU_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--shell", "/usr/sbin/nologin", QEMU_USER],
            check=True, capture_output=True, timeout=30,
        )
        return pwd.getpwnam(QEMU_USER)


class Libvirtd:
    """A libvirtd of the test's own, in ``netns`` and a private mount namespace."""

    def __init__(self, root: str, netns: str, path_dir: str) -> None:
        self.root = root
        self.netns = netns
        self.path_dir = path_dir
        self.run_dir = os.path.join(root, "run")
        self.uri = f"qemu:///system?socket={self.run_dir}/libvirt-sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Libvirtd:
        for name in (*MOUNTS, "run"):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        os.makedirs(CACHE_DIR, exist_ok=True)
        os.makedirs(os.path.join(self.root, "etc", "qemu"), exist_ok=True)
        with open(os.path.join(self.root, "etc", "qemu.conf"), "w") as f:
            f.write(QEMU_CONF)
        with open(os.path.join(self.root, "etc", "libvirtd.conf"), "w") as f:
            f.write(LIBVIRTD_CONF)
        sources = {name: os.path.join(self.root, name) for name in MOUNTS} | {"cache": CACHE_DIR}
        mounts = [f"mkdir -p {target} && mount --bind {sources[name]} {target}"
                  for name, target in MOUNTS.items()]
        nokvm = os.path.join(self.root, "nokvm")
        open(nokvm, "w").close()
        script = " && ".join([
            # KVM does not work here, though /dev/kvm exists; libvirt would
            # probe QEMU again and again (KVM "enabled" when probing, "not
            # available" when checking): it gets no /dev/kvm, guests run on TCG.
            f"mount --bind {nokvm} /dev/kvm 2>/dev/null || true",
            "mount -t tmpfs tmpfs /run",  # a /run of its own: nothing left in the real one
            "mkdir -p /run/libvirt /run/lock",  # console locks go to /var/lock
            f"mount --bind {self.run_dir} /run/libvirt",
            *mounts,
            "exec libvirtd -f /etc/libvirt/libvirtd.conf",
        ])
        env = {"PATH": f"{self.path_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        with open(os.path.join(self.root, "libvirtd.out"), "ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--mount",
                 "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while self.virsh("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd did not come up:\n{self.log()}")
            time.sleep(0.2)
        return self

    def virsh(self, *args: str, check: bool = True, timeout: float = 60.0
              ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {result.stderr.strip()}")
        return result

    def console(self, log_path: str) -> pexpect.spawn:
        child = pexpect.spawn(
            "virsh", ["-c", self.uri, "console", "--force", DOMAIN],
            encoding="utf-8", codec_errors="replace", timeout=BOOT_TIMEOUT,
        )
        child.logfile_read = open(log_path, "a")  # noqa: SIM115 - closed with the child
        return child

    def log(self) -> str:
        parts = []
        for name in ("libvirtd.out", "log/libvirtd.log", f"log/qemu/{DOMAIN}.log"):
            try:
                with open(os.path.join(self.root, name), errors="replace") as f:
                    parts.append(f"--- {name}\n{f.read()[-3000:]}")
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)


@dataclass
class LibvirtEnv:
    """The world, our libvirtd, the running domain and its console shell."""

    world: World
    libvirtd: Libvirtd
    passt_dir: str
    console_log: str
    console: pexpect.spawn | None = None
    guest: Shell | None = None
    interface: str = "user"
    notes: list[str] = field(default_factory=list)

    def shells(self) -> list[Shell]:
        inner = [self.guest] if self.guest is not None else []
        return [*inner, self.world.host, self.world.remote]

    def passt_argv(self) -> list[str]:
        with open(os.path.join(self.passt_dir, "argv"), "rb") as f:
            return [a.decode() for a in f.read().split(b"\0")[:-1]]

    def option(self, name: str) -> str:
        argv = self.passt_argv()
        return argv[argv.index(name) + 1]

    def passt_log(self) -> str:
        try:
            with open(os.path.join(self.passt_dir, "passt.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> list[tuple[str, str]]:
        with open(self.console_log, errors="replace") as f:
            console = f.read()[-3000:]
        return [
            ("passt argv (from libvirt)", repr(self.passt_argv_or_none())),
            ("passt log", self.passt_log()[-4000:]),
            ("libvirt logs", self.libvirtd.log()),
            ("guest console", console),
        ]

    def passt_argv_or_none(self) -> list[str] | None:
        try:
            return self.passt_argv()
        except FileNotFoundError:
            return None

    def teardown(self) -> None:
        try:
            if self.console is not None:
                self.console.close(force=True)
                if self.console.logfile_read:
                    self.console.logfile_read.close()
            self.libvirtd.virsh("destroy", DOMAIN, check=False)
            self.libvirtd.virsh("undefine", DOMAIN, check=False)
        finally:
            try:
                self.libvirtd.stop()
            finally:
                self.world.destroy()


def write_wrapper(path_dir: str, passt_dir: str, chosen: impl.Impl) -> None:
    """``passt`` for libvirtd's PATH: record the argv, run the passt under test."""
    command = " ".join(shlex.quote(a) for a in passt_command(chosen))
    argv_file = shlex.quote(os.path.join(passt_dir, "argv"))
    wrapper = os.path.join(path_dir, "passt")
    with open(wrapper, "w") as f:
        f.write(
            "#!/bin/sh\n"
            f"printf '%s\\0' \"$@\" > {argv_file}\n"
            f"PYTHONPATH={shlex.quote(REPO)} exec {command} \"$@\"\n"
        )
    os.chmod(wrapper, 0o755)


def deploy(chosen: impl.Impl, root: str, interface: str = "user") -> LibvirtEnv:
    """World, libvirtd, the domain started, the guest configured by DHCP and SLAAC."""
    build_guest_image()
    user = qemu_user()
    path_dir = os.path.join(root, "bin")
    passt_dir = os.path.join(root, "passt")  # the QEMU user writes its log and argv here
    os.makedirs(path_dir)
    os.makedirs(passt_dir)
    os.chown(passt_dir, user.pw_uid, user.pw_gid)
    write_wrapper(path_dir, passt_dir, chosen)
    world = World("libvirt", os.path.join(root, "world")).create()
    xml = domain_xml(passt_dir, interface)
    env = LibvirtEnv(world, Libvirtd(os.path.join(root, "libvirt"), world.host_ns, path_dir),
                     passt_dir, os.path.join(root, "console.log"))
    try:
        began = time.monotonic()
        env.libvirtd.start()
        env.notes.append(f"libvirt: libvirtd answered in {time.monotonic() - began:.1f} s")
        xml_path = os.path.join(root, "domain.xml")
        with open(xml_path, "w") as f:
            f.write(xml)
        env.libvirtd.virsh("define", xml_path)
        env.libvirtd.virsh("start", "--paused", DOMAIN, timeout=START_TIMEOUT)
        env.notes.append(f"libvirt: domain up (passt started) in {time.monotonic() - began:.1f} s")
        env.console = env.libvirtd.console(env.console_log)
        env.console.expect_exact("Escape character", timeout=20)
        env.libvirtd.virsh("resume", DOMAIN)
        env.console.expect_exact(READY_MARKER, timeout=BOOT_TIMEOUT)
        env.guest = shell = Shell("guest", env.console, GUEST_WORKDIR, "eth0")
        shell.check(f"mkdir -p {GUEST_WORKDIR}")
        shell.check(f"cp /usr/share/udhcpc/default.script {shell.path(l2.UDHCPC_SCRIPT)}")
        l2.configure(shell)
        for s in (shell, world.host, world.remote):
            traffic.make_payloads(s)
        env.notes.append(f"libvirt: guest configured {time.monotonic() - began:.1f} s after start")
    except BaseException:
        env.teardown()
        raise
    return env


@pytest.fixture(scope="module", params=INTERFACES)
def libvirt_env(request: pytest.FixtureRequest, chosen_impl: impl.Impl) -> Iterator[LibvirtEnv]:
    interface = request.param
    if interface == "vhostuser" and chosen_impl.name == "upstream":
        pytest.skip("upstream: Debian's passt 0.0~git20230309 has no --vhost-user")
    # Not under pytest's tmp_path: /tmp/pytest-of-root is closed to the QEMU user.
    root = tempfile.mkdtemp(prefix="e2e-libvirt-")
    try:
        os.chmod(root, 0o755)
        env = deploy(chosen_impl, root, interface)
        env.interface = interface
        try:
            yield env
        finally:
            env.teardown()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def libvirt(request: pytest.FixtureRequest, libvirt_env: LibvirtEnv) -> Iterator[LibvirtEnv]:
    request.node.e2e_deployment = libvirt_env  # its diagnostics go into failure reports
    yield libvirt_env
    for shell in libvirt_env.shells():
        if not shell.broken:
            shell.kill_background()


def proc_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError(f"no Uid line for PID {pid}")


def read_pid(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def netns_commands(netns: str) -> list[str]:
    """Command lines of the processes in network namespace ``netns``."""
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                          timeout=10).stdout.split()
    commands = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                commands.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except FileNotFoundError:
            pass
    return commands


# -- the checks, in order ------------------------------------------------------


@pytest.mark.parametrize("cell", [Cell("passt", "libvirt_start")], ids=cell_id)
def test_libvirt_starts_passt_with_its_argv(cell: Cell, libvirt: LibvirtEnv) -> None:
    argv = libvirt.passt_argv()
    print("\n".join(libvirt.notes))
    print("libvirt ran: passt " + " ".join(argv))
    assert "--one-off" in argv
    assert ("--vhost-user" in argv) == (libvirt.interface == "vhostuser")
    assert libvirt.option("--interface") == IFNAME
    assert libvirt.option("--address") == GUEST_ADDRESS
    assert libvirt.option("--netmask") == str(V4.prefix)
    assert libvirt.option("--log-file") == os.path.join(libvirt.passt_dir, "passt.log")
    tcp = {int(p) for spec in _values(argv, "--tcp-ports") for p in spec.split(",")}
    udp = {int(p) for spec in _values(argv, "--udp-ports") for p in spec.split(",")}
    assert tcp == {FORWARDED.iperf, FORWARDED.stream}
    assert udp == {FORWARDED.iperf, FORWARDED.dgram}

    socket_path = _in_libvirt_run(libvirt, libvirt.option("--socket"))
    pid_path = _in_libvirt_run(libvirt, libvirt.option("--pid"))
    pid = read_pid(pid_path)
    assert proc_uid(pid) == pwd.getpwnam(QEMU_USER).pw_uid, "passt does not run as the QEMU user"
    assert os.path.exists(socket_path)
    assert libvirt.passt_log(), "nothing in --log-file"
    netdev = libvirt.libvirtd.virsh(
        "qemu-monitor-command", DOMAIN, "--hmp", "info network").stdout
    if libvirt.interface == "vhostuser":
        assert "vhost-user" in netdev, netdev
    else:
        assert "stream" in netdev and libvirt.option("--socket") in netdev, netdev
    rx_filter = json.loads(libvirt.libvirtd.virsh(
        "qemu-monitor-command", DOMAIN, '{"execute": "query-rx-filter"}').stdout)["return"]
    assert [f["main-mac"] for f in rx_filter] == [GUEST_MAC], rx_filter


def _values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == option]


def _in_libvirt_run(env: LibvirtEnv, path: str) -> str:
    """A path under libvirtd's /run/libvirt, as the test sees it."""
    assert path.startswith("/run/libvirt/"), path
    return os.path.join(env.libvirtd.run_dir, path.removeprefix("/run/libvirt/"))


@pytest.mark.parametrize("cell", variant_params("libvirt", matrix("passt")))
def test_libvirt_direction(cell: Cell, libvirt: LibvirtEnv, record_property) -> None:
    assert libvirt.guest is not None
    plain = plain_cell(cell)
    throughput = traffic.run_cell(plain, libvirt.world, libvirt.guest,
                                  GUEST_ADDRESSES.get(plain.version))
    print(f"{cell.label}: {throughput.text}")
    record_property("throughput", throughput.text)


@pytest.mark.parametrize("cell", variant_params("libvirt", l2_cells("passt", l2.CHECKS)))
def test_libvirt_l2(cell: Cell, libvirt: LibvirtEnv) -> None:
    assert libvirt.guest is not None
    plain = plain_cell(cell)
    print(l2.check(plain.name, plain.version, libvirt.guest, GUEST_ADDRESSES.get(plain.version)))


@pytest.mark.parametrize("cell", [Cell("passt", "libvirt_destroy")], ids=cell_id)
def test_destroy_leaves_no_passt_behind(cell: Cell, libvirt: LibvirtEnv) -> None:
    socket_path = _in_libvirt_run(libvirt, libvirt.option("--socket"))
    pid_path = _in_libvirt_run(libvirt, libvirt.option("--pid"))
    pid = read_pid(pid_path)
    libvirt.libvirtd.virsh("destroy", DOMAIN)
    deadline = time.monotonic() + GONE_TIMEOUT
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), "passt still runs after the domain went"
    if os.path.exists(socket_path) and impl.current().name == "upstream2026":
        pytest.xfail("upstream 2026 leaves its vhost-user socket file behind when QEMU goes")
    assert not os.path.exists(socket_path), "socket left behind"
    if libvirt.interface == "user":
        # libvirt stops passt by its PID file, and removes it, for type='user'
        # only; for type='vhostuser' it relies on --one-off (passt leaves when
        # QEMU goes) and leaves the file, whichever passt it ran.
        assert not os.path.exists(pid_path), "PID file left behind"
    left = [c for c in netns_commands(libvirt.world.host_ns) if "passt" in c]
    assert not left, f"passt processes left: {left}"
    libvirt.libvirtd.virsh("undefine", DOMAIN)
    print(libvirt.passt_log()[-600:])
