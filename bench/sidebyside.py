#!/usr/bin/env python3
"""``make bench``: our pasta and passt next to upstream's and slirp4netns, in one run.

Theory of operation
-------------------
Every subject (harness.py: our pasta, upstream's 2026 release and
Debian's 2023 package of it, slirp4netns; the same passts with a TCG
guest) is started once, in a world of its own,
and stays up for the whole run.  Then, round after round, every cell (one
workload, ``CELLS``) is measured once on every subject that has the path
it exercises, subjects in a rotating order, so that each round spreads the
machine's load over all of them alike.  Medians over the rounds, with the
minimum and maximum, go into the table (report.py), ``results.json`` and
``results.png``.

Cells not measured round by round:

- start-up: each round also starts fresh instances of every program in
  a quiet world of its own (so that its forwarded ports are free) and
  times them: pasta (and slirp4netns) attaching to an existing namespace
  until it has an IPv4 default route; passt until its socket listens;
  ``pasta --config-net -- /bin/true`` (a namespace of its own, as podman
  starts one per container) until it exits, with its peak RSS;
- memory: VmRSS of each subject once started and idle (passt: the guest
  booted and configured, no traffic), and VmHWM, the peak, after the last
  round (and before any restart, which the run notes).

Ratios are ours / upstream 2026 (report.py), against the targets of
issue 23; Debian's 2023 column stays for history.

A measurement that fails is recorded as such (the table shows its error)
and the run goes on; a subject found dead is restarted, a bounded number
of times.  ``--smoke`` runs every cell once, briefly, to prove that the
benchmark itself still works (``make check``): it fails only if the
harness breaks or a reference program (upstream 2026, slirp4netns) cannot
be measured, never on a figure.  It leaves out Debian's 2023 programs
(``--no-2023``), which only keep the history: about 2 minutes instead of 3.

Usage (as root): ``sidebyside.py [--runs N] [--time S] [--smoke] [--out DIR]
[--only KEY,...] [--no-guest] [--no-2023]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import harness
import report
from harness import FORWARDED, NS_FORWARDED, REMOTE_PORTS, Namespace, Subject
from report import CellInfo, CellResult
from workloads import Sample, UdpLoad, connection_rate, iperf3, round_trips

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_RESTARTS = 2
LOOPBACK = "127.0.0.1"


@dataclass
class Settings:
    runs: int = 5
    seconds: float = 3.0
    udp: UdpLoad = field(default_factory=UdpLoad)
    guest: bool = True
    only: frozenset[str] = frozenset()
    history: bool = True  # also Debian's 2023 programs (upstream2023)
    out: str = os.path.join(harness.ROOT, "build", "bench")


@dataclass(frozen=True)
class Cell:
    info: CellInfo
    program: str  # "pasta" or "passt": which subjects
    needs: str  # the feature of a subject it exercises
    measure: Callable[[Subject, Bench], Sample]
    fresh: bool = False  # starts instances of its own: the running one may be down


# -- what each cell does ---------------------------------------------------------


def tap_iperf(reverse: bool, udp: bool) -> Callable[[Subject, Bench], Sample]:
    """Inside → a service of the remote namespace (``-R``: the other way)."""
    return lambda s, b: iperf3(s.inside, s.remote, s.remote_address, REMOTE_PORTS.iperf,
                               b.settings.seconds, reverse=reverse,
                               udp=b.settings.udp if udp else None)


def splice_iperf(into_ns: bool, udp: bool) -> Callable[[Subject, Bench], Sample]:
    """Host loopback → ``-t`` port → namespace, or namespace → ``-T`` port → host."""

    def measure(s: Subject, b: Bench) -> Sample:
        assert s.inner is not None
        client, server, port = ((s.host, s.inner, FORWARDED.iperf) if into_ns
                                else (s.inner, s.host, NS_FORWARDED.iperf))
        return iperf3(client, server, LOOPBACK, port, b.settings.seconds,
                      udp=b.settings.udp if udp else None)

    return measure


def tap_round_trips(s: Subject, b: Bench) -> Sample:
    return round_trips(s.inside, s.remote, s.remote_address, REMOTE_PORTS.stream,
                       b.settings.seconds)


def tap_connections(s: Subject, b: Bench) -> Sample:
    return connection_rate(s.inside, s.remote, s.remote_address, REMOTE_PORTS.stream,
                           b.settings.seconds)


def splice_connections(s: Subject, b: Bench) -> Sample:
    assert s.inner is not None
    return connection_rate(s.host, s.inner, LOOPBACK, FORWARDED.stream, b.settings.seconds)


def pasta_startup(s: Subject, b: Bench) -> Sample:
    """A fresh instance attaching to an existing namespace, until its default route."""
    assert s.respawn is not None
    ns = harness.scratch_namespace(f"start-{s.label}")
    try:
        return Sample(1000 * harness.time_to_ready(
            b.startup_host(), s.respawn(f"/run/netns/{ns.name}"), ns.has_default_route4,
            b.log_path(f"startup-{s.label}-pasta")))
    finally:
        harness.delete_namespace(ns)


def pasta_command(s: Subject, b: Bench) -> Sample:
    """``pasta --config-net -- /bin/true``, spawn to exit; its peak RSS goes to a
    memory cell."""
    assert s.impl is not None
    seconds, peak_kib = harness.time_to_exit(
        b.startup_host(), s.impl.argv("pasta", ["--config-net", "--", "/bin/true"]),
        b.log_path(f"command-{s.label}-pasta"))
    b.memory[COMMAND_RSS].of(s.label).samples.append(Sample(peak_kib / 1024))
    return Sample(1000 * seconds)


def passt_startup(s: Subject, b: Bench) -> Sample:
    """A fresh instance, until its socket listens."""
    assert s.respawn is not None
    path = os.path.join(b.workdir, f"startup-{s.label}.sock")
    host = b.startup_host()
    try:
        return Sample(1000 * harness.time_to_ready(
            host, s.respawn(path), lambda: host.unix_listening(path),
            b.log_path(f"startup-{s.label}-passt")))
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _info(key: str, title: str, unit: str, **kw: object) -> CellInfo:
    return CellInfo(key, title, unit, **kw)  # type: ignore[arg-type]


# Targets of issue 23, ours / upstream 2026: every throughput row >= 1.0, round
# trips and connection rates >= 0.8, start-up <= 1.5, peak RSS <= 2, UDP CPU
# time per GiB <= 1.2.
SPEED, EXCHANGES, STARTUP, PEAK_RSS, UDP_CPU = 1.0, 0.8, 1.5, 2.0, 1.2


def _speed(key: str, title: str, **kw: object) -> CellInfo:
    return _info(key, title, "Gbit/s", target=SPEED, **kw)


def _udp(key: str, title: str) -> CellInfo:
    return _speed(key, title, cpu_target=UDP_CPU)


def _startup(key: str, title: str) -> CellInfo:
    return _info(key, title, "ms", higher_is_better=False, target=STARTUP)


CELLS = [
    Cell(_speed("tcp_tap_ns_host", "TCP tap, namespace -> host", above_slirp=True),
         "pasta", "tap", tap_iperf(reverse=False, udp=False)),
    Cell(_speed("tcp_tap_host_ns", "TCP tap, host -> namespace", above_slirp=True),
         "pasta", "tap", tap_iperf(reverse=True, udp=False)),
    Cell(_speed("tcp_tap_host_ns_fallback", "TCP tap, host -> ns, no SO_PEEK_OFF",
                reference="upstream2023"), "pasta-fallback", "tap",
         tap_iperf(reverse=True, udp=False)),
    Cell(_speed("tcp_splice_host_ns", "TCP spliced, host -> namespace"),
         "pasta", "splice", splice_iperf(into_ns=True, udp=False)),
    Cell(_speed("tcp_splice_ns_host", "TCP spliced, namespace -> host"),
         "pasta", "splice", splice_iperf(into_ns=False, udp=False)),
    Cell(_udp("udp_tap_ns_host", "UDP tap, namespace -> host"),
         "pasta", "tap", tap_iperf(reverse=False, udp=True)),
    Cell(_udp("udp_tap_host_ns", "UDP tap, host -> namespace"),
         "pasta", "tap", tap_iperf(reverse=True, udp=True)),
    Cell(_udp("udp_splice_host_ns", "UDP spliced, host -> namespace"),
         "pasta", "splice", splice_iperf(into_ns=True, udp=True)),
    Cell(_udp("udp_splice_ns_host", "UDP spliced, namespace -> host"),
         "pasta", "splice", splice_iperf(into_ns=False, udp=True)),
    Cell(_info("tcp_rr_tap", "TCP round trips, 1 byte, tap", "1/s", target=EXCHANGES),
         "pasta", "peer", tap_round_trips),
    Cell(_info("tcp_crr_tap", "TCP connect+1 exchange+close, tap", "1/s",
               target=EXCHANGES), "pasta", "peer", tap_connections),
    Cell(_info("tcp_crr_splice", "TCP connect+1 exchange+close, spliced", "1/s",
               target=EXCHANGES), "pasta", "splice", splice_connections),
    Cell(_speed("passt_guest_host", "passt TCG guest -> host, TCP"),
         "passt", "guest", tap_iperf(reverse=False, udp=False)),
    Cell(_speed("passt_host_guest", "passt host -> TCG guest, TCP"),
         "passt", "guest", tap_iperf(reverse=True, udp=False)),
    Cell(_speed("passt_vu_guest_host", "passt vhost-user, TCG guest -> host, TCP"),
         "passt-vu", "guest", tap_iperf(reverse=False, udp=False)),
    Cell(_speed("passt_vu_host_guest", "passt vhost-user, host -> TCG guest, TCP"),
         "passt-vu", "guest", tap_iperf(reverse=True, udp=False)),
    Cell(_startup("startup_pasta_cmd", "pasta --config-net -- /bin/true, to exit"),
         "pasta", "command", pasta_command, fresh=True),
    Cell(_startup("startup_pasta", "pasta --netns, to its default route"),
         "pasta", "startup", pasta_startup, fresh=True),
    Cell(_startup("startup_passt", "passt start-up to a listening socket"),
         "passt", "startup", passt_startup, fresh=True),
]
COMMAND_RSS = ("pasta", "command")
MEMORY = {
    ("pasta", "VmRSS"): _info("rss_idle_pasta", "pasta RSS, idle", "MiB", higher_is_better=False),
    ("pasta", "VmHWM"): _info("rss_peak_pasta", "pasta peak RSS, loaded", "MiB",
                              higher_is_better=False, target=PEAK_RSS),
    COMMAND_RSS: _info("rss_peak_pasta_cmd", "pasta --config-net -- /bin/true, peak RSS",
                       "MiB", higher_is_better=False, target=PEAK_RSS),
    ("passt", "VmRSS"): _info("rss_idle_passt", "passt RSS, idle (guest up)", "MiB",
                              higher_is_better=False),
    ("passt", "VmHWM"): _info("rss_peak_passt", "passt peak RSS, loaded", "MiB",
                              higher_is_better=False, target=PEAK_RSS),
}


def with_cpu(cell: Cell, sample: Sample, seconds: float, before: float | None,
             after: float | None) -> Sample:
    """``sample`` with the CPU time (``after - before``, seconds) the program spent
    per unit of the work it did in ``seconds``."""
    if cell.fresh or before is None or after is None or sample.value <= 0:
        return sample
    amount, unit = report.work(cell.info.unit, sample.value, seconds)
    scale = report.CPU_UNITS[unit][1]
    return dataclasses.replace(sample, cpu=(after - before) / amount * scale)


# -- the run -----------------------------------------------------------------------


class Bench:
    """The subjects, the results, and the rounds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workdir = os.path.join(settings.out, "work")
        os.makedirs(self.workdir, exist_ok=True)
        self.cells = [c for c in CELLS if not settings.only or c.info.key in settings.only]
        if not settings.guest:
            self.cells = [c for c in self.cells if not c.program.startswith("passt")]
        self.results = {c.info.key: CellResult(c.info) for c in self.cells}
        self.memory = {key: CellResult(info) for key, info in MEMORY.items()
                       if any(c.program == key[0] for c in self.cells)}
        self.subjects: list[Subject] = []
        self.restarts: dict[tuple[str, str], int] = {}
        self.peak_kib: dict[tuple[str, str], int] = {}
        self.notes: list[str] = []
        self._startup_world: harness.World | None = None

    def log_path(self, name: str) -> str:
        return os.path.join(self.workdir, f"{name}.log")

    def startup_host(self) -> Namespace:
        """The host namespace of a quiet world where fresh instances are timed."""
        if self._startup_world is None:
            self._startup_world = harness.new_world(
                "bench-startup", os.path.join(self.workdir, "startup"), extra=())
        return Namespace(self._startup_world.host_ns)

    # -- subjects --

    def programs(self) -> list[tuple[str, str]]:
        """(program, label) of every subject some chosen cell applies to (and that exists)."""
        chosen = [key for key, features in harness.FEATURES.items()
                  if any(c.program == key[0] and c.needs in features for c in self.cells)
                  and (self.settings.history or key[1] != "upstream2023")]
        missing = [key for key in chosen if harness.missing(*key)]
        for program, label in missing:
            self.note(f"{program} {label} left out: {harness.missing(program, label)}")
        return [key for key in chosen if key not in missing]

    def start(self, program: str, label: str, impl: harness.Impl | None = None
              ) -> Subject | None:
        """A subject up and idle (its idle RSS recorded), or None (noted)."""
        workdir = os.path.join(self.workdir, f"{program}-{label}")
        began = time.monotonic()
        try:
            if program == "passt":
                subject = harness.start_passt(label, workdir, impl)
            elif program == "passt-vu":
                subject = harness.start_passt_vu(label, workdir)
            elif label == "slirp4netns":
                subject = harness.start_slirp(workdir)
            elif label == "direct":
                subject = harness.start_direct(workdir)
            else:
                subject = harness.start_pasta(label, workdir, impl, program)
        except Exception as e:  # noqa: BLE001 - recorded; its cells show it
            self.note(f"{program} {label} did not start: {_one_line(e)}")
            return None
        self.note(f"{program} {label} up in {time.monotonic() - began:.1f} s"
                  + "".join(f"; {n}" for n in subject.notes))
        time.sleep(0.5)
        self.record_memory(subject, "VmRSS")
        return subject

    def start_all(self) -> None:
        for program, label in self.programs():
            subject = self.start(program, label)
            if subject is not None:
                self.subjects.append(subject)

    def ensure_alive(self, index: int) -> Subject | None:
        """Subject ``index``, restarted (a bounded number of times) if it died."""
        subject = self.subjects[index]
        if subject.alive():
            return subject
        key = (subject.program, subject.label)
        if self.restarts.get(key, 0) >= MAX_RESTARTS:
            return None
        self.restarts[key] = self.restarts.get(key, 0) + 1
        self.note(f"{subject.program} {subject.label} died ({_last_words(subject)}); "
                  f"restart {self.restarts[key]} of {MAX_RESTARTS}")
        self.stop_subject(subject)
        fresh = self.start(*key)
        if fresh is not None:
            self.subjects[index] = fresh
        return fresh

    def record_memory(self, subject: Subject, field_name: str) -> None:
        cell = self.memory.get((subject.program, field_name))
        if cell is None:
            return
        try:
            memory = subject.memory_kib()
        except OSError as e:
            cell.of(subject.label).errors.append(_one_line(e))
            return
        if memory is not None:
            cell.of(subject.label).samples.append(Sample(memory[field_name] / 1024))

    def stop_subject(self, subject: Subject) -> None:
        try:
            problem = subject.stop()
        except Exception as e:  # noqa: BLE001 - the other subjects must still be stopped
            problem = _one_line(e)
        if problem:
            self.note(f"{subject.program} {subject.label}: {problem}")

    def track_peak(self, subject: Subject) -> None:
        """Remember the subject's peak RSS so far (a restart would lose it)."""
        key = (subject.program, subject.label)
        try:
            memory = subject.memory_kib()
        except OSError:
            return
        if memory is not None:
            self.peak_kib[key] = max(memory["VmHWM"], self.peak_kib.get(key, 0))

    def stop_all(self) -> None:
        """Stop every subject and delete every world, whatever fails on the way."""
        try:
            for subject in self.subjects:
                self.track_peak(subject)
                self.stop_subject(subject)
        finally:
            self.subjects.clear()
            if self._startup_world is not None:
                self._startup_world.destroy()
        for (program, label), kib in self.peak_kib.items():
            cell = self.memory.get((program, "VmHWM"))
            if cell is not None:
                cell.of(label).samples.append(Sample(kib / 1024))

    # -- rounds --

    def run(self) -> None:
        for index in range(self.settings.runs):
            print(f"-- round {index + 1}/{self.settings.runs}", flush=True)
            for cell in self.cells:
                for position in self._rotated(cell, index):
                    self.measure(cell, position)

    def _rotated(self, cell: Cell, index: int) -> list[int]:
        """Positions of the subjects ``cell`` applies to, in this round's order."""
        chosen = [i for i, s in enumerate(self.subjects)
                  if s.program == cell.program and cell.needs in s.features]
        shift = index % len(chosen) if chosen else 0
        return chosen[shift:] + chosen[:shift]

    def measure(self, cell: Cell, position: int) -> None:
        subject = self.subjects[position]
        series = self.results[cell.info.key].of(subject.label)
        live = subject if cell.fresh else self.ensure_alive(position)
        if live is None:
            series.errors.append("program died (no restart left)")
            return
        began = time.monotonic()
        cpu_before = live.cpu_seconds()
        try:
            measured = cell.measure(live, self)
            sample = with_cpu(cell, measured, self.settings.seconds, cpu_before,
                              live.cpu_seconds())
        except Exception as e:  # noqa: BLE001 - one failed sample; the run goes on
            series.errors.append(_one_line(e))
            print(f"   {cell.info.key:20} {live.label:12} FAILED: {_one_line(e)[:150]}",
                  flush=True)
            return
        series.samples.append(sample)
        self.track_peak(live)
        loss = "" if sample.loss is None else f" ({sample.loss:.1f}% lost)"
        print(f"   {cell.info.key:20} {live.label:12} {sample.value:10.3f} {cell.info.unit}{loss}"
              f"  [{time.monotonic() - began:.1f} s]", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"   note: {text}", flush=True)

    # -- output --

    def all_cells(self) -> list[CellResult]:
        return [*self.results.values(), *self.memory.values()]

    def reference_failures(self) -> list[str]:
        """Cells where a reference program has no sample at all: the harness is broken."""
        return [f"{cell.info.key} {label}" for cell in self.all_cells()
                for label, series in cell.series.items()
                if label != "ours" and not series.samples]

    def meta(self, seconds: float) -> dict:
        s = self.settings
        return {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": _command(["git", "-C", harness.ROOT, "rev-parse", "--short", "HEAD"]),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "upstream": _command([harness.implementation("upstream").passt[0], "--version"]
                                 ).splitlines()[0:1],
            "upstream2023": _command(["dpkg-query", "-W", "-f", "${Version}", "passt"]),
            "slirp4netns": _command([harness.SLIRP4NETNS, "--version"]).splitlines()[0:1],
            "runs": s.runs, "seconds": s.seconds,
            "udp": {"rate": s.udp.rate, "length": s.udp.length},
            "duration_seconds": round(seconds, 1),
            "notes": self.notes,
        }


def _command(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return ""


def _last_words(subject: Subject) -> str:
    """The last line the program logged, and its exit status."""
    daemon = subject.daemon
    if daemon is None:
        return "no program"
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    last = lines[-1][-200:] if lines else "no output"
    return f"exit status {daemon.returncode()}: {last}"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:400]


def parse_args(argv: list[str]) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=Settings.runs, help="rounds (samples per cell)")
    ap.add_argument("--time", type=float, default=Settings.seconds,
                    help="seconds per measurement")
    ap.add_argument("--smoke", action="store_true", help="one short round: does it still run?")
    ap.add_argument("--out", default=Settings.out, help="directory for results and logs")
    ap.add_argument("--only", default="", help="comma-separated cell keys")
    ap.add_argument("--no-guest", action="store_true", help="leave out the passt/guest cells")
    ap.add_argument("--no-2023", action="store_true",
                    help="leave out Debian's 2023 programs (--smoke does)")
    ap.add_argument("--udp-rate", default=UdpLoad.rate, help="iperf3 -b for UDP cells")
    ap.add_argument("--udp-length", type=int, default=UdpLoad.length, help="iperf3 -l for UDP")
    args = ap.parse_args(argv)
    runs, seconds = (1, 1.0) if args.smoke else (args.runs, args.time)
    only = frozenset(k for k in args.only.split(",") if k)
    unknown = only - {c.info.key for c in CELLS}
    if unknown:
        ap.error(f"unknown cells: {', '.join(sorted(unknown))}")
    return Settings(runs, seconds, UdpLoad(args.udp_rate, args.udp_length), not args.no_guest,
                    only, not (args.no_2023 or args.smoke), args.out)


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("sidebyside: needs root (builds network namespaces)", file=sys.stderr)
        return 1
    settings = parse_args(argv)
    harness.exit_on_sigterm()
    began = time.monotonic()
    bench = Bench(settings)
    try:
        bench.start_all()
        bench.run()
    except BaseException:
        traceback.print_exc()
        bench.stop_all()
        return 1
    bench.stop_all()
    cells = bench.all_cells()
    title = (f"ours / upstream, {settings.runs} run(s) of {settings.seconds:g} s, "
             f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[1]:.1f}")
    print(f"\n{title}")
    for line in report.table(cells):
        print(line)
    for note in bench.notes:
        print(f"note: {note}")
    os.makedirs(settings.out, exist_ok=True)
    report.write_json(os.path.join(settings.out, "results.json"),
                      bench.meta(time.monotonic() - began), cells)
    why_not = report.write_plot(os.path.join(settings.out, "results.png"), title, cells)
    print(f"results: {settings.out}/results.json"
          + (f", no plot: {why_not}" if why_not else f", {settings.out}/results.png"))
    broken = bench.reference_failures()
    if broken:
        print(f"harness problem: no sample from a reference program in: {', '.join(broken)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
