"""Logging as upstream passt does it: stderr, a bounded log file, or syslog.

Theory of operation
-------------------
Upstream passt has four levels that matter (error, warning, info, debug) plus
``--trace``, which is debug with per-packet messages.  ``-d`` enables debug,
``--trace`` implies it, ``-q`` keeps only errors and warnings.  Where the
messages go depends on how the program runs, and the rules are few:

* ``-l/--log-file PATH``: to that file only (``-e`` adds stderr while we are
  still attached to it).  The file is opened once, at start-up, because after
  isolation the program cannot open files any more.  It never grows beyond
  ``--log-size`` bytes: when a line would not fit, the oldest entries after
  the header line are cut (a good share at once, so cutting is rare) and the
  rest is moved to the front, as upstream does.  Every line carries a
  timestamp relative to the start and a level prefix.
* no log file, still attached to the terminal (foreground, or daemon not yet
  detached): stderr, with the relative timestamp in debug mode.  Before
  ``setup`` runs, this is the default, so that errors in the command line are
  one plain line on stderr.
* no log file, detached (see ``host/daemon.py``): syslog, through a datagram socket
  connected to ``/dev/log`` at ``setup`` time, again because it cannot be
  reached after isolation.  ``-d`` means "don't use the system logger", as
  upstream.  A missing ``/dev/log`` is not an error: messages are dropped
  silently, never retried in a loop.

Cost when a level is off must be nil: the level functions test a module
boolean before formatting anything, and hot paths guard their calls with the
module attributes ``log.DEBUG`` / ``log.TRACE`` (read them as ``log.TRACE``,
never ``from passt.log import TRACE``, which would freeze the value).
Messages are printf-style (``log.info("bound %s", path)``), formatted only
when emitted.  ``die`` logs one error line and raises ``SystemExit(1)``.

Nothing we import logs through Python's ``logging`` (netlink is our own
``host/rtnl``, not pyroute2, since start-up time counted): the module is not
even imported, which saves a tenth of our import time.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import NoReturn, Protocol

from passt import __version__

# syslog(3) priorities, which are also our levels.
LOG_ERR = 3
LOG_WARNING = 4
LOG_INFO = 6
LOG_DEBUG = 7
LOG_DAEMON = 3 << 3

LOG_SIZE_DEFAULT = 1 << 20
LOG_SIZE_MIN = 1 << 16
SYSLOG_PATH = "/dev/log"
LINE_MAX = 8192
CUT_RATIO = 0.30

_FILE_PREFIX = {
    LOG_ERR: b"ERROR:   ",
    LOG_WARNING: b"WARNING: ",
    LOG_INFO: b"info:    ",
    LOG_DEBUG: b"         ",
}

DEBUG = False
TRACE = False


class LogOptions(Protocol):
    """The subset of ``conf.Conf`` that ``setup`` reads (read-only, as ``Conf`` is frozen)."""

    @property
    def debug(self) -> bool: ...
    @property
    def trace(self) -> bool: ...
    @property
    def quiet(self) -> bool: ...
    @property
    def stderr(self) -> bool: ...
    @property
    def log_file(self) -> str | None: ...
    @property
    def log_size(self) -> int: ...
    @property
    def foreground(self) -> bool: ...


class LogFile:
    """An append-only text file that never exceeds ``size`` bytes."""

    def __init__(self, fd: int, size: int, header: bytes) -> None:
        self._fd = fd
        self._size = size
        self._header_len = len(header)
        os.pwrite(fd, header, 0)
        self._written = len(header)

    @classmethod
    def open(cls, path: str, size: int, header: bytes) -> LogFile:
        fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR | os.O_CLOEXEC, 0o600)
        return cls(fd, size, header[: size // 2])

    def write(self, line: bytes) -> None:
        longest = min(self._size - self._header_len, LINE_MAX)
        if len(line) > longest:
            line = line[: longest - 1] + b"\n"
        if self._written + len(line) > self._size:
            self._cut_oldest(len(line))
        self._written += os.pwrite(self._fd, line, self._written)

    def _cut_oldest(self, need: int) -> None:
        """Drop whole lines after the header until ``need`` more bytes fit."""
        body = os.pread(self._fd, self._written - self._header_len, self._header_len)
        cut = max(int(self._size * CUT_RATIO), self._written + need - self._size)
        newline = body.find(b"\n", cut - 1)
        keep = body[newline + 1 :] if newline >= 0 else b""
        os.pwrite(self._fd, keep, self._header_len)
        self._written = self._header_len + len(keep)
        os.ftruncate(self._fd, self._written)

    def close(self) -> None:
        os.close(self._fd)


class Syslog:
    """RFC 3164 messages to the local syslog socket; silent when absent."""

    def __init__(self, sock: socket.socket | None, ident: str) -> None:
        self._sock = sock
        self._ident = ident

    @classmethod
    def connect(cls, ident: str) -> Syslog:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(SYSLOG_PATH)
        except OSError:
            sock.close()
            return cls(None, ident)
        return cls(sock, ident)

    def send(self, priority: int, msg: str) -> None:
        if self._sock is None:
            return
        stamp = time.strftime("%b %e %H:%M:%S")
        data = f"<{LOG_DAEMON | priority}>{stamp} {self._ident}[{os.getpid()}]: {msg}"
        try:
            self._sock.send(data.encode(errors="replace"), socket.MSG_DONTWAIT)
        except OSError:
            pass

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _State:
    """Where messages go; replaced as a whole by ``setup``."""

    def __init__(self) -> None:
        self.level = LOG_INFO
        self.stderr = True
        self.stderr_stamps = False
        self.file: LogFile | None = None
        self.syslog: Syslog | None = None
        self.syslog_active = False
        self.start = time.monotonic()
        self.lock = threading.Lock()


_state = _State()


def setup(opts: LogOptions, ident: str = "passt") -> None:
    """Configure levels and destinations from the command line options.

    Opens the log file and the syslog socket now, while that is possible;
    raises ``SystemExit(1)`` with one line on stderr if the file can't be opened.
    """
    global DEBUG, TRACE
    close()
    state = _State()
    debug = bool(opts.debug or opts.trace)
    state.level = LOG_DEBUG if debug else LOG_WARNING if opts.quiet else LOG_INFO
    state.stderr_stamps = debug
    if opts.log_file:
        state.file = _open_log_file(opts.log_file, opts.log_size or LOG_SIZE_DEFAULT, ident)
        state.stderr = bool(opts.stderr)
    elif not debug and not opts.foreground:
        state.syslog = Syslog.connect(ident)
    _install(state)
    DEBUG, TRACE = debug, bool(opts.trace)


def _open_log_file(path: str, size: int, ident: str) -> LogFile:
    header = f"{ident} {__version__}: {os.path.realpath(sys.argv[0])} ({os.getpid()})\n"
    try:
        return LogFile.open(path, size, header.encode(errors="replace"))
    except OSError as e:
        die("Couldn't open log file %s: %s", path, e.strerror)


def _install(state: _State) -> None:
    global _state
    _state = state


def set_detached() -> None:
    """We left the terminal (daemonized): stderr is gone, syslog takes over."""
    _state.stderr = False
    _state.syslog_active = _state.syslog is not None


def close() -> None:
    """Close the log file and syslog socket (start-up failure, exit, tests)."""
    global DEBUG, TRACE
    with _state.lock:
        if _state.file is not None:
            _state.file.close()
        if _state.syslog is not None:
            _state.syslog.close()
    _install(_State())
    DEBUG = TRACE = False


def _emit(priority: int, fmt: str, args: tuple[object, ...]) -> None:
    state = _state
    msg = fmt % args if args else fmt
    stamp = f"{time.monotonic() - state.start:.4f}: "
    if state.file is not None:
        line = stamp.encode() + _FILE_PREFIX[priority] + msg.encode(errors="replace") + b"\n"
        with state.lock:
            state.file.write(line)
    if state.stderr:
        sys.stderr.write(f"{stamp}{msg}\n" if state.stderr_stamps else f"{msg}\n")
        sys.stderr.flush()
    if state.syslog_active and state.syslog is not None:
        state.syslog.send(priority, msg)


def err(fmt: str, *args: object) -> None:
    _emit(LOG_ERR, fmt, args)


def warn(fmt: str, *args: object) -> None:
    _emit(LOG_WARNING, fmt, args)


def info(fmt: str, *args: object) -> None:
    if _state.level >= LOG_INFO:
        _emit(LOG_INFO, fmt, args)


def debug(fmt: str, *args: object) -> None:
    if DEBUG:
        _emit(LOG_DEBUG, fmt, args)


def trace(fmt: str, *args: object) -> None:
    """Per-packet messages; guard hot-path calls with ``if log.TRACE:``."""
    if TRACE:
        _emit(LOG_DEBUG, fmt, args)


def die(fmt: str, *args: object) -> NoReturn:
    """Log one error line and exit with status 1 (``SystemExit``)."""
    _emit(LOG_ERR, fmt, args)
    raise SystemExit(1)
