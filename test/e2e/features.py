"""Which part of ours each cell needs, and which cells upstream itself fails.

Theory of operation: the suite is written ahead of the program it tests.
A cell that needs a part of ours that has not landed yet is reported
"not built yet (issue N)" instead of failing for a reason nobody needs to
read.  A part counts as present when its module exists and exposes its
entry point; the table below is the single place that says so, so each
marker goes away by itself when the part lands (and a part that lands
broken fails its cells, as it should).

The same suite run against Debian's upstream C programs
(``PASST_IMPL=upstream``) proves that the cells test real behaviour.
Where upstream itself gets a cell wrong, ``UPSTREAM_FAILS`` names what it
does wrong; those cells are expected to fail (strictly: should upstream
start passing, the entry must go) only for upstream.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from .cells import Cell


@dataclass(frozen=True)
class Part:
    """A part of ours: the issue that delivers it and its entry points."""

    issue: int
    entry_points: tuple[str, ...]  # "module:attribute", all required

    def present(self) -> bool:
        return all(_exposed(entry) for entry in self.entry_points)


def _exposed(entry: str) -> bool:
    module_name, attribute = entry.split(":")
    if importlib.util.find_spec(module_name) is None:
        return False
    try:
        module = importlib.import_module(module_name)
    except Exception:  # it exists but is broken: present, so its cells fail loudly
        return True
    return hasattr(module, attribute)


PARTS = {
    "core": Part(2, ("passt.conf:parse", "passt.backends.dispatch:Dispatcher", "passt.context:Ctx")),
    "passt socket": Part(8, ("passt.backends.qemu:QemuStream",)),
    "pasta namespace": Part(4, ("passt.host.netns:setup_pasta", "passt.backends.tap:TunTap")),
    "L2 services": Part(
        4,
        ("passt.l2.arp:from_tap", "passt.l2.ndp:from_tap", "passt.l2.dhcp:from_tap",
         "passt.l2.dhcpv6:from_tap"),
    ),
    "ICMP": Part(7, ("passt.flow.icmp:from_tap",)),
    "TCP": Part(5, ("passt.tcp.tap:from_tap",)),
    "UDP": Part(7, ("passt.udp.tap:from_tap",)),
    "port forwarding": Part(6, ("passt.flow.fwd:Forwarder",)),
    "TCP splice": Part(6, ("passt.tcp.splice:TcpSplice",)),
    "UDP splice": Part(6, ("passt.udp.splice:UdpSplice",)),
    "vhost-user": Part(22, ("passt.backends.vhost_backend:VhostUserBackend",)),
}

_BASE = {"passt": ["core", "passt socket", "L2 services"], "pasta": ["core", "pasta namespace"]}
_SPLICED = {("pasta", "in_host"), ("pasta", "ns_to_host")}
_L2_NEEDS = {"ping_gateway": ["ICMP"], "ping_remote": ["ICMP"]}


def parts_needed(cell: Cell) -> list[str]:
    """Names of the parts ``cell`` exercises."""
    needed = list(_BASE[cell.program])
    if cell.name.startswith(VHOST_USER_PREFIX):
        needed.append("vhost-user")
    if cell.proto:  # a direction cell
        if (cell.program, cell.name) in _SPLICED:
            needed.append(f"{cell.proto.upper()} splice")
        else:
            needed.append(cell.proto.upper())
        if cell.name in ("in", "in_host", "ns_to_host"):
            needed.append("port forwarding")
    else:
        if "L2 services" not in needed:
            needed.append("L2 services")
        needed += _L2_NEEDS.get(cell.name, [])
    return needed


def not_built_reason(cell: Cell) -> str | None:
    """Why ``cell`` cannot run against ours yet, or None if it can."""
    missing = [name for name in parts_needed(cell) if not PARTS[name].present()]
    if not missing:
        return None
    listed = ", ".join(f"{name} (issue {PARTS[name].issue})" for name in missing)
    return f"not built yet: {listed}"


# Cells Debian's passt 0.0~git20230309 gets wrong: label -> what it does wrong.
# (Seen in packet captures of the failing cells: --pcap on the tap side,
# tshark on the host's loopback and on the remote veth.)
_HALF_CLOSE = (
    "once the guest/namespace shuts down its sending side (its FIN comes from the tap), "
    "the data still flowing towards it stalls after a few hundred KiB (sometimes with "
    "bytes repeated), so the transfer after the half-close never completes"
)
_LINK_LOCAL_FIRST = (
    "inbound IPv6 for a guest/namespace that has not yet sent from its global address is "
    "delivered to its link-local address instead of the address it was given, so a server "
    "bound to that address is never reached"
)
_GATEWAY_UDP6 = (
    "replies to UDP/IPv6 sent to the gateway address (mapped to the host's ::1) come back "
    "from link-local to link-local instead of from the gateway address, so the sending "
    "socket never receives them"
)
_LOOPBACK_UDP6 = (
    "UDP/IPv6 from the host's ::1 reaches the guest between link-local addresses, and the "
    "guest's replies to it are not relayed back to the host"
)
UPSTREAM_FAILS: dict[str, str] = {
    **{
        f"{program} {direction} tcp v{version}": _HALF_CLOSE
        for program in ("passt", "pasta")
        for direction in ("out", "out_host")
        for version in (4, 6)
    },
    **{
        f"{program} in {proto} v6": _LINK_LOCAL_FIRST
        for program in ("passt", "pasta")
        for proto in ("tcp", "udp")
    },
    "passt out_host udp v6": _GATEWAY_UDP6,
    "pasta out_host udp v6": _GATEWAY_UDP6,
    "passt in_host udp v6": _LOOPBACK_UDP6,
}


VHOST_USER_PREFIX = "vu_"  # cells run over passt --vhost-user (test_passt_vhost_user.py)


def upstream_lacks(cell: Cell) -> str | None:
    """What Debian's 2023 upstream lacks for ``cell`` (the cell is skipped), or None."""
    if cell.name.startswith(VHOST_USER_PREFIX):
        return "Debian's passt 0.0~git20230309 has no --vhost-user (PASST_IMPL=upstream2026)"
    return None


def upstream_failure(cell: Cell) -> str | None:
    return UPSTREAM_FAILS.get(cell.label)
