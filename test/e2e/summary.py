"""The end-of-run table: each cell, its result, its throughput, its time.

Theory of operation: pytest's reports already say pass, fail, skip or
xfail per phase; this module folds them into one row per cell (a test
parametrized with a ``cell``), adds the throughput the test recorded with
``record_property("throughput", ...)``, and renders the table that the
``pytest_terminal_summary`` hook in conftest.py prints.  Throughput is
shown, never judged.  A cell run in several peek modes (peek.py) gets a row
per mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass
class Row:
    label: str
    result: str = "not run"
    throughput: str = ""
    seconds: float = 0.0


class Summary:
    """Rows by cell label, in the order the cells ran."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []  # e.g. start-up and boot times

    def record(self, item: pytest.Item, report: pytest.TestReport) -> None:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        cell = params.get("cell")
        if cell is None:
            return
        mode = params.get("peek_mode")  # peek.py: a row per mode
        label = cell.label if mode is None else mode.label(cell.label)
        label += "".join(  # a module run per named variant (libvirt's interface type)
            f" ({value})" for name, value in params.items()
            if isinstance(value, str) and name not in ("cell", "peek_mode"))
        row = self.rows.setdefault(label, Row(label))
        row.seconds += report.duration
        for name, value in item.user_properties:
            if name == "throughput":
                row.throughput = value
        result = _result(report)
        if result is not None:
            row.result = result

    def render(self, impl_name: str) -> list[str]:
        if not self.rows:
            return []
        width = max(len(label) for label in self.rows) + 2
        lines = [
            f"end-to-end cells ({impl_name}):",
            f"{'cell':<{width}}{'result':<10}{'time':>7}  throughput / reason",
        ]
        for row in self.rows.values():
            verdict, _, detail = row.result.partition(": ")
            shown = row.throughput if verdict in ("pass", "FAIL") else detail
            lines.append(f"{row.label:<{width}}{verdict:<10}{row.seconds:>6.1f}s  {shown}")
        counts: dict[str, int] = {}
        for row in self.rows.values():
            verdict = row.result.partition(": ")[0]
            counts[verdict] = counts.get(verdict, 0) + 1
        lines.append(", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())))
        return lines


def _result(report: pytest.TestReport) -> str | None:
    """The row's result after this phase, or None if the phase changes nothing."""
    if hasattr(report, "wasxfail"):
        return f"xfail: {report.wasxfail.removeprefix('reason: ')}"
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        return f"skipped: {reason.removeprefix('Skipped: ')}"
    if report.failed:
        return "ERROR" if report.when != "call" else "FAIL"
    if report.when == "call":
        return "pass"
    return None
