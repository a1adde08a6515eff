"""pasta's options that shape the L2/L3 services, seen from inside its namespace.

Theory of operation: the L2 cells of test_pasta.py check what pasta answers
by default; these check that each option turning a service off or changing
what it says (``--no-dhcp``, ``--no-ra``, ``--no-ndp``, ``--no-dhcpv6``,
``--no-icmp``, ``--mtu 0``, ``--dhcp-dns``/``--dhcp-search`` with ``-D`` and
``-S``) does exactly that and nothing more.  Each case starts pasta, without
``--config-net`` and with the option, on a world of its own (world.py), and
pairs what must now fail with a control that must still work, so that a
dead pasta or a broken namespace cannot pass for a disabled service.  A
negative check waits as long as a client would: udhcpc's retries, or a few
seconds of router solicitations.

They are cells of the suite (cells.py), so against our implementation they
wait for the parts they need (features.py), and ``PASST_IMPL=upstream``
runs them against Debian's C pasta, which they must pass too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator

import pytest

from . import l2
from .cells import Cell, cell_id
from .daemon import Daemon
from .deploy import UDHCPC_SCRIPT, Deployment
from .impl import Impl
from .shell import Shell, ShellError
from .world import IFNAME, V4, V6, World

pytestmark = pytest.mark.e2e

NO_FORWARDS = ["-t", "none", "-u", "none", "-T", "none", "-U", "none"]
QUIET_SECONDS = 6.0  # the kernel solicits routers at link-up and every 4 s after
TAP_MTU = 1500  # a tap device's MTU before anybody changes it
DNS4, DNS6, SEARCH = "203.0.113.54", "2001:db8:2::54", "lab.example"


def udhcpc(shell: Shell) -> tuple[int, str]:
    """One DHCP attempt (three tries a second apart); exit status and output."""
    return shell.run(
        f"E2E_LEASE={shell.path(l2.LEASE_FILE)} busybox udhcpc -i {shell.ifname} -n -q "
        f"-t 3 -T 1 -O mtu -O search -s {shell.path(l2.UDHCPC_SCRIPT)}",
        timeout=30,
    )


def lease(shell: Shell) -> dict[str, str]:
    status, output = udhcpc(shell)
    assert status == 0, f"no DHCP lease:\n{output}"
    return l2.read_lease(shell)


def no_slaac(shell: Shell) -> None:
    time.sleep(QUIET_SECONDS)
    assert l2.global_addresses6(shell) == [], "an address was autoconfigured"
    assert shell.check("ip -6 route show default").strip() == "", "a default route appeared"


def ping_fails(shell: Shell, address: str, version: int) -> None:
    tool = "ping" if version == 4 else "ping6"
    status, output = shell.run(f"busybox {tool} -c 1 -W 2 {address}", timeout=15)
    assert status != 0, f"{address} answered:\n{output}"


def check_no_dhcp(shell: Shell) -> None:
    status, output = udhcpc(shell)
    assert status != 0, f"got a lease:\n{output}"
    l2.slaac_address(shell)  # control: NDP still answers


def check_no_ra(shell: Shell) -> None:
    assert lease(shell)["ip"] == V4.host  # control
    no_slaac(shell)
    assert l2.dhcpv6_exchange(shell).addresses == [V6.host]  # DHCPv6 still answers


def check_no_ndp(shell: Shell) -> None:
    assert lease(shell)["ip"] == V4.host  # control
    no_slaac(shell)


def check_no_dhcpv6(shell: Shell) -> None:
    l2.slaac_address(shell)  # control
    with pytest.raises(ShellError):
        l2.dhcpv6_exchange(shell)


def check_no_icmp(shell: Shell) -> None:
    got = lease(shell)
    shell.check(f"ip -4 addr add {got['ip']}/{got['mask']} dev {shell.ifname} 2>/dev/null || true")
    l2.arping(shell, V4.gateway)  # control: ARP still answers
    ping_fails(shell, V4.gateway, 4)
    ping_fails(shell, V6.gateway, 6)


def check_mtu_0(shell: Shell) -> None:
    got = lease(shell)
    assert got["ip"] == V4.host and got["mtu"] == "", f"lease {got}"
    l2.slaac_address(shell)
    assert l2.mtu(shell) == TAP_MTU, "an MTU was advertised"


def check_dhcp_dns_and_search(shell: Shell) -> None:
    got = lease(shell)
    assert (got["dns"].strip(), got["search"].strip()) == (DNS4, SEARCH), f"lease {got}"
    l2.slaac_address(shell)  # also: the link-local address is usable (not tentative)
    assert DNS6 in l2.dhcpv6_exchange(shell).dns


CASES: dict[str, tuple[list[str], Callable[[Shell], None]]] = {
    "no_dhcp": (["--no-dhcp"], check_no_dhcp),
    "no_ra": (["--no-ra"], check_no_ra),
    "no_ndp": (["--no-ndp"], check_no_ndp),
    "no_dhcpv6": (["--no-dhcpv6"], check_no_dhcpv6),
    "no_icmp": (["--no-icmp"], check_no_icmp),
    "mtu_0": (["--mtu", "0"], check_mtu_0),
    "dhcp_dns": (["--dhcp-dns", "--dhcp-search", "-D", DNS4, "-D", DNS6, "-S", SEARCH],
                 check_dhcp_dns_and_search),
}
CELLS = [Cell("pasta", f"option_{name}") for name in CASES]


@pytest.fixture
def pasta_with(
    request: pytest.FixtureRequest, chosen_impl: Impl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[list[str]], Shell]]:
    """Start pasta with given options on a world of its own; the namespace's shell."""
    made: list[Deployment] = []

    def start(options: list[str]) -> Shell:
        workdir = str(tmp_path_factory.mktemp("l2opt"))
        world = World("l2opt", workdir, extra=("ns",)).create()
        netns = world.extra_ns[0]
        argv = chosen_impl.argv("pasta", [*NO_FORWARDS, *options, "--netns", f"/run/netns/{netns}"])
        deployment = Deployment(world, Daemon(argv, world.host_ns, os.path.join(workdir, "log")),
                                world.host)
        made.append(deployment)
        request.node.e2e_deployment = deployment
        inner = deployment.inner = world.shell(netns, "ns")
        shutil.copy(UDHCPC_SCRIPT, inner.path(l2.UDHCPC_SCRIPT))
        deployment.daemon.start(lambda: inner.run(f"test -e /sys/class/net/{IFNAME}")[0] == 0)
        inner.check(f"ip link set {IFNAME} up")
        return inner

    yield start
    for deployment in made:
        deployment.teardown()


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_option(cell: Cell, pasta_with: Callable[[list[str]], Shell]) -> None:
    options, check = CASES[cell.name.removeprefix("option_")]
    check(pasta_with(options))
