"""The direction matrix: which cells exist and what each one connects.

Theory of operation: a cell is one program (passt with a guest, pasta with
a namespace), one direction, one protocol and one IP version.  The
direction decides which end is the client, which the server, what address
the client dials and what the server binds, all in terms of the world
(world.py), so that the traffic checks (traffic.py) know nothing of
directions:

- ``out``: guest/namespace -> a service in the remote namespace;
- ``out_host``: guest/namespace -> the gateway address, which passt and
  pasta map to the host's loopback, where the service listens;
- ``in``: remote namespace -> the host's address, a forwarded port
  (``-t``/``-u``) -> service in the guest/namespace;
- ``in_host``: the host's loopback -> the same forwarded port (pasta: the
  spliced path; passt: through the tap);
- ``ns_to_host`` (pasta only): the namespace's loopback -> a port forwarded
  with ``-T``/``-U`` -> a service on the host's loopback (spliced).

Servers bind the address their traffic must arrive at (the guest's own
address for ``in``: the forwarded traffic must reach it, not some other
address of the guest; that is the host's, unless passt was given another
with ``--address``, as libvirt does), except for ``in_host``, whose
traffic may arrive through the tap or, for pasta, from the namespace's
loopback.

Each direction has its own ports where two services could otherwise meet
in one namespace (passt and pasta listen on the forwarded ports in the
host namespace, so the host's own services use others).  Each set holds
the iperf3 port (TCP control and, for UDP tests, UDP data), the socat
stream port and the socat datagram port.
"""

from __future__ import annotations

from dataclasses import dataclass

from .shell import Shell
from .world import FAMILIES, Family, World


@dataclass(frozen=True)
class Ports:
    iperf: int
    stream: int
    dgram: int

    def tcp_spec(self) -> str:
        return f"{self.iperf},{self.stream}"

    def udp_spec(self) -> str:
        return f"{self.iperf},{self.dgram}"


REMOTE_PORTS = Ports(5201, 10001, 10002)  # services in the remote namespace
FORWARDED = Ports(5201, 10001, 10002)  # -t/-u: host -> guest/namespace
HOST_SERVICES = Ports(5301, 10101, 10102)  # host loopback, reached via the gateway
NS_FORWARDED = Ports(5401, 10201, 10202)  # pasta -T/-U: namespace -> host loopback

# Inbound first: the first contact with a fresh guest or namespace must reach
# the address it was given, before it has sent anything from that address.
DIRECTIONS = {
    "passt": ("in", "in_host", "out", "out_host"),
    "pasta": ("in", "in_host", "out", "out_host", "ns_to_host"),
}
PROTOCOLS = ("tcp", "udp")
VERSIONS = (4, 6)


@dataclass(frozen=True)
class Cell:
    """One check of the suite: program, what is checked, protocol, IP version."""

    program: str
    name: str  # a direction, or the name of an L2 check
    proto: str = ""
    version: int = 0

    @property
    def label(self) -> str:
        parts = [self.program, self.name, self.proto, f"v{self.version}" if self.version else ""]
        return " ".join(p for p in parts if p)

    @property
    def family(self) -> Family:
        return FAMILIES[self.version]


def cell_id(cell: Cell) -> str:
    """pytest's id for a test parametrized with ``cell``."""
    return cell.label.replace(" ", "-")


def matrix(program: str) -> list[Cell]:
    """Every direction cell of ``program``."""
    return [
        Cell(program, direction, proto, version)
        for direction in DIRECTIONS[program]
        for proto in PROTOCOLS
        for version in VERSIONS
    ]


def l2_cells(program: str, checks: tuple[tuple[str, int], ...]) -> list[Cell]:
    """Cells of the L2 checks (name, IP version) of ``program``."""
    return [Cell(program, name, "", version) for name, version in checks]


def forward_options(program: str) -> list[str]:
    """The forwarding options the matrix needs from ``program``."""
    options = ["-t", FORWARDED.tcp_spec(), "-u", FORWARDED.udp_spec()]
    if program == "pasta":
        options += ["-T", NS_FORWARDED.tcp_spec(), "-U", NS_FORWARDED.udp_spec()]
    return options


@dataclass(frozen=True)
class Path:
    """Concrete ends of one cell: who dials what, who listens where."""

    client: Shell
    server: Shell
    target: str  # address the client dials
    bind: str  # address the server binds
    ports: Ports
    family: Family


def path(cell: Cell, world: World, inner: Shell, address: str | None = None) -> Path:
    """The ends of ``cell``, with ``inner`` the guest's or namespace's shell and
    ``address`` its address of the cell's IP version where that is not the
    host's (libvirt's ``--address``): the one forwarded traffic must reach."""
    f = cell.family
    own = address or f.host
    ends = {
        "out": (inner, world.remote, f.remote, f.remote, REMOTE_PORTS),
        "out_host": (inner, world.host, f.gateway, f.loopback, HOST_SERVICES),
        "in": (world.remote, inner, f.host, own, FORWARDED),
        "in_host": (world.host, inner, f.loopback, f.any, FORWARDED),
        "ns_to_host": (inner, world.host, f.loopback, f.loopback, NS_FORWARDED),
    }
    client, server, target, bind, ports = ends[cell.name]
    return Path(client, server, target, bind, ports, f)
