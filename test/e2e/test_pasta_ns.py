"""pasta's namespaces for real: commands, attaching, quitting, rootless, bad input.

Theory of operation: each test runs pasta's namespace side (the command
line through ``conf.parse``, ``hostnet`` discovery, daemonizing as
``netns.daemonizes`` says, ``netns.setup_pasta``, the event loop,
``teardown``: what ``cli.py`` strings together, without the data path) as a
small driver process inside the world's "host" namespace (world.py), so that
the addresses it copies are the world's, never the machine's.  The driver prints ``READY <child pid>`` once
the tap is configured, then runs until the command exits, the target goes
away or a signal arrives, and exits with pasta's status.  What the namespace
looks like is read from outside with ``nsenter``/``ip -n`` and ``ip -j``.

Rootless runs use a real unprivileged user (created with ``useradd`` if
missing) and Debian's ``/usr/bin/python3`` (``/root``, which holds our
interpreter, is closed to other users; ``python3-pyroute2`` is installed by
``mk/netns.mk``).  ``/dev/net/tun`` is mode 0600 here: instead of opening it
up for the whole machine, the test makes its own 0666 node for the same
device and points ``tap.TUN_DEVICE`` at it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from .world import IFNAME, V4, V6, World

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER = "passt-nstest"
SYSTEM_PYTHON = "/usr/bin/python3"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 10.0

DRIVER = r"""
import sys
from passt import conf as config, daemon, hostnet, loop, netns, tap

tun, argv = sys.argv[1], sys.argv[2:]
if tun:
    tap.TUN_DEVICE = tun
try:
    conf = config.parse("pasta", argv)
    net = hostnet.discover(conf)
    pidfile = daemon.PidFile.open(conf.pid) if conf.pid else None
    if netns.daemonizes(conf):
        readiness = daemon.daemonize(pidfile)
    else:
        readiness = daemon.foreground(pidfile)
    ev = loop.EventLoop()
    ns = netns.setup_pasta(conf, net, ev)
except (config.ConfError, hostnet.HostNetError, netns.NetnsError, daemon.DaemonError) as e:
    print(e, file=sys.stderr)
    sys.exit(1)
print("READY", ns.child_pid or 0, ns.ifname, ns.ns_mac.hex(":"), flush=True)
readiness.ready()
ns.start_command()
status = ev.run()
ns.teardown()
sys.exit(status)
"""

def as_user(user: pwd.struct_passwd) -> list[str]:
    """Command prefix running the rest as ``user``, without supplementary groups."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]


class Pasta:
    """The driver process: pasta's namespace side, started in the world's host."""

    def __init__(self, netns: str, args: list[str], user: pwd.struct_passwd | None = None,
                 tun: str = "") -> None:
        """Run pasta ``args`` in ``netns``, as ``user`` if given, with ``tun`` for the device."""
        prefix = ["ip", "netns", "exec", netns]
        python = [*as_user(user), SYSTEM_PYTHON] if user else ["python3"]
        argv = [*prefix, *python, "-c", DRIVER, tun, *args]
        env = {"PATH": PATH, "PYTHONPATH": REPO, "SHELL": "/bin/sh", "LC_ALL": "C"}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd="/")
        self.child_pid = 0
        self.ifname = ""
        self.mac = ""

    def ready(self) -> Pasta:
        """Wait for ``READY``; fail with the driver's stderr if it ends first."""
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT)
        line = self.proc.stdout.readline() if readable else ""
        if not line.startswith("READY"):
            self.kill()
            pytest.fail(f"driver not ready: {line!r} {self.stderr()}")
        _, pid, self.ifname, self.mac = line.split()
        self.child_pid = int(pid)
        return self

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World("ns", str(tmp_path_factory.mktemp("pasta-ns")))
    w.create()
    try:
        yield w
    finally:
        w.destroy()


@pytest.fixture
def drivers() -> Iterator[list[Pasta]]:
    """Drivers started by a test, killed at its end whatever happened."""
    started: list[Pasta] = []
    yield started
    for driver in started:
        driver.kill()


@pytest.fixture
def workdir() -> Iterator[str]:
    """A directory the unprivileged user reaches too (pytest's are root's only)."""
    path = tempfile.mkdtemp(prefix="pasta-ns-")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(drivers: list[Pasta], world: World, *args: str,
          user: pwd.struct_passwd | None = None, tun: str = "") -> Pasta:
    """pasta ``args`` in the world's host namespace, killed at the end of the test."""
    driver = Pasta(world.host_ns, list(args), user, tun)
    drivers.append(driver)
    return driver


def ip_json(*args: str, pid: int | None = None, netns: str | None = None) -> list[dict]:
    where = ["nsenter", "-t", str(pid), "-n"] if pid else []
    ns = ["-n", netns] if netns else []
    out = subprocess.run([*where, "ip", *ns, "-j", *args], capture_output=True, text=True,
                         check=True, timeout=20).stdout
    return json.loads(out) if out.strip() else []


def waiting_command(workdir: str, status: int) -> list[str]:
    """A command that checks its network is set up, then waits for ``stop`` (30 s at most)."""
    check = f"ip -o addr show {IFNAME} | grep -q {V4.host} || exit 99"
    wait = (f"for i in $(seq 600); do [ -e {workdir}/stop ] && exit {status}; "
            "sleep 0.05; done; exit 98")
    return ["sh", "-c", f"{check}; {wait}"]


def assert_configured(pid: int | None = None, netns: str | None = None,
                      mtu: int = 65520) -> None:
    """The tap in the namespace of ``pid`` (or ``netns``) is up with the world's config."""
    links = ip_json("addr", "show", pid=pid, netns=netns)
    routes4 = ip_json("-4", "route", pid=pid, netns=netns)
    routes6 = ip_json("-6", "route", pid=pid, netns=netns)
    by_name = {link["ifname"]: link for link in links}
    tap = by_name[IFNAME]
    assert "UP" in tap["flags"] and tap["mtu"] == mtu
    addrs = {(a["local"], a["prefixlen"]) for a in tap["addr_info"] if a["scope"] == "global"}
    assert addrs == {(V4.host, V4.prefix), (V6.host, V6.prefix)}
    assert "UP" in by_name["lo"]["flags"]
    assert ("default", V4.gateway) in {(r["dst"], r.get("gateway")) for r in routes4}
    assert ("default", V6.gateway) in {(r["dst"], r.get("gateway")) for r in routes6}


@contextlib.contextmanager
def sleeping_target(world: World, *prefix: str) -> Iterator[subprocess.Popen]:
    """``sleep 30`` in a new network namespace (``unshare -n``, after ``prefix``)."""
    target = subprocess.Popen(["ip", "netns", "exec", world.host_ns, *prefix, "unshare",
                               "-rn" if prefix else "-n", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # ip → (setpriv →) unshare → sleep, one PID
            if os.readlink(f"/proc/{target.pid}/exe").endswith("sleep"):
                break
            time.sleep(0.02)
        yield target
    finally:
        target.kill()
        target.wait(EXIT_TIMEOUT)


def process_gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def holders_of_netns(inode: int) -> list[int]:
    """PIDs whose network namespace has inode ``inode``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def touch(path: str) -> None:
    with open(path, "w"):
        pass


# -- a command in new namespaces ------------------------------------------------------


def test_command_sees_configured_tap_and_its_status_is_ours(world, drivers, workdir) -> None:
    pasta = start(drivers, world, "--config-net", "--", *waiting_command(workdir, 7)).ready()
    pid = pasta.child_pid
    assert pasta.ifname == IFNAME  # named after the host's template interface
    assert_configured(pid=pid)
    with open(f"/proc/{pid}/uid_map") as f:
        assert f.read().split() == ["0", "0", "1"]  # a user namespace, as upstream
    assert os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    touch(f"{workdir}/stop")
    assert pasta.wait() == 7


def test_without_config_net_only_loopback_is_up(world, drivers, workdir) -> None:
    command = ["sh", "-c", f"ip -j link show > {workdir}/links; ip -j addr show > {workdir}/a"]
    pasta = start(drivers, world, "--ns-mac-addr", "02:00:00:0a:0b:0c", "-I", "pasta0", "--",
                  *command).ready()
    assert pasta.wait() == 0
    with open(f"{workdir}/links") as f:
        links = {link["ifname"]: link for link in json.load(f)}
    assert "UP" in links["lo"]["flags"]
    assert "UP" not in links["pasta0"]["flags"]
    assert links["pasta0"]["address"] == "02:00:00:0a:0b:0c" == pasta.mac
    with open(f"{workdir}/a") as f:
        assert all(a["scope"] != "global" for link in json.load(f) for a in link["addr_info"])


def test_command_killed_by_signal_gives_128_plus_signal(world, drivers) -> None:
    pasta = start(drivers, world, "--", "sh", "-c", "kill -USR1 $$").ready()
    assert pasta.wait() == 128 + signal.SIGUSR1


def test_failing_exec_is_status_1_with_a_message(world, drivers) -> None:
    pasta = start(drivers, world, "--", "/nonexistent/program").ready()
    assert pasta.wait() == 1
    assert "Failed to run /nonexistent/program: No such file or directory" in pasta.stderr()


def test_sigterm_leaves_no_process_namespace_or_tap(world, drivers, workdir) -> None:
    pasta = start(drivers, world, "--config-net", "--", *waiting_command(workdir, 0)).ready()
    child = pasta.child_pid
    inode = os.stat(f"/proc/{child}/ns/net").st_ino
    started = time.monotonic()
    pasta.proc.send_signal(signal.SIGTERM)
    assert pasta.wait() == 128 + signal.SIGTERM
    print(f"SIGTERM to exit: {time.monotonic() - started:.3f} s")
    assert process_gone(child)
    assert holders_of_netns(inode) == []


# -- attaching to existing namespaces ----------------------------------------------------


@pytest.fixture
def target_ns(world) -> Iterator[str]:
    name = f"pnt-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def test_attach_by_name_configures_and_quits_when_deleted(world, drivers, target_ns) -> None:
    pasta = start(drivers, world, "-f", "--netns", target_ns, "--config-net", "-m", "1500").ready()
    assert pasta.child_pid == 0
    assert_configured(netns=target_ns, mtu=1500)
    subprocess.run(["ip", "netns", "del", target_ns], check=True, timeout=20)
    assert pasta.wait() == 0


def test_attach_by_path_no_quit_and_sigterm_removes_tap(world, drivers, target_ns) -> None:
    path = f"/run/netns/{target_ns}"
    pasta = start(drivers, world, "-f", "--netns", path, "--no-netns-quit").ready()
    assert [link["ifname"] for link in ip_json("link", "show", netns=target_ns)] == ["lo", IFNAME]
    other = f"{target_ns}-x"  # deleting another name in the directory is no reason to quit
    subprocess.run(["ip", "netns", "add", other], check=True, timeout=20)
    subprocess.run(["ip", "netns", "del", other], check=True, timeout=20)
    time.sleep(0.3)
    assert pasta.proc.poll() is None
    pasta.proc.send_signal(signal.SIGTERM)
    assert pasta.wait() == 128 + signal.SIGTERM
    assert [link["ifname"] for link in ip_json("link", "show", netns=target_ns)] == ["lo"]


def test_attach_in_background_writes_pid_file(world, drivers, target_ns, workdir) -> None:
    pid_file = f"{workdir}/pasta.pid"
    pasta = start(drivers, world, "--netns", target_ns, "--pid", pid_file, "--config-net").ready()
    assert pasta.wait() == 0  # the parent, once the daemon is ready
    with open(pid_file) as f:
        daemon_pid = int(f.read())
    try:
        assert daemon_pid != pasta.proc.pid and not process_gone(daemon_pid)
        links = {link["ifname"]: link for link in ip_json("link", "show", netns=target_ns)}
        assert "UP" in links[IFNAME]["flags"]
        subprocess.run(["ip", "netns", "del", target_ns], check=True, timeout=20)
        deadline = time.monotonic() + EXIT_TIMEOUT
        while not process_gone(daemon_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process_gone(daemon_pid)
    finally:
        if not process_gone(daemon_pid):
            os.kill(daemon_pid, signal.SIGKILL)


def test_attach_by_pid_quits_when_the_process_exits(world, drivers) -> None:
    with sleeping_target(world) as target:
        pasta = start(drivers, world, "-f", "--config-net", str(target.pid)).ready()
        assert_configured(pid=target.pid)
        target.kill()
        assert pasta.wait() == 0


# -- bad input ----------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


NO_FILE = "No such file or directory"


@pytest.mark.parametrize("args, message", [
    ("-f --netns-only DEAD", f"Couldn't open network namespace /proc/DEAD/ns/net: {NO_FILE}"),
    ("-f DEAD", f"Couldn't open network namespace /proc/DEAD/ns/net: {NO_FILE}"),
    ("-f --netns /nonexistent/ns", f"Couldn't open network namespace /nonexistent/ns: {NO_FILE}"),
    ("-f --netns no-such-ns",
     f"Couldn't open network namespace /run/netns/no-such-ns: {NO_FILE}"),
    ("--userns /nonexistent/user -- true",
     f"Couldn't open user namespace /nonexistent/user: {NO_FILE}"),
    ("-f --netns TARGET --userns /nonexistent/user",
     f"Couldn't open user namespace /nonexistent/user: {NO_FILE}"),
    ("-f --netns TARGET -I lo",
     "Failed to set up tap device lo: Invalid argument (interface name in use)"),
    ("TUN -- true", f"Failed to open /nonexistent/tun: {NO_FILE}"),
])
def test_bad_input_is_one_line_and_status_1(world, drivers, target_ns, args, message) -> None:
    pid = str(dead_pid())
    words = [pid if w == "DEAD" else target_ns if w == "TARGET" else w for w in args.split()]
    tun = "/nonexistent/tun" if words[0] == "TUN" else ""
    pasta = start(drivers, world, *words[1 if tun else 0:], tun=tun)
    assert pasta.wait() == 1
    assert pasta.stderr().splitlines() == [message.replace("DEAD", pid)]
    if target_ns in words:
        assert [link["ifname"] for link in ip_json("link", "show", netns=target_ns)] == ["lo"]


def test_no_template_interface_is_one_line(world, drivers, target_ns) -> None:
    """Discovery in a host without default routes: nothing to copy."""
    pasta = Pasta(target_ns, ["--", "true"])
    drivers.append(pasta)
    assert pasta.wait() == 1
    assert pasta.stderr().splitlines()[-1] == "External interface not usable"


# -- rootless -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", USER],
                       check=True, timeout=30)
        return pwd.getpwnam(USER)


@pytest.fixture
def user_tun(workdir: str) -> str:
    """A 0666 node for the tun device, private to the test (see the module docstring)."""
    node = os.path.join(workdir, "tun")
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    os.chmod(node, 0o666)
    return node


def test_rootless_command_in_its_own_user_namespace(world, drivers, workdir, user,
                                                   user_tun) -> None:
    pasta = start(drivers, world, "--config-net", "--", *waiting_command(workdir, 5),
                  user=user, tun=user_tun).ready()
    pid = pasta.child_pid
    assert_configured(pid=pid)
    with open(f"/proc/{pid}/uid_map") as f:
        assert f.read().split() == ["0", str(user.pw_uid), "1"]
    with open(f"/proc/{pid}/gid_map") as f:
        assert f.read().split() == ["0", str(user.pw_gid), "1"]
    with open(f"/proc/{pid}/setgroups") as f:
        assert f.read().strip() == "deny"
    status = os.stat(f"/proc/{pasta.proc.pid}/status")
    print(f"driver runs as uid {status.st_uid}")
    touch(f"{workdir}/stop")
    assert pasta.wait() == 5


def test_rootless_attach_by_pid_joins_the_user_namespace(world, drivers, user, user_tun) -> None:
    with sleeping_target(world, *as_user(user)) as target:
        pasta = start(drivers, world, "-f", "--config-net", str(target.pid), user=user,
                      tun=user_tun).ready()
        assert_configured(pid=target.pid)
        target.kill()
        assert pasta.wait() == 0


def test_rootless_without_user_namespace_is_refused(world, drivers, user, user_tun,
                                                   target_ns) -> None:
    pasta = start(drivers, world, "-f", "--netns", target_ns, user=user, tun=user_tun)
    assert pasta.wait() == 1
    assert pasta.stderr().splitlines() == [
        "Couldn't enter network namespace: Operation not permitted"]


def test_rootless_command_without_user_namespace_is_refused(world, drivers, user,
                                                           user_tun) -> None:
    pasta = start(drivers, world, "--netns-only", "--", "true", user=user, tun=user_tun)
    assert pasta.wait() == 1
    assert pasta.stderr().splitlines() == [
        "Couldn't create namespaces for the command: Operation not permitted"]


def test_world_tools_present() -> None:
    for tool in ("nsenter", "setpriv", "unshare", "useradd"):
        assert shutil.which(tool, path=PATH), tool
    assert os.access(SYSTEM_PYTHON, os.X_OK)
