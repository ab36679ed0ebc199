"""A small process supervisor for `make up` (scripts/up.py): restart what dies, stop everything on time.

- A child that exits unexpectedly is started again after a backoff (1, 2, 4 … 30 s), with its exit code in
  the log; one that exits more than `MAX_RESTARTS` times within a minute stops the whole stack with a
  message saying which and how to see why.
- `stop()` (Ctrl-C or SIGTERM on the launcher) asks every child to stop (SIGTERM: a Celery worker finishes
  its running batch in a warm shutdown), waits `GRACE_S`, then forces the rest (SIGQUIT: Celery's cold
  shutdown, then SIGKILL), services last, so the whole stack is gone in well under 10 s. Batches a worker
  did not finish are not acknowledged, so Redis hands them out again later: nothing is lost.
- Each child runs in its own session (Ctrl-C in the terminal reaches only the launcher) and gets a
  parent-death signal (Linux `PR_SET_PDEATHSIG`), so if the launcher itself is SIGKILLed its children end
  too. A process that is not our child (the embedded PostgreSQL, started by pg_ctl) gets a guardian:
  a child whose only job is to signal it when the launcher dies (`python -m scripts.supervisor guard`).

Why not a library: honcho (a Procfile runner) stops everything when one process exits and restarts
nothing; supervisord is a daemon driven by a config file, has no notion of "give up the whole stack"
and leaves its children running when it is killed. What `make up` needs is these ~150 lines.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("up")

MAX_RESTARTS = 5  # within RESTART_WINDOW_S, then the stack gives up
RESTART_WINDOW_S = 60.0
BACKOFF_S = (1, 2, 4, 8, 16, 30)
GRACE_S = 6.0  # for SIGTERM (a worker's warm shutdown); then cold shutdown and SIGKILL
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `sig` when the process that started it dies (Linux; elsewhere a no-op)."""
    parent = os.getpid()

    def preexec() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
        except (OSError, AttributeError):  # not Linux: the launcher's own shutdown still stops its children
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class Child:
    name: str
    start: Callable[[], subprocess.Popen]  # starts (or starts again) the process
    service: bool = False  # Redis, Milvus Lite: stopped after the application processes
    proc: subprocess.Popen | None = None
    exits: deque[float] = field(default_factory=deque)  # when it exited unexpectedly, in the last window
    restart_at: float | None = None


class Supervisor:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.children: list[Child] = []
        self.cleanups: list[Callable[[], None]] = []  # run last, in reverse order (e.g. stop PostgreSQL)
        self._clock = clock

    def add(self, name: str, start: Callable[[], subprocess.Popen], *, service: bool = False) -> Child:
        child = Child(name, start, service=service)
        child.proc = start()
        self.children.append(child)
        return child

    def alive(self) -> bool:
        return all(c.proc is not None and c.proc.poll() is None for c in self.children)

    def check(self) -> str | None:
        """One supervision round: restart what died (after its backoff). Returns why the stack must stop, or
        None."""
        now = self._clock()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    log.info("starting %s again", child.name)
                    child.restart_at = None
                    try:
                        child.proc = child.start()
                    except Exception as exc:  # noqa: BLE001 - a start that fails counts as an exit
                        log.error("%s did not start: %s", child.name, exc)
                        child.proc = None
                        return self._exited(child, now, "failed to start")
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            reason = self._exited(child, now, f"exited with code {child.proc.returncode}")
            if reason:
                return reason
        return None

    def _exited(self, child: Child, now: float, what: str) -> str | None:
        child.exits.append(now)
        while child.exits and now - child.exits[0] > RESTART_WINDOW_S:
            child.exits.popleft()
        if len(child.exits) > MAX_RESTARTS:
            return (f"{child.name} {what}, and it has stopped {len(child.exits)} times within "
                    f"{RESTART_WINDOW_S:.0f} s: giving up. Its output above says why.")
        delay = BACKOFF_S[min(len(child.exits) - 1, len(BACKOFF_S) - 1)]
        log.warning("%s %s; restarting it in %d s (%d/%d within a minute)", child.name, what, delay,
                    len(child.exits), MAX_RESTARTS)
        child.restart_at = now + delay
        return None

    def watch(self, interval: float = 0.5) -> str:
        """Supervise until a child gives up; returns why."""
        while True:
            reason = self.check()
            if reason:
                return reason
            time.sleep(interval)

    def stop(self) -> None:
        """Stop the application processes, then the services, then run the cleanups; bounded in time."""
        for group in ([c for c in self.children if not c.service], [c for c in self.children if c.service]):
            running = [c for c in reversed(group) if c.proc is not None and c.proc.poll() is None]
            started = time.monotonic()
            for child in running:
                log.info("stopping %s", child.name)
                _signal(child, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
            for forced, sig in ((False, None), (True, signal.SIGQUIT), (True, signal.SIGKILL)):
                for child in running:
                    if forced and child.proc is not None and child.proc.poll() is None:
                        log.warning("%s is still running; sending %s", child.name, signal.Signals(sig).name)
                        _signal(child, sig)
                _wait(running, deadline)
                deadline = time.monotonic() + 1.5
            if running:
                log.info("%s stopped in %.1f s", ", ".join(c.name for c in running), time.monotonic() - started)
        for cleanup in reversed(self.cleanups):
            started = time.monotonic()
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                log.error("cleanup failed: %s", exc)
            log.info("cleanup done in %.1f s", time.monotonic() - started)


def _signal(child: Child, sig: int | None) -> None:
    if sig is None or child.proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.proc.pid, sig)  # its own session: the process and anything it started


def _wait(children: list[Child], deadline: float) -> None:
    for child in children:
        if child.proc is None:
            continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(max(0.0, deadline - time.monotonic()))


def guard(pid: int, sig: int) -> None:
    """Wait for the launcher to die (this process gets SIGTERM then, see `die_with_parent`) or to be told to
    stop (SIGTERM as well), and send `sig` to `pid`: a process the launcher did not start itself."""
    def fire(*_: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        os._exit(0)

    signal.signal(signal.SIGTERM, fire)
    while True:
        signal.pause()


def start_guard(name: str, pid: int, sig: int = signal.SIGINT) -> subprocess.Popen:
    """A guardian child for `pid` (SIGINT: PostgreSQL's fast shutdown)."""
    log.info("guarding %s (pid %d): it stops with the launcher", name, pid)
    return subprocess.Popen([sys.executable, "-m", "scripts.supervisor", "guard", str(pid), str(int(sig))],
                            start_new_session=True, preexec_fn=die_with_parent())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "guard":
        guard(int(sys.argv[2]), int(sys.argv[3]))
    sys.exit("usage: python -m scripts.supervisor guard PID SIGNAL")
