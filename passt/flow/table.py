"""The flow table shared by every protocol handler.

Theory of operation
-------------------
A *flow* is one conversation we translate: a TCP connection (tap or
spliced), a UDP "connection" (addresses and ports in both directions), an
ICMP echo id.  Each protocol handler keeps its own per-flow state object, but
all flows live in one table so that limits are global: a guest that opens
thousands of UDP flows must not leave no room for TCP, and every flow counts
against the same maximum (``--max-flows`` style limit, derived from the
descriptor limit at start-up).

Keys are tuples whose first element names the protocol (``"tcp"``,
``"udp"``, ``"icmp"``, ``"tcp_splice"``, ...), followed by whatever
identifies the flow for that handler, typically the guest-side
``(address, port, address, port)``.

The table never closes anything itself: removing a flow is the handler's
job, because only the handler knows which sockets, pipes and timers the
flow owns.  ``stats()`` exists so tests can assert that nothing was left
behind after every way of closing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator
from typing import Any

FlowKey = tuple[Hashable, ...]
# A socket address as the socket module has it: (host, port[, flowinfo, scope_id]).
SockAddr = tuple[Any, ...]
# The key of a flow with the guest: (protocol, guest address, guest port,
# remote address, remote port), addresses packed.
TapKey = tuple[str, bytes, int, bytes, int]


class FlowTableFull(Exception):
    """Raised by ``add`` when the table holds its maximum number of flows."""


class FlowTable:
    """All live flows, indexed by key, with one global limit."""

    def __init__(self, max_flows: int = 32768) -> None:
        self.max_flows = max_flows
        self._flows: dict[FlowKey, Any] = {}
        self.refused = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: FlowKey) -> bool:
        return key in self._flows

    def full(self) -> bool:
        return len(self._flows) >= self.max_flows

    def add(self, key: FlowKey, flow: Any) -> None:
        """Insert a new flow; raises ``FlowTableFull`` (and counts it) when full."""
        if key in self._flows:
            raise KeyError(f"flow {key!r} exists")
        if self.full():
            self.refused += 1
            raise FlowTableFull(key)
        self._flows[key] = flow

    def get(self, key: FlowKey) -> Any | None:
        return self._flows.get(key)

    def remove(self, key: FlowKey) -> Any | None:
        """Drop a flow; returns it, if any."""
        return self._flows.pop(key, None)

    def items(self) -> Iterator[tuple[FlowKey, Any]]:
        """A snapshot of (key, flow) pairs, safe to iterate while removing."""
        return iter(list(self._flows.items()))

    def stats(self) -> dict[str, int]:
        """Number of flows per protocol, plus refusals."""
        counts = Counter(str(key[0]) for key in self._flows)
        result = dict(counts)
        result["total"] = len(self._flows)
        result["refused"] = self.refused
        return result
