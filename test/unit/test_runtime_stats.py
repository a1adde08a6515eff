"""--stats DELAY: the event counters on stderr, at most once a second."""

from __future__ import annotations

from collections import Counter

from passt import runtime
from passt.loop import EventLoop


def test_stats_are_printed_every_interval(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "STATS_MIN_INTERVAL", 0.05)
    loop = EventLoop()
    try:
        runtime.show_stats(loop, Counter({"tcp.conns_in": 2, "drop.arp": 1}), 0)
        loop.call_later(0.18, loop.stop)
        loop.run()
    finally:
        loop.close()
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 4
    assert lines[0] == "stats: drop.arp=1 tcp.conns_in=2"
