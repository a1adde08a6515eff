"""The event loop: one thread, one epoll set, timers and signals.

Theory of operation
-------------------
Everything passt and pasta do is a reaction to a file descriptor becoming
readable or writable (the tap, a socket, a pipe, a timer) or to time passing.
One ``select.epoll`` set carries all descriptors; each registered descriptor
has exactly one callback, called with the epoll event mask.  Handlers must
never block: every descriptor they own is non-blocking.

Timers live in a heap ordered by deadline, measured on the monotonic clock.
The epoll wait is bounded by the nearest deadline, so timers fire at most a
few milliseconds late and cost nothing while nobody has armed one.  A
cancelled timer stays in the heap (marked dead) until its deadline passes:
that keeps cancellation O(1), which matters when thousands of flows re-arm
their ACK timers on every segment.  But cancelling drops the callback at
once, so that a dead timer (a closed flow's idle timer can be two hours
away) keeps nothing alive, and once dead entries outnumber live ones the
heap is rebuilt without them, so it cannot grow with flows long gone.

Signals are turned into events with ``signal.set_wakeup_fd`` on a
non-blocking socketpair: the Python-level handler only records the signal
number, and the loop dispatches registered callbacks from its own context,
so no handler ever runs in the middle of another.

A callback that raises is a bug, and it must not take every other flow down
with it: the loop counts it (``faults``), logs it with its traceback at
debug level, calls the error handler given with the descriptor or timer
(a TCP flow resets itself there, and only itself), and goes on.  A
``BaseException`` (``SystemExit``, ``KeyboardInterrupt``) still ends
``run``.
"""

from __future__ import annotations

import heapq
import itertools
import select
import signal
import socket
import time
import traceback
from collections.abc import Callable

from passt import log

EventCallback = Callable[[int], None]
TimerCallback = Callable[[], None]
ErrorCallback = Callable[[Exception], None]
COMPACT_MIN = 256  # dead timers before the heap may be rebuilt without them

IN = select.EPOLLIN
OUT = select.EPOLLOUT
RDHUP = select.EPOLLRDHUP
ERR = select.EPOLLERR
HUP = select.EPOLLHUP
ET = select.EPOLLET


def _nothing() -> None:
    """What a cancelled timer would call: it holds no reference to anything."""


class Timer:
    """A one-shot timer handle; ``cancel()`` is cheap and idempotent."""

    __slots__ = ("deadline", "callback", "on_error", "cancelled", "loop")

    def __init__(
        self, deadline: float, callback: TimerCallback, on_error: ErrorCallback | None,
        loop: EventLoop,
    ) -> None:  # fmt: skip
        self.deadline = deadline
        self.callback = callback
        self.on_error = on_error
        self.cancelled = False
        self.loop: EventLoop | None = loop  # None once it fired or was cancelled

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = _nothing  # let go of whatever the callback holds
        self.on_error = None
        loop = self.loop
        if loop is not None:
            self.loop = None
            loop._timer_cancelled()


class EventLoop:
    """epoll-driven dispatcher for descriptors, timers and signals."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, EventCallback] = {}
        self._error_handlers: dict[int, ErrorCallback] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._dead_timers = 0  # cancelled timers still in the heap
        self._seq = itertools.count()
        self._signal_handlers: dict[int, TimerCallback] = {}
        self._pending_signals: list[int] = []
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._running = False
        self.exit_status = 0
        self.faults = 0  # callbacks that raised

    # -- descriptors -------------------------------------------------------

    def add(
        self, fd: int, events: int, callback: EventCallback, on_error: ErrorCallback | None = None
    ) -> None:
        """Watch ``fd`` for ``events`` (an EPOLL* mask), calling ``callback(mask)``;
        ``on_error(exception)`` if the callback raises."""
        self._epoll.register(fd, events)
        self._handlers[fd] = callback
        if on_error is not None:
            self._error_handlers[fd] = on_error

    def modify(self, fd: int, events: int, callback: EventCallback | None = None) -> None:
        """Change the watched events (and optionally the callback) of ``fd``."""
        self._epoll.modify(fd, events)
        if callback is not None:
            self._handlers[fd] = callback

    def remove(self, fd: int) -> None:
        """Stop watching ``fd``; harmless if it was never added.  Call before close()."""
        self._error_handlers.pop(fd, None)
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def watching(self, fd: int) -> bool:
        return fd in self._handlers

    # -- timers ------------------------------------------------------------

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def call_later(
        self, delay: float, callback: TimerCallback, on_error: ErrorCallback | None = None
    ) -> Timer:
        return self.call_at(time.monotonic() + delay, callback, on_error)

    def call_at(
        self, deadline: float, callback: TimerCallback, on_error: ErrorCallback | None = None
    ) -> Timer:
        """Call ``callback()`` once at ``deadline``; ``on_error(exception)`` if it raises."""
        timer = Timer(deadline, callback, on_error, self)
        heapq.heappush(self._timers, (deadline, next(self._seq), timer))
        return timer

    def _timer_cancelled(self) -> None:
        """One more dead entry in the heap: rebuild it once they are the majority."""
        self._dead_timers += 1
        timers = self._timers
        if self._dead_timers > COMPACT_MIN and self._dead_timers * 2 > len(timers):
            timers[:] = [entry for entry in timers if not entry[2].cancelled]
            heapq.heapify(timers)
            self._dead_timers = 0

    def pending_timers(self) -> int:
        """Entries in the timer heap, dead ones included (for leak checks)."""
        return len(self._timers)

    def _next_timeout(self) -> float:
        """Seconds until the nearest live timer (0 if due), -1 with none."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
            self._dead_timers -= 1
        if not timers:
            return -1
        timeout = timers[0][0] - time.monotonic()
        return timeout if timeout > 0 else 0.0

    def _run_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                self._dead_timers -= 1
                continue
            timer.cancelled = True
            timer.loop = None
            try:
                timer.callback()
            except Exception as e:
                self._failed(timer.on_error, e)

    def _failed(self, on_error: ErrorCallback | None, error: Exception) -> None:
        """A callback raised: count it, log it, let its owner clean up, go on."""
        self.faults += 1
        log.debug("loop: callback failed: %s", "".join(traceback.format_exception(error)))
        if on_error is None:
            return
        try:
            on_error(error)
        except Exception as again:
            log.debug("loop: error handler failed: %s", again)

    # -- signals -----------------------------------------------------------

    def add_signal(self, signum: int, callback: TimerCallback) -> None:
        """Call ``callback()`` from the loop whenever ``signum`` arrives."""
        if self._wake_r is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            self.add(self._wake_r.fileno(), IN, self._on_wakeup)
        self._signal_handlers[signum] = callback
        signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, _frame: object) -> None:
        self._pending_signals.append(signum)

    def _on_wakeup(self, _events: int) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass
        pending, self._pending_signals = self._pending_signals, []
        for signum in dict.fromkeys(pending):
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler()

    # -- running -----------------------------------------------------------

    def stop(self, status: int = 0) -> None:
        """Make ``run()`` return ``status`` after the current iteration."""
        self.exit_status = status
        self._running = False

    def run_once(self, max_wait: float = -1) -> None:
        """One iteration: wait (bounded by timers and ``max_wait``), dispatch."""
        timeout = self._next_timeout()
        if max_wait >= 0 and (timeout < 0 or timeout > max_wait):
            timeout = max_wait
        try:
            events = self._epoll.poll(timeout, 256)
        except InterruptedError:
            events = []
        handlers = self._handlers
        for fd, mask in events:
            callback = handlers.get(fd)
            if callback is not None:
                try:
                    callback(mask)
                except Exception as e:
                    self._failed(self._error_handlers.get(fd), e)
        self._run_timers()

    def run(self) -> int:
        """Dispatch until ``stop()``; returns the exit status given to it."""
        self._running = True
        while self._running:
            self.run_once()
        return self.exit_status

    def close(self) -> None:
        if self._wake_r is not None:
            signal.set_wakeup_fd(-1)
            self.remove(self._wake_r.fileno())
            self._wake_r.close()
            if self._wake_w is not None:
                self._wake_w.close()
            self._wake_r = self._wake_w = None
        self._epoll.close()
