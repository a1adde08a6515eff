"""Starting and stopping passt or pasta inside the host namespace.

Theory of operation: the program under test runs in the foreground (``-f``)
as a child of the test process, in a process group of its own, inside the
world's host namespace (``ip netns exec``), with its output in a log file
that failing tests print.  Readiness is what the test can observe from
outside (passt's socket file exists; pasta's namespace interface has its
addresses and the forwarded ports listen), polled within a deadline.

Debian's upstream build sometimes dies at once when started with several
forwarding options; a start whose process exits before it is ready is
therefore retried, a bounded number of times, and the last log is kept.
Stopping sends SIGTERM to the whole group, then SIGKILL if it lingers.

``env`` adds variables to the program's environment (the rest is the test
process's own), e.g. ``PASST_NO_PEEK_OFF=1``; the log's start line shows
them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping

START_ATTEMPTS = 3


class DaemonError(RuntimeError):
    """passt or pasta did not start, or died."""


class Daemon:
    """One running passt or pasta, owned by the test."""

    def __init__(self, argv: list[str], netns: str, log_path: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.argv = argv
        self.netns = netns
        self.log_path = log_path
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    def start(self, ready: Callable[[], bool], timeout: float = 20.0) -> Daemon:
        """Start and wait until ``ready()``; retry a start that dies at once."""
        for attempt in range(1, START_ATTEMPTS + 1):
            began = time.monotonic()
            self._spawn()
            if self._wait_ready(ready, timeout):
                self.start_seconds = time.monotonic() - began
                return self
            if self.alive():
                self.stop()
                raise DaemonError(f"not ready after {timeout} s: {self.describe()}")
            if attempt == START_ATTEMPTS:
                raise DaemonError(
                    f"exited at start-up {START_ATTEMPTS} times: {self.describe()}"
                )
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            settings = "".join(f"{name}={value} " for name, value in self.env.items())
            log.write(f"\n=== start: {settings}{' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *self.argv],
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, ready: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if ready():
                return True
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """The program's output so far, without upstream's syslog noise."""
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(line for line in lines if "to syslog" not in line)

    def describe(self) -> str:
        status = "running" if self.alive() else f"exit status {self.returncode()}"
        return f"{' '.join(self.argv)} ({status})\n{self.log()[-4000:]}"

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate the process group; the exit status (None if killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout)
        self._signal_group(signal.SIGKILL)  # stragglers that left the leader
        return self.proc.returncode

    def _signal_group(self, signum: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
