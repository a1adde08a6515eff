"""L2 and L3 services as the guest or namespace sees them.

Theory of operation: passt and pasta answer ARP, NDP, DHCP and DHCPv6
themselves and relay echo requests.  These helpers exercise them from the
inside with ordinary tools, the way a distribution would: busybox udhcpc
(with test/guest/udhcpc.script, which records the lease it got), the
kernel's own SLAAC from the router advertisement, a DHCPv6 Solicit sent
with socat (dhcpv6.py builds and parses it), busybox arping and ping, and
the kernel's neighbour table.  The same code runs in the QEMU guest and in
a pasta namespace: only the interface name differs, and the shell knows it.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable

from . import dhcpv6
from .shell import Shell, ShellError
from .world import FAMILIES, RESOLVERS, V4, V6

UDHCPC_SCRIPT = "udhcpc.script"
LEASE_FILE = "lease"


def configure(shell: Shell, timeout: float = 30.0) -> None:
    """Bring the interface up and configure it by DHCP, SLAAC and DHCPv6.

    The DHCPv6 address is added as a distribution's client would (a /128,
    the prefix being on-link by the router advertisement).
    """
    ifname = shell.ifname
    shell.check(f"ip link set {ifname} up")
    shell.check(
        f"E2E_LEASE={shell.path(LEASE_FILE)} busybox udhcpc -i {ifname} -n -q -t 5 -T 2 "
        f"-O mtu -s {shell.path(UDHCPC_SCRIPT)}",
        timeout=timeout,
    )
    slaac_address(shell, timeout)
    offered = dhcpv6_exchange(shell).addresses
    if not offered:
        raise ShellError(f"{shell.name}: DHCPv6 offered no address")
    shell.check(f"ip -6 addr add {offered[0]}/128 dev {ifname}")
    wait_address6(shell, lambda address, flags: address == offered[0], "DHCPv6", timeout)


def read_lease(shell: Shell) -> dict[str, str]:
    """The lease udhcpc got, as recorded by the event script."""
    output = shell.check(f"cat {shell.path(LEASE_FILE)}")
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


_GLOBAL6 = re.compile(r"inet6 ([0-9a-f:]+)/(\d+) scope global(.*)")


def global_addresses6(shell: Shell) -> list[tuple[str, str]]:
    """(address, flags) of the interface's global IPv6 addresses."""
    output = shell.check(f"ip -6 addr show dev {shell.ifname}")
    return [(m.group(1), m.group(3)) for m in _GLOBAL6.finditer(output)]


def slaac_address(shell: Shell, timeout: float = 30.0) -> str:
    """Wait (bounded) for an autoconfigured, non-tentative global address."""
    return wait_address6(shell, lambda address, flags: "dynamic" in flags, "SLAAC", timeout)


def wait_address6(
    shell: Shell, wanted: Callable[[str, str], bool], what: str, timeout: float = 30.0
) -> str:
    """Wait (bounded) until a global IPv6 address that is ``wanted`` (given
    address and flags) has passed duplicate address detection; return it."""
    deadline = time.monotonic() + timeout
    while True:
        usable = [
            address
            for address, flags in global_addresses6(shell)
            if wanted(address, flags) and "tentative" not in flags
        ]
        if usable:
            return usable[0]
        if time.monotonic() >= deadline:
            raise ShellError(f"{shell.name}: no usable {what} address after {timeout} s")
        time.sleep(0.2)


def default_router(shell: Shell, version: int) -> str:
    """The gateway of the default route of IP ``version``."""
    output = shell.check(f"ip -{version} route show default")
    match = re.search(r"default via (\S+)", output)
    if not match:
        raise ShellError(f"{shell.name}: no IPv{version} default route:\n{output}")
    return match.group(1)


def mac_address(shell: Shell) -> str:
    return shell.check(f"cat /sys/class/net/{shell.ifname}/address").strip()


def mtu(shell: Shell) -> int:
    return int(shell.check(f"cat /sys/class/net/{shell.ifname}/mtu"))


def dhcpv6_exchange(shell: Shell) -> dhcpv6.Answer:
    """Send a Solicit from the interface; the server's answer."""
    request, answer = shell.path("dhcpv6-solicit"), shell.path("dhcpv6-answer")
    hex_solicit = dhcpv6.solicit(mac_address(shell)).hex()
    shell.check(f"echo {hex_solicit} | busybox xxd -r -p > {request}")
    shell.check(
        f"timeout 15 socat -T 5 -t 2 -b 4096 - "
        f"UDP6-DATAGRAM:[ff02::1:2]:547,bind=[::]:546,so-bindtodevice={shell.ifname} "
        f"< {request} > {answer}",
        timeout=25,
    )
    raw = bytes.fromhex(shell.check(f"busybox xxd -p {answer}").replace("\n", ""))
    if not raw:
        raise ShellError(f"{shell.name}: no DHCPv6 answer to a Solicit")
    return dhcpv6.parse(raw)


def ping(shell: Shell, address: str, version: int) -> str:
    """Two echo requests to ``address``; the output if both came back."""
    tool = "ping" if version == 4 else "ping6"
    scope = f" -I {shell.ifname}" if address.startswith("fe80:") else ""
    output = shell.check(f"busybox {tool} -c 2 -W 5{scope} {address}", timeout=20)
    if "2 packets received" not in output:
        raise ShellError(f"{shell.name}: lost echo replies from {address}:\n{output}")
    return output


def arping(shell: Shell, address: str) -> str:
    """An ARP request for ``address``; the output if it was answered."""
    output = shell.check(f"busybox arping -c 1 -w 5 -I {shell.ifname} {address}", timeout=20)
    if "Received 1 response" not in output:
        raise ShellError(f"{shell.name}: no ARP reply for {address}:\n{output}")
    return output


_LLADDR = re.compile(r"lladdr ([0-9a-f:]{17})")


def neighbour_lladdr(shell: Shell, address: str, version: int) -> str | None:
    """The link-layer address the neighbour table holds for ``address``."""
    output = shell.check(f"ip -{version} neigh show dev {shell.ifname}")
    for line in output.splitlines():
        match = _LLADDR.search(line)
        if line.startswith(f"{address} ") and match and "FAILED" not in line:
            return match.group(1)
    return None


def check(name: str, version: int, shell: Shell, address: str | None = None) -> str:
    """Run L2 check ``name`` for IP ``version`` in ``shell``; a one-line account.

    ``address``: the one the guest or namespace must have been given for
    ``version``, where that is not the host's (libvirt's ``--address``).
    """
    return _CHECKS[(name, version)](shell, address or FAMILIES[version].host)


def _check_dhcp(shell: Shell, address: str) -> str:
    lease = read_lease(shell)
    expected = {"ip": address, "mask": str(V4.prefix), "router": V4.gateway,
                "dns": RESOLVERS[4], "mtu": "65520"}
    got = {key: lease.get(key, "").strip() for key in expected}
    assert got == expected, f"DHCP lease {got}, expected {expected}"
    assert mtu(shell) == 65520, f"interface MTU {mtu(shell)} after the lease"
    return f"lease {got}"


def _check_dhcpv6(shell: Shell, address: str) -> str:
    answer = dhcpv6_exchange(shell)
    assert answer.msg_type in (dhcpv6.REPLY, dhcpv6.ADVERTISE), f"message type {answer.msg_type}"
    assert answer.has_server_id, "no server identifier"
    assert answer.addresses == [address], f"offered {answer.addresses}, expected {address}"
    assert RESOLVERS[6] in answer.dns, f"DNS servers {answer.dns}, expected {RESOLVERS[6]}"
    return f"offered {answer.addresses}, DNS {answer.dns}"


def _check_slaac(shell: Shell, address: str) -> str:
    autoconfigured = ipaddress.IPv6Address(slaac_address(shell))
    network = ipaddress.IPv6Network(f"{address}/{V6.prefix}", strict=False)
    assert autoconfigured in network, f"SLAAC address {autoconfigured} outside {network}"
    router = default_router(shell, 6)
    assert router.startswith("fe80:"), f"default router {router} is not link-local"
    return f"address {autoconfigured}, router {router}"


def _check_neighbour4(shell: Shell, address: str) -> str:
    arping(shell, V4.gateway)
    ping(shell, V4.gateway, 4)  # arping bypasses the kernel's table; this fills it
    lladdr = neighbour_lladdr(shell, V4.gateway, 4)
    assert lladdr, f"{V4.gateway} not resolved in the neighbour table"
    return f"{V4.gateway} is at {lladdr}"


def _check_neighbour6(shell: Shell, address: str) -> str:
    resolved = []
    for address in (default_router(shell, 6), V6.gateway):
        ping(shell, address, 6)
        lladdr = neighbour_lladdr(shell, address, 6)
        assert lladdr, f"{address} not resolved in the neighbour table"
        resolved.append(f"{address} is at {lladdr}")
    return "; ".join(resolved)


def _ping_check(attribute: str, version: int) -> Callable[[Shell, str], str]:
    def run(shell: Shell, address: str) -> str:
        target = getattr(FAMILIES[version], attribute)
        ping(shell, target, version)
        return f"{target} answers"

    return run


_CHECKS: dict[tuple[str, int], Callable[[Shell, str], str]] = {
    ("dhcp", 4): _check_dhcp,
    ("dhcpv6", 6): _check_dhcpv6,
    ("slaac", 6): _check_slaac,
    ("neighbour", 4): _check_neighbour4,
    ("neighbour", 6): _check_neighbour6,
    ("ping_gateway", 4): _ping_check("gateway", 4),
    ("ping_gateway", 6): _ping_check("gateway", 6),
    ("ping_remote", 4): _ping_check("remote", 4),
    ("ping_remote", 6): _ping_check("remote", 6),
}
CHECKS = tuple(_CHECKS)
