"""Start-up time and memory of our pasta and passt against upstream 2026.

Theory of operation
-------------------
``make bench`` measures whole subjects side by side; this tool looks only at
what happens before the first frame is served, and at memory, with enough
repetitions to read medians on a busy machine.  Every program runs in the
"host" namespace of a world of its own (test/e2e/world.py: a veth to a
"remote" namespace, nothing of the machine's own network), entered with
``setns`` in the child between ``fork`` and ``exec`` so that no ``ip netns
exec`` adds its own start-up to the figures.

Ours runs as installed programs run it (tools/installtree.py's launcher):
``python3 -IS`` with the site directories on ``sys.path``, the interpreter
given by ``--python`` (default: Debian's ``/usr/bin/python3``, as the
Debian package uses it), the package from this tree, byte-compiled.

The cells, each ``--runs`` times, ours and upstream alternately:

- **command**: ``pasta --config-net -- /bin/true``, the whole process: wall
  time, CPU time (user + system, from ``wait4``) and peak RSS (``ru_maxrss``);
- **attach**: ``pasta --config-net --netns PATH`` on a fresh namespace:
  from spawning until the namespace has its IPv4 default route (polled
  every millisecond from a thread inside it), and from then until a UDP
  datagram sent at once to the gateway reaches a socket on the host's
  loopback (``served``: the time the namespace waits for pasta's event loop);
- **passt**: ``passt -1 -s PATH`` until its socket accepts a connection;
- **memory**: pasta attached, ``VmRSS`` once ready and idle, then ``VmRSS``
  and ``VmHWM`` after 200 parallel TCP connections from the namespace to
  the remote one, each carrying 64 KiB both ways through the tap.

Run as root: ``build/venv/bin/python bench/startup.py [--runs 9]``;
``--baseline TREE`` adds another checkout (say, a worktree of an older
commit), run the same way, and the table then says in how many rounds ours
did better than it (subjects alternate round by round: an A/B comparison).
``--no-upstream`` leaves upstream out.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
from e2e.world import V4, World  # noqa: E402

UPSTREAM = os.path.join(ROOT, "build", "upstream-2026")
CLONE_NEWNET = 0x40000000
POLL = 0.001
TIMEOUT = 20.0
CONNECTIONS = 200
PAYLOAD = 64 << 10
UDP_PORT = 47001
TCP_PORT = 47002
COMMON = ["-f", "-e", "--runas", "0"]

_libc = ctypes.CDLL(None, use_errno=True)


def setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def in_netns(path: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` run by a thread inside the network namespace ``path``."""
    result: list[Any] = []

    def body() -> None:
        setns(path)
        result.append(fn())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError(f"nothing done in {path}")
    return result[0]


def launcher(python: str, numpy: bool = True, tree: str = ROOT) -> Callable[[str], list[str]]:
    """Our programs' argv prefixes, as tools/installtree.py's launchers run them, the
    package from ``tree`` (without the site directories if not ``numpy``: where it
    is not installed)."""
    site = subprocess.run([python, "-I", "-c", "import sys, json; print(json.dumps(sys.path))"],
                          capture_output=True, text=True, check=True).stdout
    nosite = subprocess.run([python, "-IS", "-c", "import sys, json; print(json.dumps(sys.path))"],
                            capture_output=True, text=True, check=True).stdout
    extra = [p for p in eval(site) if p not in eval(nosite)] if numpy else []  # noqa: S307
    subprocess.run([python, "-m", "compileall", "-q", os.path.join(tree, "passt")], check=True)
    return lambda program: [python, "-IS", "-c",
                            f"import gc; gc.disable(); import sys; sys.path += {extra!r}; "
                            f"sys.path.insert(0, {tree!r}); "
                            f"from passt.cli import main_{program}; main_{program}()"]


def upstream(program: str) -> list[str]:
    return [os.path.join(UPSTREAM, program)]


class Subject:
    def __init__(self, name: str, prefix: Callable[[str], list[str]]) -> None:
        self.name = name
        self.prefix = prefix

    def spawn(self, host_ns: str, program: str, options: list[str],
              **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.prefix(program), *COMMON, *options],
                                preexec_fn=lambda: setns(host_ns), **kwargs)


# -- the cells ----------------------------------------------------------------------


def command_run(subject: Subject, world: World) -> dict[str, float]:
    began = time.perf_counter()
    proc = subject.spawn(f"/run/netns/{world.host_ns}", "pasta",
                         ["--config-net", "--", "/bin/true"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{subject.name}: pasta -- /bin/true exited {proc.returncode}")
    return {"wall_ms": wall * 1e3, "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1e3,
            "maxrss_mib": usage.ru_maxrss / 1024}


@contextlib.contextmanager
def scratch_netns(tag: str) -> Iterator[str]:
    name = f"su-{tag}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def default_route(_: None = None) -> bool:
    with open("/proc/thread-self/net/route") as f:
        return any(line.split()[1] == "00000000" for line in f.readlines()[1:])


@contextlib.contextmanager
def attached(subject: Subject, world: World, netns: str) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                             dict[str, float]]]:
    """pasta attached to ``netns``; yields it and its start-up times."""
    host_ns = f"/run/netns/{world.host_ns}"
    sink = in_netns(host_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sink.bind(("127.0.0.1", UDP_PORT))
    sink.settimeout(TIMEOUT)
    times: dict[str, float] = {}
    began = time.perf_counter()
    proc = subject.spawn(host_ns, "pasta", ["--config-net", "-t", "none", "-u", "none",
                                            "-T", "none", "-U", "none", "--netns", netns],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def wait_route() -> float:
            while not default_route():
                if proc.poll() is not None or time.perf_counter() - began > TIMEOUT:
                    raise RuntimeError(f"{subject.name}: no default route")
                time.sleep(POLL)
            up = time.perf_counter()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.sendto(b"x", (V4.gateway, UDP_PORT))
            return up

        up = in_netns(netns, wait_route)
        times["route_ms"] = (up - began) * 1e3
        sink.recv(16)
        times["served_ms"] = (time.perf_counter() - up) * 1e3
        yield proc, times
    finally:
        sink.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(TIMEOUT)


def attach_run(subject: Subject, world: World) -> dict[str, float]:
    with scratch_netns("attach") as netns, attached(subject, world, netns) as (_, times):
        return times


def passt_run(subject: Subject, world: World) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "passt.socket")
        began = time.perf_counter()
        proc = subject.spawn(f"/run/netns/{world.host_ns}", "passt",
                             ["-1", "-s", path, "-t", "none", "-u", "none"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    try:
                        probe.connect(path)
                        break
                    except OSError:
                        pass
                if proc.poll() is not None or time.perf_counter() - began > TIMEOUT:
                    raise RuntimeError(f"{subject.name}: passt never listened")
                time.sleep(POLL)
            return {"listen_ms": (time.perf_counter() - began) * 1e3}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(TIMEOUT)


def status_kib(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def memory_run(subject: Subject, world: World) -> dict[str, float]:
    remote = f"/run/netns/{world.remote_ns}"
    listener = in_netns(remote, lambda: socket.create_server((V4.remote, TCP_PORT),
                                                             backlog=CONNECTIONS))
    listener.settimeout(TIMEOUT)
    with listener, scratch_netns("memory") as netns, \
            attached(subject, world, netns) as (proc, _times):
        time.sleep(0.5)
        idle = status_kib(proc.pid)["VmRSS"]
        clients = in_netns(netns, lambda: [socket.socket() for _ in range(CONNECTIONS)])
        served = []
        try:
            payload = os.urandom(PAYLOAD)
            for client in clients:
                client.settimeout(TIMEOUT)
                client.connect((V4.remote, TCP_PORT))
                server, _ = listener.accept()
                server.settimeout(TIMEOUT)
                served.append(server)
            for client, server in zip(clients, served, strict=True):
                client.sendall(payload)
                got = bytearray()
                while len(got) < PAYLOAD:
                    got += server.recv(PAYLOAD)
                server.sendall(got)
                back = bytearray()
                while len(back) < PAYLOAD:
                    back += client.recv(PAYLOAD)
            loaded = status_kib(proc.pid)
        finally:
            for s in clients + served:
                s.close()
    return {"idle_mib": idle, "loaded_mib": loaded["VmRSS"], "peak_mib": loaded["VmHWM"]}


CELLS: dict[str, Callable[[Subject, World], dict[str, float]]] = {
    "command": command_run, "attach": attach_run, "passt": passt_run, "memory": memory_run,
}


def table(results: dict[tuple[str, str], dict[str, list[float]]], names: list[str]) -> list[str]:
    """Medians (min-max) per subject; ours / upstream, ours / before and in how many
    rounds ours was lower (better, for every figure here) than before."""
    ratios = [name for name in ("upstream", "before") if name in names]
    lines = [f"{'cell':20} " + " ".join(f"{name + ' (median, min-max)':26}" for name in names)
             + "".join(f" ours/{name[:2]}" for name in ratios)
             + (" ours better" if "before" in names else "")]
    for (cell, key), by in results.items():
        med = {name: statistics.median(values) for name, values in by.items()}
        text = {name: f"{med[name]:.1f} ({min(v):.1f}-{max(v):.1f})" for name, v in by.items()}
        line = (f"{cell + ' ' + key:20} " + " ".join(f"{text[name]:26}" for name in names)
                + "".join(f" {med['ours'] / med[name]:7.2f}" for name in ratios))
        if "before" in names:
            won = sum(a < b for a, b in zip(by["ours"], by["before"], strict=True))
            line += f" {won:4}/{len(by['ours'])}"
        lines.append(line)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--python", default="/usr/bin/python3")
    parser.add_argument("--only", default=",".join(CELLS))
    parser.add_argument("--without-numpy", action="store_true",
                        help="also measure ours where NumPy is not installed")
    parser.add_argument("--baseline", metavar="TREE",
                        help="also measure the checkout TREE (another commit's worktree)")
    parser.add_argument("--no-upstream", action="store_true", help="leave upstream out")
    args = parser.parse_args()
    subjects = [Subject("ours", launcher(args.python))]
    if not args.no_upstream:
        subjects.append(Subject("upstream", upstream))
    if args.without_numpy:
        subjects.append(Subject("no-numpy", launcher(args.python, numpy=False)))
    if args.baseline:
        subjects.append(Subject("before", launcher(args.python, tree=args.baseline)))
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    workdir = tempfile.mkdtemp(prefix="startup-")
    world = World("startup", workdir).create()
    try:
        for cell in args.only.split(","):
            runs = args.runs if cell != "memory" else max(1, args.runs // 3)
            for index in range(runs):  # a rotating order: drift falls on every subject
                shift = index % len(subjects)
                for subject in subjects[shift:] + subjects[:shift]:
                    for key, value in CELLS[cell](subject, world).items():
                        results.setdefault((cell, key), {}).setdefault(subject.name, []).append(
                            value)
    finally:
        world.destroy()
        subprocess.run(["rm", "-rf", workdir], timeout=20)
    for line in table(results, [subject.name for subject in subjects]):
        print(line)
    print(f"runs {args.runs}, python {args.python}, load {os.getloadavg()[0]:.2f}, "
          f"self maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
