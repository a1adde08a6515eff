"""Results of a side-by-side run: medians and spread, the table, JSON, a plot.

Theory of operation
-------------------
A run collects, for every cell (one workload) and every subject (one
program), a list of samples and the errors of the runs that failed.  One
number per run would say little on a shared two-core machine, so each
summary is the median with the minimum and maximum beside it, and the
figure that matters, the ratio ours / upstream, is a ratio of medians
measured in the same run, runs alternating between programs.

"upstream" is upstream's 2026 release, the reference; "upstream2023" is
Debian's 2023 package, a second column kept for history (and the
reference of the one cell the 2026 release cannot run: a kernel without
TCP ``SO_PEEK_OFF``).  Targets are ratios ours / reference (optionally
also "above slirp4netns"), and for some cells a ratio of the programs'
CPU time per unit of work; the table says whether a target is met, for
reading: nothing here asserts speed.  For cells where lower is better
(start-up time, memory) the ratio is still ours / upstream, and the table
says "lower is better".

``results.json`` holds every sample, for tracking across commits;
``results.png`` (when matplotlib is installed) plots the ratios with
their spread and the targets.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field

from workloads import Sample

LABELS = ("ours", "upstream", "upstream2023", "slirp4netns", "direct", "stream")
LEGEND = ("median (min-max) over the runs; upstream: its 2026_07_16 release (the reference"
          " of the ratios), upstream2023: Debian's 2023 package; direct: the same traffic with"
          " no program in between (veth or loopback), the ceiling of the measurement;"
          " stream: ours over passt's stream socket (vhost-user rows)")


@dataclass(frozen=True)
class CellInfo:
    """What a cell measures and what we want of it."""

    key: str
    title: str
    unit: str
    higher_is_better: bool = True
    target: float | None = None  # wanted ratio ours / reference
    above_slirp: bool = False  # also wanted: ours above slirp4netns
    cpu_target: float | None = None  # wanted ratio of CPU time per unit of work (at most)
    reference: str = "upstream"  # the label the ratio and the targets are taken against


@dataclass
class Series:
    """One subject's samples in one cell."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [s.value for s in self.samples]

    def median(self) -> float | None:
        return statistics.median(self.values) if self.samples else None

    def cpu(self) -> float | None:
        """Median CPU time of the program per unit of work (None: not measured)."""
        cpu = [s.cpu for s in self.samples if s.cpu is not None]
        return statistics.median(cpu) if cpu else None

    def loss(self) -> float | None:
        losses = [s.loss for s in self.samples if s.loss is not None]
        return statistics.median(losses) if losses else None

    def summary(self) -> dict:
        values = self.values
        return {
            "samples": values,
            "loss_percent": [s.loss for s in self.samples if s.loss is not None] or None,
            "cpu_per_work": [s.cpu for s in self.samples if s.cpu is not None] or None,
            "median": self.median(),
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "errors": self.errors,
        }


@dataclass
class CellResult:
    info: CellInfo
    series: dict[str, Series] = field(default_factory=dict)

    def of(self, label: str) -> Series:
        return self.series.setdefault(label, Series())

    def ratio(self, other: str | None = None) -> float | None:
        """Median ours / median ``other`` (default: the cell's reference)."""
        ours = self.series.get("ours")
        theirs = self.series.get(other or self.info.reference)
        if ours is None or theirs is None:
            return None
        a, b = ours.median(), theirs.median()
        if a is None or b is None or b == 0:
            return None
        return a / b

    def ratio_spread(self) -> tuple[float, float] | None:
        """(worst, best) ratio over the runs: ours' extremes against upstream's."""
        ours, theirs = self.series.get("ours"), self.series.get(self.info.reference)
        if not ours or not theirs or not ours.samples or not theirs.samples:
            return None
        if min(theirs.values) <= 0:
            return None
        return min(ours.values) / max(theirs.values), max(ours.values) / min(theirs.values)

    def target_met(self) -> bool | None:
        info = self.info
        ratio = self.ratio()
        if info.target is None or ratio is None:
            return None
        met = ratio >= info.target if info.higher_is_better else ratio <= info.target
        if info.above_slirp:
            over_slirp = self.ratio("slirp4netns")
            met = met and over_slirp is not None and over_slirp > 1.0
        return met

    def cpu_ratio(self, other: str | None = None) -> float | None:
        """Median CPU time per unit of work, ours / ``other`` (default: the reference)."""
        ours, theirs = self.series.get("ours"), self.series.get(other or self.info.reference)
        a = ours.cpu() if ours else None
        b = theirs.cpu() if theirs else None
        return a / b if a is not None and b else None

    def cpu_target_met(self) -> bool | None:
        ratio = self.cpu_ratio()
        if self.info.cpu_target is None or ratio is None:
            return None
        return ratio <= self.info.cpu_target

    def to_json(self) -> dict:
        return {
            **asdict(self.info),
            "results": {label: s.summary() for label, s in self.series.items()},
            "ratio_ours_upstream": self.ratio(),
            "ratio_ours_upstream2023": self.ratio("upstream2023"),
            "ratio_ours_slirp4netns": self.ratio("slirp4netns"),
            "target_met": self.target_met(),
            "cpu_ratio_ours_upstream": self.cpu_ratio(),
            "cpu_target_met": self.cpu_target_met(),
        }


def work(unit: str, value: float, seconds: float) -> tuple[float, str]:
    """The work a sample of ``value`` over ``seconds`` represents: GiB moved or exchanges."""
    if unit == "Gbit/s":
        return value * 1e9 / 8 * seconds / (1 << 30), "GiB"
    return value * seconds, "exchange"


CPU_UNITS = {"GiB": ("CPU s/GiB", 1.0), "exchange": ("CPU us/exchange", 1e6)}
"""How the program's CPU time per unit of work is shown, and its scale."""


# -- the table ----------------------------------------------------------------


def _number(value: float, unit: str) -> str:
    if unit == "Gbit/s":
        return f"{value:.2f}"
    if unit in ("ms", "MiB"):
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{value:.0f}"


def _cell_text(series: Series | None, unit: str) -> str:
    if series is None:
        return "-"
    median = series.median()
    if median is None:
        return "FAILED" if series.errors else "-"
    text = _number(median, unit)
    if len(series.samples) > 1:
        text += f" ({_number(min(series.values), unit)}-{_number(max(series.values), unit)})"
    loss = series.loss()
    if loss is not None:
        text += f" {loss:.0f}%lost"
    if series.errors:
        text += f" [{len(series.errors)} failed]"
    return text


def _met_text(met: bool | None) -> str:
    return "met" if met else "MISSED" if met is not None else "n/a"


def _target_text(cell: CellResult) -> str:
    info = cell.info
    if info.target is None:
        return "" if info.higher_is_better else "lower is better"
    sign = ">=" if info.higher_is_better else "<="
    text = f"{sign}{info.target:g}" + (" & >slirp" if info.above_slirp else "")
    if info.reference != "upstream":
        text += f" of {info.reference}"
    return f"{text}: {_met_text(cell.target_met())}"


RATIOS = (("ours/up", None), ("ours/up23", "upstream2023"), ("ours/slirp", "slirp4netns"),
          ("ours/stream", "stream"))
"""The ratio columns: header, and the label divided by (None: the cell's reference)."""


def table(cells: list[CellResult]) -> list[str]:
    """The results table, one line per cell, and the errors below it."""
    head = (f"{'cell':44} {'unit':6} " + "".join(f"{label:25}" for label in LABELS)
            + "".join(f"{name:>12}" for name, _ in RATIOS) + "  target")
    lines = [LEGEND, head, "-" * len(head)]
    for cell in cells:
        unit = cell.info.unit
        columns = "".join(f"{_cell_text(cell.series.get(label), unit):25}" for label in LABELS)
        ratios = "".join(f"{_ratio_text(cell.ratio(other)):>12}" for _, other in RATIOS)
        lines.append(f"{cell.info.title:44} {unit:6} {columns}{ratios}  {_target_text(cell)}")
    lines += cpu_table(cells)
    errors = [f"  {cell.info.key} {label}: {error}"
              for cell in cells for label, series in cell.series.items()
              for error in dict.fromkeys(series.errors)]
    if errors:
        lines += ["", "errors (each distinct one once):", *errors]
    return lines


CPU_LABELS = ("ours", "upstream", "upstream2023", "slirp4netns")


def cpu_table(cells: list[CellResult]) -> list[str]:
    """The programs' CPU time per unit of work: efficiency, less noisy than speed."""
    rows = []
    for cell in cells:
        cpu = {label: s.cpu() for label, s in cell.series.items()}
        if not any(v is not None for v in cpu.values()):
            continue
        unit = CPU_UNITS[work(cell.info.unit, 1, 1)[1]][0]
        target = cell.info.cpu_target
        rows.append(f"{cell.info.title:44} {unit:16}"
                    + "".join(f"{_cpu_text(cpu.get(label)):>13}" for label in CPU_LABELS)
                    + f"{_ratio_text(cell.cpu_ratio()):>9}"
                    + f"{_ratio_text(cell.cpu_ratio('upstream2023')):>11}"
                    + (f"  <={target:g}: {_met_text(cell.cpu_target_met())}"
                       if target is not None else ""))
    if not rows:
        return []
    head = (f"{'program CPU time per unit of work (median)':44} {'unit':16}"
            + "".join(f"{label:>13}" for label in CPU_LABELS) + f"{'ours/up':>9}"
            + f"{'ours/up23':>11}  target")
    return ["", head, "-" * len(head), *rows]


def _cpu_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


# -- files -----------------------------------------------------------------------


def write_json(path: str, meta: dict, cells: list[CellResult]) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "cells": [c.to_json() for c in cells]}, f, indent=1)
        f.write("\n")


def write_plot(path: str, title: str, cells: list[CellResult]) -> str | None:
    """A PNG of the ratios (with their spread and targets); None, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (make bench installs it)"
    rows = [c for c in cells if c.ratio() is not None]
    if not rows:
        return "no cell has a ratio"
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.5))
    for y, cell in enumerate(rows):
        ratio = cell.ratio()
        assert ratio is not None
        met = cell.target_met()
        color = "tab:gray" if met is None else "tab:green" if met else "tab:red"
        ax.barh(y, ratio - 1, left=1, color=color, alpha=0.8)  # from parity to the ratio
        spread = cell.ratio_spread()
        if spread is not None:
            ax.plot(spread, (y, y), color="black", linewidth=1)
        if cell.info.target is not None:
            ax.plot((cell.info.target,) * 2, (y - 0.4, y + 0.4), color="black", linestyle="--")
        ax.text(ratio, y, f" {ratio:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{c.info.title} ({'lower' if not c.info.higher_is_better else 'higher'}"
                        " is better)" for c in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="gray", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("ours / upstream 2026 (median; bar: min-max; dashed: target)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
