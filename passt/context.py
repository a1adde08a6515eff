"""``Ctx``: the runtime state every handler shares.

Theory of operation
-------------------
Upstream passt passes one ``struct ctx`` to every function; we do the same
with one mutable object, so that handlers reach the configuration, the host's
addresses, the event loop, the flow table, the tap side and the counters
without globals, and tests can build a context with just what they need.

It is a slotted record (``passt.record``): attribute access is fast on hot paths and a typo
(``ctx.tpc = ...``) fails loudly instead of creating a new attribute.  That
is why each protocol handler's own state has a named field here (``ctx.tcp``,
``ctx.udp``...), set by that handler's initialisation: handlers that need
another's state (the forwarding code handing a socket to TCP, say) find it
there.

``tap`` is the ``TapBackend`` frames are sent through, or ``None`` while no
guest is connected (passt before QEMU connects, or between connections).
``guest_mac`` starts as the broadcast address, as upstream does, so that
frames sent before the guest spoke reach it; the tap dispatcher updates it
from the source address of the guest's frames.

``partial_csum``: TCP frames, and UDP frames over IPv6, to the guest carry
a partial checksum (the pseudo-header's sum alone), and the backend tells
the other side to complete it (pasta's tap with ``IFF_VNET_HDR``:
``NEEDS_CSUM``): no pass over the payload per segment, ours or the
namespace's, and no NumPy loaded (``checksum.without_numpy``): what we
still sum, ICMP and the L2 answers, is small.  Never while capturing: a
capture shows complete checksums.

``stats`` counts events by name: ``drop.<reason>`` for every frame dropped
and why, ``tap.frames_in`` / ``tap.frames_out``, and whatever handlers add.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from passt.flow.table import FlowTable
from passt.record import field, record

if TYPE_CHECKING:
    from passt.backends.base import TapBackend
    from passt.loop import EventLoop
    from passt.pcap import Pcap

BROADCAST_MAC = b"\xff" * 6


@record(slots=True, eq=False)
class Ctx:
    """Runtime state: configuration, host network, loop, flows, tap side."""

    conf: Any = None
    net: Any = None
    loop: EventLoop | None = None
    flows: FlowTable = field(default_factory=FlowTable)
    tap: TapBackend | None = None
    stats: Counter[str] = field(default_factory=Counter)
    pcap: Pcap | None = None
    guest_mac: bytes = BROADCAST_MAC
    partial_csum: bool = False

    # Per-handler state, set by each handler's initialisation.
    arp: Any = None
    ndp: Any = None
    dhcp: Any = None
    dhcpv6: Any = None
    icmp: Any = None
    tcp: Any = None
    tcp_splice: Any = None
    udp: Any = None
    fwd: Any = None
    netns: Any = None


def close_state(ctx: Ctx, name: str) -> None:
    """Close a handler's state (``ctx.<name>``), if it has any, and forget it."""
    state = getattr(ctx, name)
    if state is not None:
        state.close()
        setattr(ctx, name, None)
