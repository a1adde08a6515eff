"""A shell driven through pexpect: the one way the suite runs commands.

Theory of operation: the guest's serial console and every network namespace
are driven alike, as a ``Shell`` over a pexpect child, so that a traffic
check is written once and runs with either end in a guest or a namespace.

The shell at the other end reads commands from its terminal as a script
(``sh /dev/console`` in the guest, ``sh /dev/stdin`` here), with terminal
echo off: no prompt, no line editing, no job-control notices.  Each command
is framed by markers the shell prints itself::

    echo @@B<n>@@; { CMD ; } </dev/null 2>&1; echo @@E<n>:$?@@

so its output is exactly what lies between them, and its exit status is
in the end marker.  The markers are written with quotes split inside them,
so even an echoed command line could not be mistaken for them.  Commands
read nothing from the terminal (``</dev/null``): the terminal is the
command channel.

Every wait is bounded: a command that does not end within its timeout
raises ``ShellTimeout`` and marks the shell broken, so the fixture that
owns it can replace it rather than feed commands into a hung shell.
Background commands (``start``) write to a log file and are remembered
until ``wait``-ed for or killed by ``kill_background``.
"""

from __future__ import annotations

import re
import shlex
import time

import pexpect


class ShellError(RuntimeError):
    """A command run through a ``Shell`` failed or could not be run."""


class ShellTimeout(ShellError):
    """A command did not finish in time; the shell is no longer usable."""


class Shell:
    """Commands over a pexpect child running a non-interactive shell."""

    def __init__(self, name: str, child: pexpect.spawn, workdir: str, ifname: str) -> None:
        self.name = name
        self.child = child
        self.workdir = workdir
        self.ifname = ifname
        self.broken = False
        self._seq = 0
        self._background: set[int] = set()

    def __repr__(self) -> str:
        return f"<Shell {self.name}>"

    def path(self, name: str) -> str:
        """A file in this shell's working directory."""
        return f"{self.workdir}/{name}"

    def run(self, command: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run ``command``; its exit status and output (stdout and stderr)."""
        if self.broken:
            raise ShellError(f"{self.name}: shell is broken by an earlier timeout")
        self._seq += 1
        n = self._seq
        self.child.sendline(
            f"echo '@@''B{n}@@'; {{ {command}\n}} </dev/null 2>&1; echo '@@''E{n}:'$?'@@'"
        )
        try:
            self.child.expect(f"@@B{n}@@\r?\n", timeout=timeout)
            self.child.expect(rf"@@E{n}:(\d+)@@", timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            self.broken = True
            kind = "timed out" if isinstance(e, pexpect.TIMEOUT) else "lost its shell"
            raise ShellTimeout(f"{self.name}: {kind} after {timeout:.0f} s: {command}") from None
        status = int(self.child.match.group(1))
        output = self.child.before.replace("\r", "")
        return status, output

    def check(self, command: str, timeout: float = 30.0) -> str:
        """Run ``command``, which must succeed; its output."""
        status, output = self.run(command, timeout)
        if status != 0:
            raise ShellError(f"{self.name}: `{command}` exited {status}:\n{output}")
        return output

    def start(self, command: str, log: str) -> int:
        """Start ``command`` in the background, output to ``log``; its PID."""
        output = self.check(f"{command} >{shlex.quote(log)} 2>&1 </dev/null & echo $!")
        pid = int(output.split()[-1])
        self._background.add(pid)
        return pid

    def wait(self, pid: int, timeout: float) -> int:
        """Exit status of background command ``pid`` (bounded by ``timeout``)."""
        status, _ = self.run(f"wait {pid}", timeout)
        self._background.discard(pid)
        return status

    def kill_background(self) -> None:
        """Stop every background command not yet waited for.

        SIGTERM, not SIGKILL: coreutils' ``timeout`` passes it on to the
        program it runs, which SIGKILL would leave behind, still holding
        its port.
        """
        if self._background and not self.broken:
            pids = " ".join(str(p) for p in sorted(self._background))
            self.run(f"kill {pids} 2>/dev/null; wait {pids} 2>/dev/null; true", 15)
        self._background.clear()

    def wait_until(self, command: str, timeout: float, interval: float = 0.2) -> str:
        """Repeat ``command`` until it succeeds, at most ``timeout`` s; its output."""
        deadline = time.monotonic() + timeout
        while True:
            status, output = self.run(command, timeout)
            if status == 0:
                return output
            if time.monotonic() >= deadline:
                raise ShellError(f"{self.name}: `{command}` still failing after {timeout} s")
            time.sleep(interval)

    def close(self) -> None:
        """End the pexpect child (the process behind the shell)."""
        self.child.close(force=True)


def listening(shell: Shell, proto: str, port: int) -> bool:
    """Whether a socket of ``proto`` ("tcp"/"udp") listens on ``port`` in ``shell``."""
    state = "0A" if proto == "tcp" else "07"
    output = shell.check(f"cat /proc/net/{proto} /proc/net/{proto}6 2>/dev/null")
    return any(
        len(fields) > 3 and fields[1].endswith(f":{port:04X}") and fields[3] == state
        for fields in (line.split() for line in output.splitlines())
    )


def wait_listening(shell: Shell, proto: str, port: int, timeout: float = 15.0) -> None:
    """Wait (bounded) until something listens on ``proto`` ``port`` in ``shell``."""
    deadline = time.monotonic() + timeout
    while not listening(shell, proto, port):
        if time.monotonic() >= deadline:
            raise ShellError(f"{shell.name}: nothing listens on {proto} port {port}")
        time.sleep(0.1)


_HASH = re.compile(r"^([0-9a-f]{64})\s", re.MULTILINE)


def sha256(shell: Shell, path: str) -> str:
    """SHA-256 of ``path`` as computed by ``shell``'s own sha256sum."""
    output = shell.check(f"sha256sum {shlex.quote(path)}")
    match = _HASH.search(output)
    if not match:
        raise ShellError(f"{shell.name}: no hash in sha256sum output: {output!r}")
    return match.group(1)
