"""The test world: a "host" namespace and a "remote" one that plays the outside.

Theory of operation: passt and pasta take their addresses and routes from
the host they run on, and reach the outside world through the host's
sockets.  The suite must never touch the machine's real interfaces, so it
builds a host of its own: a network namespace ("host") whose only
interface is one end of a veth pair, the other end in a second namespace
("remote") that owns the router address and, on its loopback, the
addresses of outside services.  passt and pasta run inside "host", so they
copy its addresses and default routes, and everything they send goes to
"remote" or to the host namespace's loopback, nowhere else.

Addresses come from the documentation prefixes only (RFC 5737, RFC 3849),
and deliberately not 192.0.2.0/24, which this machine's own interface uses:

    host   ext0  198.51.100.1/24  2001:db8:1::1/64   default via remote
    remote ext0  198.51.100.2/24  2001:db8:1::2/64   (the gateway)
    remote lo    203.0.113.1      2001:db8:2::1      (the "outside" services)

The host namespace's resolv.conf (``/etc/netns/<name>/resolv.conf``, which
``ip netns exec`` binds over /etc/resolv.conf) names a resolver in the
remote namespace, so the DNS servers handed out by DHCP are known.

The remote namespace sends from its service addresses (route ``src``), so
a connection it opens towards the host is never mistaken for one from the
gateway, which passt maps to the host's loopback.  Names are unique per
process, so concurrent runs never meet, and ``destroy`` deletes everything
it made even if creating it failed half-way.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import pexpect

from .shell import Shell

IFNAME = "ext0"


@dataclass(frozen=True)
class Family:
    """The addresses of the world for one IP version."""

    version: int
    host: str  # the host namespace's address: the guest's address too
    gateway: str  # the remote end of the veth: the default router
    remote: str  # the remote namespace's service address
    loopback: str
    prefix: int
    any: str  # wildcard bind address

    @property
    def network(self) -> str:
        """The host/gateway link's prefix, e.g. 198.51.100.0/24."""
        return str(ipaddress.ip_network(f"{self.host}/{self.prefix}", strict=False))

    def url_host(self, address: str) -> str:
        """``address`` as written in a socat address (IPv6 in brackets)."""
        return f"[{address}]" if self.version == 6 else address


V4 = Family(4, "198.51.100.1", "198.51.100.2", "203.0.113.1", "127.0.0.1", 24, "0.0.0.0")
V6 = Family(6, "2001:db8:1::1", "2001:db8:1::2", "2001:db8:2::1", "::1", 64, "::")
RESOLVERS = {4: "203.0.113.53", 6: "2001:db8:2::53"}
FAMILIES = {4: V4, 6: V6}


def ip(*args: str) -> None:
    """Run iproute2's ``ip``; raise with its message on failure."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def netns_shell(netns: str, name: str, workdir: str, ifname: str = IFNAME) -> Shell:
    """A ``Shell`` running in network namespace ``netns``."""
    os.makedirs(workdir, exist_ok=True)
    child = pexpect.spawn(
        "ip",
        ["netns", "exec", netns, "sh", "-c", "stty -echo; exec sh /dev/stdin"],
        encoding="utf-8",
        codec_errors="replace",
        timeout=30,
        echo=False,
        env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
    )
    shell = Shell(name, child, workdir, ifname)
    shell.check("true", timeout=10)
    return shell


def kill_netns_processes(netns: str) -> None:
    """Kill every process whose network namespace is ``netns``."""
    result = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10
    )
    for pid in result.stdout.split():
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass


_WORLD_NETNS = re.compile(r"^e2e-(?:host|remote|ns)-[a-z0-9-]+-(\d+)$")


@functools.cache
def reap_stale_worlds() -> None:
    """Delete worlds left by test processes that died without tearing down.

    A world's namespaces carry the creating process's PID in their names;
    when that process is gone (killed by a CI time limit, say), nothing
    else will ever delete them.  Runs once per process.
    """
    for netns in sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []:
        match = _WORLD_NETNS.match(netns)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            kill_netns_processes(netns)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=20)
            shutil.rmtree(os.path.join("/etc/netns", netns), ignore_errors=True)


class World:
    """The host and remote namespaces, their veth pair, and shells in both."""

    def __init__(self, tag: str, workdir: str, extra: tuple[str, ...] = ()) -> None:
        suffix = f"{tag}-{os.getpid()}"
        self.host_ns = f"e2e-host-{suffix}"
        self.remote_ns = f"e2e-remote-{suffix}"
        self.extra_ns = [f"e2e-{label}-{suffix}" for label in extra]
        self.workdir = workdir
        self.shells: list[Shell] = []
        self.host: Shell
        self.remote: Shell

    def create(self) -> World:
        """Build the namespaces and start a shell in host and remote."""
        reap_stale_worlds()
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def _create(self) -> None:
        for netns in self.extra_ns:
            ip("netns", "add", netns)
        ip("netns", "add", self.host_ns)
        os.makedirs(self._etc(self.host_ns), exist_ok=True)
        with open(os.path.join(self._etc(self.host_ns), "resolv.conf"), "w") as f:
            f.writelines(f"nameserver {address}\n" for address in RESOLVERS.values())
        ip("netns", "add", self.remote_ns)
        ip("link", "add", IFNAME, "netns", self.host_ns, "type", "veth",
           "peer", "name", IFNAME, "netns", self.remote_ns)
        self._address(self.host_ns, V4.host, V6.host)
        self._address(self.remote_ns, V4.gateway, V6.gateway)
        ip("-n", self.remote_ns, "addr", "add", f"{V4.remote}/32", "dev", "lo")
        ip("-n", self.remote_ns, "addr", "add", f"{V6.remote}/128", "dev", "lo")
        for netns in (self.host_ns, self.remote_ns):
            ip("-n", netns, "link", "set", IFNAME, "up")
        for family in (V4, V6):
            v = f"-{family.version}"
            ip("-n", self.host_ns, v, "route", "add", "default", "via", family.gateway)
            # Same metric as the kernel's own route to the link, so that
            # "replace" replaces it instead of adding a route that never wins.
            ip("-n", self.remote_ns, v, "route", "replace", family.network, "dev", IFNAME,
               "src", family.remote, "metric", "0" if family.version == 4 else "256")
        self.host = self.shell(self.host_ns, "host")
        self.remote = self.shell(self.remote_ns, "remote")
        # What distributions set, so that passt and pasta may open ping sockets.
        self.host.check("sysctl -qw net.ipv4.ping_group_range='0 2147483647'")

    def _address(self, netns: str, v4: str, v6: str) -> None:
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", netns, "addr", "add", f"{v4}/{V4.prefix}", "dev", IFNAME)
        ip("-n", netns, "addr", "add", f"{v6}/{V6.prefix}", "dev", IFNAME, "nodad")

    def shell(self, netns: str, label: str, ifname: str = IFNAME) -> Shell:
        """A new shell in ``netns``, closed with the world."""
        shell = netns_shell(netns, label, os.path.join(self.workdir, label), ifname)
        self.shells.append(shell)
        return shell

    @staticmethod
    def _etc(netns: str) -> str:
        return os.path.join("/etc/netns", netns)

    def destroy(self) -> None:
        """Kill what runs in the namespaces and delete them (never raises)."""
        for shell in self.shells:
            shell.close()
        for netns in [*self.extra_ns, self.host_ns, self.remote_ns]:
            kill_netns_processes(netns)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=20)
        shutil.rmtree(self._etc(self.host_ns), ignore_errors=True)
