"""pasta's namespaces for real: commands, attaching, quitting, rootless, bad input.

Theory of operation: each test runs our ``pasta`` command line
(``cli.main_pasta``) inside the world's "host" namespace (world.py), so that
the addresses it copies are the world's, never the machine's, and looks at
the namespace from outside with ``nsenter``/``ip -n`` and ``ip -j``.

When is pasta ready?  A command is only started once the tap is configured,
so a command that writes its PID to a file says both "ready" and which
process to inspect.  When attaching, pasta goes to the background once
ready (its parent exits 0, the PID file names the daemon); with ``-f`` the
test waits for the tap to appear in the target.

Rootless runs use a real unprivileged user (created with ``useradd`` if
missing) and Debian's ``/usr/bin/python3`` (``/root``, which holds our
interpreter, is closed to other users; ``python3-pyroute2`` comes from
``mk/netns.mk``).  ``/dev/net/tun`` is mode 0600 here: instead of opening it
up for the whole machine, the test makes its own 0666 node for the same
device and the launcher points ``tap.TUN_DEVICE`` at it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from .world import IFNAME, V4, V6, World

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER = "passt-nstest"
SYSTEM_PYTHON = "/usr/bin/python3"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 20.0

# pasta, with the tun device's path as first argument ("" for the default).
LAUNCHER = (
    "import sys\n"
    "from passt.backends import tap\n"
    "tap.TUN_DEVICE = sys.argv.pop(1) or tap.TUN_DEVICE\n"
    "from passt.cli import main_pasta\n"
    "main_pasta()\n"
)


def as_user(user: pwd.struct_passwd) -> list[str]:
    """Command prefix running the rest as ``user``, without supplementary groups."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]


class Pasta:
    """Our pasta, started in a namespace of the world."""

    def __init__(self, netns: str, args: list[str], user: pwd.struct_passwd | None = None,
                 tun: str = "", stdin: str | None = None) -> None:
        """Run pasta ``args`` in ``netns``, as ``user`` if given, with ``tun`` for the device."""
        python = [*as_user(user), SYSTEM_PYTHON] if user else ["python3"]
        argv = ["ip", "netns", "exec", netns, *python, "-c", LAUNCHER, tun, *args]
        env = {"PATH": PATH, "PYTHONPATH": REPO, "SHELL": "/bin/sh", "LC_ALL": "C"}
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        assert self.proc.stderr is not None and self.proc.poll() is not None
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World("ns", str(tmp_path_factory.mktemp("pasta-ns")))
    w.create()
    try:
        yield w
    finally:
        w.destroy()


@pytest.fixture
def pastas() -> Iterator[list[Pasta]]:
    """pasta processes started by a test, killed at its end whatever happened."""
    started: list[Pasta] = []
    yield started
    for pasta in started:
        pasta.kill()


@pytest.fixture
def workdir() -> Iterator[str]:
    """A directory the unprivileged user reaches too (pytest's are root's only)."""
    path = tempfile.mkdtemp(prefix="pasta-ns-")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def target_ns(world) -> Iterator[str]:
    name = f"pnt-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def start(pastas: list[Pasta], world: World, *args: str, user: pwd.struct_passwd | None = None,
          tun: str = "", stdin: str | None = None) -> Pasta:
    """pasta ``args`` in the world's host namespace, killed at the end of the test."""
    pasta = Pasta(world.host_ns, list(args), user, tun, stdin)
    pastas.append(pasta)
    return pasta


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_when_written(path: str) -> str:
    """The content of ``path`` once a line was written to it."""
    def written() -> bool:
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            return f.read().endswith("\n")
        return False

    wait_until(written, path)
    with open(path) as f:
        return f.read()


def ip_json(*args: str, pid: int | None = None, netns: str | None = None) -> list[dict]:
    where = ["nsenter", "-t", str(pid), "-n"] if pid else []
    ns = ["-n", netns] if netns else []
    out = subprocess.run([*where, "ip", *ns, "-j", *args], capture_output=True, text=True,
                         check=True, timeout=20).stdout
    return json.loads(out) if out.strip() else []


def link_names(pid: int | None = None, netns: str | None = None) -> list[str]:
    return [link["ifname"] for link in ip_json("link", "show", pid=pid, netns=netns)]


def waiting_command(workdir: str, status: int) -> list[str]:
    """Checks its network is set up, writes its PID to ``ready``, waits for ``stop`` (30 s)."""
    check = f"ip -o addr show {IFNAME} | grep -q {V4.host} || exit 99"
    wait = (f"for i in $(seq 600); do [ -e {workdir}/stop ] && exit {status}; "
            "sleep 0.05; done; exit 98")
    return ["sh", "-c", f"{check}; echo $$ > {workdir}/ready; {wait}"]


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
    try:  # ip → (setpriv →) unshare → sleep, one PID
        wait_until(lambda: os.readlink(f"/proc/{target.pid}/exe").endswith("sleep"), "sleep")
        yield target
    finally:
        target.kill()
        target.wait(TIMEOUT)


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


def test_command_sees_configured_tap_and_its_status_is_ours(world, pastas, workdir) -> None:
    pasta = start(pastas, world, "--config-net", "--", *waiting_command(workdir, 7))
    pid = int(read_when_written(f"{workdir}/ready"))
    assert_configured(pid=pid)  # named after the host's template interface, too
    with open(f"/proc/{pid}/uid_map") as f:
        assert f.read().split() == ["0", "0", "1"]  # a user namespace, as upstream
    assert os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    touch(f"{workdir}/stop")
    assert pasta.wait() == 7


def test_without_config_net_only_loopback_is_up(world, pastas, workdir) -> None:
    command = ["sh", "-c", f"ip -j link show > {workdir}/links; ip -j addr show > {workdir}/a"]
    pasta = start(pastas, world, "--ns-mac-addr", "02:00:00:0a:0b:0c", "-I", "pasta0", "--",
                  *command)
    assert pasta.wait() == 0
    with open(f"{workdir}/links") as f:
        links = {link["ifname"]: link for link in json.load(f)}
    assert "UP" in links["lo"]["flags"]
    assert "UP" not in links["pasta0"]["flags"]  # left to the namespace's DHCP/SLAAC
    assert links["pasta0"]["address"] == "02:00:00:0a:0b:0c"
    with open(f"{workdir}/a") as f:
        assert all(a["scope"] != "global" for link in json.load(f) for a in link["addr_info"])


def test_default_command_is_the_login_shell(world, pastas, workdir) -> None:
    pasta = start(pastas, world, stdin=f"echo $0 > {workdir}/argv0; exit 4\n")
    assert pasta.wait() == 4
    with open(f"{workdir}/argv0") as f:
        assert f.read() == "-/bin/sh\n"


def test_command_killed_by_signal_gives_128_plus_signal(world, pastas) -> None:
    pasta = start(pastas, world, "--", "sh", "-c", "kill -USR1 $$")
    assert pasta.wait() == 128 + signal.SIGUSR1


def test_failing_exec_is_status_1_with_a_message(world, pastas) -> None:
    pasta = start(pastas, world, "--", "/nonexistent/program")
    assert pasta.wait() == 1
    assert "Failed to run /nonexistent/program: No such file or directory" in pasta.stderr()


def test_sigterm_leaves_no_process_namespace_or_tap(world, pastas, workdir) -> None:
    pasta = start(pastas, world, "--config-net", "--", *waiting_command(workdir, 0))
    child = int(read_when_written(f"{workdir}/ready"))
    inode = os.stat(f"/proc/{child}/ns/net").st_ino
    started = time.monotonic()
    pasta.proc.send_signal(signal.SIGTERM)
    assert pasta.wait() == 0  # upstream 2026: SIGTERM exits 0
    print(f"SIGTERM to exit: {time.monotonic() - started:.3f} s")
    assert process_gone(child)
    # The command's shell may leave its last ``sleep 0.05`` behind (an orphan
    # keeps the namespace, as upstream): pasta exits sooner than that now.
    wait_until(lambda: holders_of_netns(inode) == [], "the namespace to go with its processes")


# -- attaching to existing namespaces ----------------------------------------------------


def test_attach_in_background_then_quit_when_deleted(world, pastas, target_ns, workdir) -> None:
    pid_file = f"{workdir}/pasta.pid"
    started = time.monotonic()
    pasta = start(pastas, world, "--netns", target_ns, "--pid", pid_file, "--config-net",
                  "-m", "1500")
    assert pasta.wait() == 0  # the parent, once the daemon is ready
    print(f"start to ready (background): {time.monotonic() - started:.3f} s")
    daemon_pid = int(read_when_written(pid_file))
    try:
        assert daemon_pid != pasta.proc.pid and not process_gone(daemon_pid)
        assert_configured(netns=target_ns, mtu=1500)
        subprocess.run(["ip", "netns", "del", target_ns], check=True, timeout=20)
        wait_until(lambda: process_gone(daemon_pid), "pasta to quit")
    finally:
        if not process_gone(daemon_pid):
            os.kill(daemon_pid, signal.SIGKILL)


def test_attach_by_path_no_quit_and_sigterm_removes_tap(world, pastas, target_ns) -> None:
    path = f"/run/netns/{target_ns}"
    pasta = start(pastas, world, "-f", "--netns", path, "--no-netns-quit")
    wait_until(lambda: IFNAME in link_names(netns=target_ns), "the tap")
    other = f"{target_ns}-x"  # deleting another name in the directory is no reason to quit
    subprocess.run(["ip", "netns", "add", other], check=True, timeout=20)
    subprocess.run(["ip", "netns", "del", other], check=True, timeout=20)
    time.sleep(0.3)
    assert pasta.proc.poll() is None
    pasta.proc.send_signal(signal.SIGTERM)
    assert pasta.wait() == 0
    assert link_names(netns=target_ns) == ["lo"]


def test_attach_by_pid_quits_when_the_process_exits(world, pastas) -> None:
    with sleeping_target(world) as target:
        pasta = start(pastas, world, "-f", "--config-net", str(target.pid))
        wait_until(lambda: IFNAME in link_names(pid=target.pid), "the tap")
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
def test_bad_input_is_one_line_and_status_1(world, pastas, target_ns, args, message) -> None:
    pid = str(dead_pid())
    words = [pid if w == "DEAD" else target_ns if w == "TARGET" else w for w in args.split()]
    tun = "/nonexistent/tun" if words[0] == "TUN" else ""
    pasta = start(pastas, world, *words[1 if tun else 0:], tun=tun)
    assert pasta.wait() == 1
    assert pasta.stderr().splitlines() == [message.replace("DEAD", pid)]
    if target_ns in words:
        assert link_names(netns=target_ns) == ["lo"]


def test_no_template_interface_is_one_line(world, pastas, target_ns) -> None:
    """A host without default routes: nothing to copy."""
    pasta = Pasta(target_ns, ["--", "true"])
    pastas.append(pasta)
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


def test_rootless_command_in_its_own_user_namespace(world, pastas, workdir, user,
                                                   user_tun) -> None:
    pasta = start(pastas, world, "--config-net", "--", *waiting_command(workdir, 5),
                  user=user, tun=user_tun)
    pid = int(read_when_written(f"{workdir}/ready"))
    assert_configured(pid=pid)
    for name, outer in (("uid_map", user.pw_uid), ("gid_map", user.pw_gid)):
        with open(f"/proc/{pid}/{name}") as f:
            assert f.read().split() == ["0", str(outer), "1"]
    with open(f"/proc/{pid}/setgroups") as f:
        assert f.read().strip() == "deny"
    assert os.stat(f"/proc/{pasta.proc.pid}").st_uid == user.pw_uid
    touch(f"{workdir}/stop")
    assert pasta.wait() == 5


def test_rootless_attach_by_pid_joins_the_user_namespace(world, pastas, user, user_tun) -> None:
    with sleeping_target(world, *as_user(user)) as target:
        pasta = start(pastas, world, "-f", "--config-net", str(target.pid), user=user,
                      tun=user_tun)
        wait_until(lambda: IFNAME in link_names(pid=target.pid), "the tap")
        assert_configured(pid=target.pid)
        target.kill()
        assert pasta.wait() == 0


def test_rootless_without_user_namespace_is_refused(world, pastas, user, user_tun,
                                                   target_ns) -> None:
    pasta = start(pastas, world, "-f", "--netns", target_ns, user=user, tun=user_tun)
    assert pasta.wait() == 1
    assert pasta.stderr().splitlines() == [
        "Couldn't enter network namespace: Operation not permitted"]


def test_rootless_command_without_user_namespace_is_refused(world, pastas, user,
                                                           user_tun) -> None:
    pasta = start(pastas, world, "--netns-only", "--", "true", user=user, tun=user_tun)
    assert pasta.wait() == 1
    assert pasta.stderr().splitlines() == [
        "Couldn't create namespaces for the command: Operation not permitted"]


def test_world_tools_present() -> None:
    for tool in ("nsenter", "setpriv", "unshare", "useradd"):
        assert shutil.which(tool, path=PATH), tool
    assert os.access(SYSTEM_PYTHON, os.X_OK)
