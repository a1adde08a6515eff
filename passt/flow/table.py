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
``(address, port, address, port)``.  Handlers may register extra keys
(aliases) for the same flow, e.g. the host-side socket's addresses, so that
lookups from either side are one dict access; aliases do not count against
the limit.

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


class FlowTableFull(Exception):
    """Raised by ``add`` when the table holds its maximum number of flows."""


class FlowTable:
    """All live flows, indexed by key, with one global limit."""

    def __init__(self, max_flows: int = 32768) -> None:
        self.max_flows = max_flows
        self._flows: dict[FlowKey, Any] = {}
        self._aliases: dict[FlowKey, FlowKey] = {}
        self.refused = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: FlowKey) -> bool:
        return key in self._flows or key in self._aliases

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

    def alias(self, alias: FlowKey, key: FlowKey) -> None:
        """Make ``alias`` find the flow stored under ``key``."""
        self._aliases[alias] = key

    def get(self, key: FlowKey) -> Any | None:
        flow = self._flows.get(key)
        if flow is None:
            primary = self._aliases.get(key)
            if primary is not None:
                flow = self._flows.get(primary)
        return flow

    def remove(self, key: FlowKey, *aliases: FlowKey) -> Any | None:
        """Drop a flow and the given aliases; returns the flow, if any."""
        for alias in aliases:
            self._aliases.pop(alias, None)
        return self._flows.pop(key, None)

    def items(self) -> Iterator[tuple[FlowKey, Any]]:
        """A snapshot of (key, flow) pairs, safe to iterate while removing."""
        return iter(list(self._flows.items()))

    def stats(self) -> dict[str, int]:
        """Number of flows per protocol, plus aliases and refusals."""
        counts = Counter(str(key[0]) for key in self._flows)
        result = dict(counts)
        result["total"] = len(self._flows)
        result["aliases"] = len(self._aliases)
        result["refused"] = self.refused
        return result
