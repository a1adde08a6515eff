"""The event loop (passt.loop): timers that let go, callbacks that fail alone."""

from __future__ import annotations

import gc
import socket
import weakref

import pytest

from passt.loop import COMPACT_MIN, IN, EventLoop


class Owner:
    """Something a callback keeps alive (a flow and its buffers, in real life)."""


@pytest.fixture
def loop():
    lp = EventLoop()
    yield lp
    lp.close()


def test_a_cancelled_timer_lets_go_of_what_its_callback_holds(loop):
    owner = Owner()
    alive = weakref.ref(owner)
    timer = loop.call_later(7200, lambda held=owner: held)
    del owner
    gc.collect()
    assert alive() is not None  # armed: the callback holds it
    timer.cancel()
    gc.collect()
    assert alive() is None  # cancelled: nothing does, though the entry waits two hours


def test_dead_timers_do_not_pile_up(loop):
    for _ in range(10 * COMPACT_MIN):
        loop.call_later(7200, lambda: None).cancel()
    assert loop.pending_timers() <= 2 * COMPACT_MIN + 1
    fired = []
    loop.call_later(0, lambda: fired.append(1))
    loop.run_once(0.1)
    assert fired == [1]


def test_cancelling_after_firing_or_twice_is_harmless(loop):
    timer = loop.call_later(0, lambda: None)
    loop.run_once(0.1)
    timer.cancel()
    timer.cancel()
    assert loop.pending_timers() == 0


@pytest.fixture
def two_readable(loop):
    pairs = [socket.socketpair() for _ in range(2)]
    for _a, b in pairs:
        b.send(b"x")
    yield [a for a, _ in pairs]
    for a, b in pairs:
        a.close()
        b.close()


def test_a_descriptor_callback_that_raises_calls_its_error_handler_and_the_loop_goes_on(
    loop, two_readable
):
    failing, healthy = two_readable
    errors: list[Exception] = []
    served: list[int] = []

    def broken(_events: int) -> None:
        raise RuntimeError("injected")

    loop.add(failing.fileno(), IN, broken, errors.append)
    loop.add(healthy.fileno(), IN, lambda _events: served.append(1))
    loop.run_once(0.1)
    assert [str(e) for e in errors] == ["injected"] and served == [1]
    assert loop.faults == 1


def test_a_timer_that_raises_calls_its_error_handler_and_the_others_fire(loop):
    errors: list[Exception] = []
    fired: list[int] = []

    def broken() -> None:
        raise ValueError("injected")

    loop.call_later(0, broken, errors.append)
    loop.call_later(0, lambda: fired.append(1))
    loop.run_once(0.1)
    assert len(errors) == 1 and fired == [1] and loop.faults == 1


def test_a_failing_error_handler_is_survived_too(loop):
    def broken() -> None:
        raise ValueError("injected")

    def handler_broken(_error: Exception) -> None:
        raise RuntimeError("handler too")

    loop.call_later(0, broken, handler_broken)
    loop.run_once(0.1)
    assert loop.faults == 1


def test_system_exit_still_ends_the_loop(loop):
    def leave() -> None:
        raise SystemExit(3)

    loop.call_later(0, leave)
    with pytest.raises(SystemExit):
        loop.run_once(0.1)
