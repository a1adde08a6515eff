"""netns: the pure decisions, the helper thread, and the tap's error cases.

Whole-program behaviour (commands, attaching, quitting, rootless) is in
test/e2e/test_pasta_ns.py; here each piece on its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from ipaddress import ip_address

import pytest

from passt.backends import tap
from passt.conf import parse
from passt.host import netns
from passt.host.hostnet import NetInfo
from passt.host.netns import NetnsError, NsRunner, Target
from passt.record import replace


def target(*argv: str, env: dict[str, str] | None = None) -> Target:
    return netns.target_from_conf(parse("pasta", argv), env or {})


def test_command_target_creates_user_and_network_namespaces() -> None:
    t = target("--", "ip", "-j", "addr")
    assert t.spawns and t.create_userns
    assert (t.program, t.argv) == ("ip", ("ip", "-j", "addr"))
    assert t.netns_path is None and t.quit_pid is None and t.quit_path is None
    assert not target("--netns-only", "--", "true").create_userns
    t = target("--userns", "/proc/9/ns/user", "--", "true")  # joined by the command, as upstream
    assert t.spawns and not t.create_userns and t.userns_path == "/proc/9/ns/user"


def test_default_command_is_a_login_shell() -> None:
    t = target(env={"SHELL": "/bin/bash"})
    assert (t.program, t.argv) == ("/bin/bash", ("-/bin/bash",))
    t = target(env={})
    assert (t.program, t.argv) == ("/bin/sh", ("-/bin/sh",))


def test_pid_target_joins_its_user_namespace_unless_told_otherwise() -> None:
    t = target("42")
    assert not t.spawns
    assert t.netns_path == "/proc/42/ns/net" and t.userns_path == "/proc/42/ns/user"
    assert t.quit_pid == 42 and t.quit_path is None
    assert target("--netns-only", "42").userns_path is None
    assert target("--userns", "/run/u", "42").userns_path == "/run/u"
    assert target("--no-netns-quit", "42").quit_pid is None


def test_netns_target_by_name_or_path() -> None:
    t = target("--netns", "blue")
    assert t.netns_path == "/run/netns/blue" and t.quit_path == "/run/netns/blue"
    assert t.userns_path is None  # --netns-only is implied without --userns
    t = target("--netns", "/var/run/ns/red", "--userns", "/proc/7/ns/user", "--no-netns-quit")
    assert t.netns_path == "/var/run/ns/red" and t.userns_path == "/proc/7/ns/user"
    assert t.quit_path is None
    assert target("--netns", "blue", "--userns", "/u", "--netns-only").userns_path is None


def test_daemonizes_only_when_attaching_in_background() -> None:
    def daemonizes(*argv: str) -> bool:
        return netns.daemonizes(parse("pasta", argv))

    assert not daemonizes()
    assert not daemonizes("--", "sh")
    assert daemonizes("1")
    assert daemonizes("--netns", "x")
    assert not daemonizes("--netns", "x", "-f")


def test_id_map_and_exit_status() -> None:
    assert netns.id_map(1000) == "0 1000 1\n"
    assert netns.exit_status(7 << 8) == 7
    assert netns.exit_status(signal.SIGTERM) == 128 + signal.SIGTERM
    assert netns.exit_status(0) == 0


# -- NsRunner ---------------------------------------------------------------------


def netns_inode_of_thread() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_runner_runs_calls_inside_and_propagates_exceptions(scratch_netns) -> None:
    name, fd = scratch_netns
    runner = NsRunner(fd)
    try:
        assert runner.call(netns_inode_of_thread) == os.fstat(fd).st_ino
        assert netns_inode_of_thread() != os.fstat(fd).st_ino  # we stayed outside
        sock = runner.call(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            assert sock.getsockname()[1] > 0  # the namespace's loopback is down but bindable
        finally:
            sock.close()
        with pytest.raises(ZeroDivisionError):
            runner.call(lambda: 1 // 0)
        assert runner.call(lambda a, b=0: a + b, 2, b=3) == 5
        assert runner.call(runner.call, int, "12") == 12  # re-entrant from inside
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(runner.call(str, i)))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(results) == [str(i) for i in range(8)]
    finally:
        runner.close()
    runner.close()
    with pytest.raises(RuntimeError):
        runner.call(int)


def test_runner_refuses_what_is_not_a_network_namespace() -> None:
    fd = os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(NetnsError, match="Couldn't enter network namespace"):
            NsRunner(fd)
    finally:
        os.close(fd)


# -- the tap device -----------------------------------------------------------------


NET = NetInfo(mac=b"\x02\x00\x00\x00\x00\x01", ifname4="eth0",
              addr4=ip_address("198.51.100.1"), prefix4=24, gw4=ip_address("198.51.100.2"))


def spec(ifname: str = "tap9", config_net: bool = False) -> netns.TapSpec:
    return netns.TapSpec(ifname, b"\x02\x00\x00\x00\x00\x42", config_net, NET)


def test_tap_created_inside_with_mac_and_loopback_up(scratch_netns) -> None:
    name, fd = scratch_netns
    runner = NsRunner(fd)
    try:
        tap_fd, mac = runner.call(netns.set_up_inside, spec())
    finally:
        runner.close()
    try:
        assert mac == b"\x02\x00\x00\x00\x00\x42"
        assert not os.get_blocking(tap_fd)
        out = subprocess.run(["ip", "-n", name, "-br", "link"], capture_output=True, text=True,
                             check=True, timeout=20).stdout
        assert "tap9" in out and "02:00:00:00:00:42" in out
        assert "lo               UNKNOWN" in out  # up
        assert "tap9             DOWN" in out  # left to DHCP/SLAAC without --config-net
    finally:
        os.close(tap_fd)


def test_tap_errors_are_one_line(scratch_netns, monkeypatch) -> None:
    name, fd = scratch_netns
    subprocess.run(["ip", "-n", name, "link", "add", "busy0", "type", "veth"], check=True,
                   timeout=20)
    runner = NsRunner(fd)
    try:
        with pytest.raises(NetnsError, match="^Failed to set up tap device busy0: .* "
                                             r"\(interface name in use\)$"):
            runner.call(netns.set_up_inside, spec("busy0"))
        monkeypatch.setattr(tap, "TUN_DEVICE", "/nonexistent/tun")
        with pytest.raises(NetnsError, match="^Failed to open /nonexistent/tun: No such file"):
            runner.call(netns.set_up_inside, spec())
    finally:
        runner.close()


@pytest.mark.parametrize("gw4, gw6, flags4", [
    ("198.51.100.2", "2001:db8:1::2", []),
    ("203.0.113.1", "fe80::1", ["onlink"]),  # outside the subnet: on-link route
])
def test_config_net_addresses_routes_mtu(scratch_netns, gw4, gw6, flags4) -> None:
    name, fd = scratch_netns
    net = replace(NET, mtu=9000, gw4=ip_address(gw4), ifname6="eth0",
                  addr6=ip_address("2001:db8:1::1"), prefix6=64, gw6=ip_address(gw6),
                  ll6=ip_address("fe80::2"))
    runner = NsRunner(fd)
    try:
        tap_fd, _ = runner.call(netns.set_up_inside, netns.TapSpec("eth0", None, True, net))
    finally:
        runner.close()
    try:
        def ip_j(*args: str) -> list[dict]:
            return json.loads(subprocess.run(["ip", "-n", name, "-j", *args], check=True,
                                             capture_output=True, text=True, timeout=20).stdout)

        (link,) = ip_j("addr", "show", "eth0")
        assert link["mtu"] == 9000 and "UP" in link["flags"]
        assert {(a["local"], a["prefixlen"]) for a in link["addr_info"]
                if a["scope"] == "global"} == {("198.51.100.1", 24), ("2001:db8:1::1", 64)}
        v6 = next(a for a in link["addr_info"] if a["local"] == "2001:db8:1::1")
        assert v6.get("nodad") is True
        for family, gateway, flags in (("-4", gw4, flags4), ("-6", gw6, [])):
            (route,) = [r for r in ip_j(family, "route") if r["dst"] == "default"]
            assert route["gateway"] == gateway and route["dev"] == "eth0"
            assert route["flags"] == flags
    finally:
        os.close(tap_fd)


def test_a_proc_netns_path_quits_with_its_process():
    target = netns.make_target((), None, "/proc/4242/ns/net", None, True, False, {})
    assert target.quit_pid == 4242 and target.quit_path is None
    kept = netns.make_target((), None, "/proc/4242/ns/net", None, True, True, {})
    assert kept.quit_pid is None and kept.quit_path is None
    named = netns.make_target((), None, "/run/netns/x", None, True, False, {})
    assert named.quit_path == "/run/netns/x" and named.quit_pid is None
