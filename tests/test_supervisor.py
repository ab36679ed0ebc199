"""The supervisor behind `make up`, on small real processes: backoff and giving up, bounded shutdown."""

from __future__ import annotations

import subprocess
import sys
import time

from scripts.supervisor import BACKOFF_S, GRACE_S, MAX_RESTARTS, Supervisor, die_with_parent


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True, preexec_fn=die_with_parent())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_child_that_dies_is_restarted_with_backoff_then_the_stack_gives_up():
    clock = Clock()
    stack = Supervisor(clock=clock)
    starts = []

    def start() -> subprocess.Popen:
        starts.append(clock.now)
        return _python("raise SystemExit(3)")

    stack.add("flaky", start)
    reason = None
    for _ in range(400):
        stack.children[0].proc.wait()
        reason = stack.check()
        if reason:
            break
        clock.now += 0.5
    assert reason is not None and "flaky exited with code 3" in reason and "giving up" in reason
    assert len(starts) == MAX_RESTARTS + 1  # the first start and MAX_RESTARTS restarts
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(gap >= delay for gap, delay in zip(gaps, BACKOFF_S, strict=False))  # waits grow: 1, 2, 4, ...
    stack.stop()


def test_exits_spread_over_more_than_a_minute_never_give_up():
    clock = Clock()
    stack = Supervisor(clock=clock)
    stack.add("rare", lambda: _python("raise SystemExit(1)"))
    for _ in range(3 * MAX_RESTARTS):
        stack.children[0].proc.wait()
        assert stack.check() is None
        clock.now += 31.0  # one exit every half minute: within any minute, far fewer than the limit
        assert stack.check() is None
    stack.stop()


def test_stop_is_bounded_even_for_a_child_that_ignores_sigterm():
    stack = Supervisor()
    stubborn = stack.add("stubborn", lambda: _python(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGQUIT, "
        "signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(120)"))
    polite = stack.add("polite", lambda: _python("import time\ntime.sleep(120)"), service=True)
    time.sleep(0.5)
    started = time.monotonic()
    stack.stop()
    took = time.monotonic() - started
    assert stubborn.proc.poll() is not None and polite.proc.poll() is not None
    assert GRACE_S <= took < 10  # it waited for the warm shutdown, then forced it
