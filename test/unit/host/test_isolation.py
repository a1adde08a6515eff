"""Isolation: the plan for each way of being started, and the real thing in a process.

The plan (``isolation.plan``) is pure: who to become, which namespaces,
which capabilities, for passt and pasta started by root or not, with or
without ``--runas``.  Then ``isolation.isolate`` runs for real in a child
Python process (as passt would, single-threaded; as pasta would, with an
``NsRunner`` thread): the child reports what it can still do, the test
reads ``/proc/PID/status`` of every task while the child waits, and both
must show the isolated state: ``nobody``, no capabilities but those kept
on purpose, ``NoNewPrivs``, a seccomp filter, an empty root (seen from
outside: inside, even listing it is refused), ``execve`` and ``open``
refused, sockets still working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from passt import conf
from passt.host import isolation
from passt.host.isolation import CAP_KILL, CAP_NET_BIND_SERVICE, plan

NOBODY = (65534, 65534)
ROOT = (0, 0)
USER = (1000, 1000)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: drops privileges")


def parsed(mode: str, *args: str) -> conf.Conf:
    return conf.parse(mode, list(args))


# -- the plan ------------------------------------------------------------------------


def test_passt_started_by_root_becomes_nobody_in_a_user_namespace_of_its_own() -> None:
    p = plan(parsed("passt"), "passt", started_as=ROOT, nobody=NOBODY)
    assert (p.ids, p.new_userns, p.caps, p.runner_caps) == (NOBODY, True, 0, 0)
    assert p.syscalls == isolation.PASST_SYSCALLS


def test_runas_is_who_we_become_and_runas_of_ourselves_changes_nothing() -> None:
    assert plan(parsed("passt", "--runas", "1000:1000"), "passt", started_as=ROOT).ids == USER
    assert plan(parsed("passt", "--runas", "0"), "passt", started_as=ROOT).ids is None
    assert plan(parsed("passt"), "passt", started_as=USER).ids is None


def test_pasta_keeps_net_bind_service_only_for_auto_forwarding() -> None:
    auto = plan(parsed("pasta"), "pasta", started_as=USER)  # pasta's default: auto
    assert (auto.new_userns, auto.caps, auto.runner_caps) == (False, 1 << CAP_NET_BIND_SERVICE,
                                                              1 << CAP_NET_BIND_SERVICE)
    fixed = plan(parsed("pasta", "-t", "80", "-u", "none", "-T", "none", "-U", "none"), "pasta",
                 started_as=USER)
    assert (fixed.caps, fixed.runner_caps) == (0, 0)
    assert auto.syscalls == isolation.PASTA_SYSCALLS


def test_pasta_that_changes_identity_keeps_the_power_to_end_its_command() -> None:
    options = ("-t", "none", "-u", "none", "-T", "none", "-U", "none")
    spawned = plan(parsed("pasta", *options), "pasta", spawned=True, started_as=ROOT,
                   nobody=NOBODY)
    assert (spawned.ids, spawned.caps, spawned.runner_caps) == (NOBODY, 1 << CAP_KILL, 0)
    attached = plan(parsed("pasta", *options), "pasta", spawned=False, started_as=ROOT,
                    nobody=NOBODY)
    assert attached.caps == 0
    same_user = plan(parsed("pasta", *options), "pasta", spawned=True, started_as=USER)
    assert same_user.caps == 0


def test_binds_later_reads_every_direction() -> None:
    none = SimpleNamespace(mode="none")
    auto = SimpleNamespace(mode="auto")
    for name in ("tcp_ports", "udp_ports", "tcp_ns", "udp_ns"):
        fields = dict.fromkeys(("tcp_ports", "udp_ports", "tcp_ns", "udp_ns"), none)
        assert not isolation.binds_later(SimpleNamespace(**fields))
        fields[name] = auto
        assert isolation.binds_later(SimpleNamespace(**fields))


# -- the real thing -------------------------------------------------------------------

CHILD = r"""
import json, os, socket, sys
from passt import conf
from passt.host import isolation
from passt.host import netns

mode = sys.argv[1]
c = conf.parse(mode, sys.argv[2:])
runner = None
if mode == "pasta":
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    runner = netns.NsRunner(fd)
    os.close(fd)
isolation.isolate(c, mode, runner)

def outcome(fn):
    try:
        return repr(fn())
    except OSError as e:
        return e.__class__.__name__

def loopback():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(b"ping", s.getsockname())
        return s.recv(16)

def checks():
    return {"root": outcome(lambda: os.listdir("/")),
            "open": outcome(lambda: open("/etc/passwd").close()),
            "execve": outcome(lambda: os.execv("/bin/true", ["true"])),
            "socket": outcome(loopback)}

report = {"main": checks()}
if runner is not None:
    report["runner"] = runner.call(checks)
print(json.dumps(report), flush=True)
sys.stdin.readline()
"""


def isolated_child(mode: str, *args: str) -> tuple[dict, dict[int, dict[str, str]]]:
    """Run ``CHILD``: its report, and the status of each of its tasks while it waits."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, *args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()
        assert line, f"the child failed: {child.communicate(timeout=10)[1]}"
        statuses = {int(task): _status(f"/proc/{child.pid}/task/{task}/status")
                    for task in os.listdir(f"/proc/{child.pid}/task")}
        roots = [os.listdir(f"/proc/{child.pid}/task/{task}/root") for task in statuses]
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    report = json.loads(line)
    report["roots"] = roots
    return report, statuses


def _status(path: str) -> dict[str, str]:
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def assert_isolated(statuses: dict[int, dict[str, str]], caps: int) -> None:
    for task, fields in statuses.items():
        described = f"task {task}: {fields['Uid']} {fields['CapEff']} {fields['Seccomp']}"
        print(described)
        assert fields["Uid"].split() == ["65534"] * 4, described
        assert int(fields["CapEff"], 16) == caps, described
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", described


def assert_confined(checks: dict[str, str]) -> None:
    assert checks == {"root": "PermissionError", "open": "PermissionError",
                      "execve": "PermissionError", "socket": "b'ping'"}


@needs_root
def test_passt_isolated_for_real() -> None:
    report, statuses = isolated_child("passt")
    assert len(statuses) == 1
    assert_isolated(statuses, 0)
    assert_confined(report["main"])
    assert report["roots"] == [[]]


@needs_root
def test_pasta_isolated_for_real_in_both_threads() -> None:
    report, statuses = isolated_child("pasta")  # default forwarding: auto
    assert len(statuses) == 2
    assert_isolated(statuses, 1 << CAP_NET_BIND_SERVICE)
    assert_confined(report["main"])
    assert_confined(report["runner"])
    assert report["roots"] == [[], []], "each thread has an empty root of its own"
