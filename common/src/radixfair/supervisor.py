"""Keeps a set of child processes running, as a process manager would.

A child that exits is restarted after a backoff that doubles with each
consecutive crash (so a child that cannot start does not spin the CPU) and
resets once it has stayed up for ``stable_after_s``. Every exit and restart is
logged with its reason. ``radixfair up`` runs its Redis, router and workers
under one ``Supervisor``, so one crashed worker no longer takes the stack down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    # A child that ran this long before it exited starts again from first_backoff_s.
    stable_after_s: float = 60.0


class Supervised(Protocol):
    """One restartable child: Redis, the router or a worker."""

    name: str

    def alive(self) -> bool: ...

    def exit_reason(self) -> str:
        """How it ended (exit status, where its log is), for the log line."""
        ...

    def restart(self) -> None:
        """Starts it again; may raise, and is then retried after the next backoff."""
        ...


@dataclass
class _Watch:
    child: Supervised
    started_at: float
    crashes: int = 0
    restart_at: float | None = None


class Supervisor:
    """Restarts exited children with backoff; ``check()`` is called from the owner's loop."""

    def __init__(self, policy: RestartPolicy = RestartPolicy(), clock: Callable[[], float] = time.monotonic):
        self._policy = policy
        self._clock = clock
        self._watches: list[_Watch] = []

    def watch(self, child: Supervised) -> None:
        self._watches.append(_Watch(child, self._clock()))

    def forget(self) -> None:
        self._watches.clear()

    def check(self) -> None:
        """Notices exited children and restarts those whose backoff has passed."""
        now = self._clock()
        for watch in self._watches:
            if watch.restart_at is None:
                if watch.child.alive():
                    continue
                self._schedule(watch, now, watch.child.exit_reason())
            if now >= watch.restart_at:  # type: ignore[operator]
                self._restart(watch, now)

    def _schedule(self, watch: _Watch, now: float, reason: str) -> None:
        if now - watch.started_at >= self._policy.stable_after_s:
            watch.crashes = 0
        delay = min(self._policy.max_backoff_s, self._policy.first_backoff_s * 2**watch.crashes)
        watch.crashes += 1
        watch.restart_at = now + delay
        name, crashes = watch.child.name, watch.crashes
        log.warning("%s %s; restarting in %.1f s (restart %d)", name, reason, delay, crashes)

    def _restart(self, watch: _Watch, now: float) -> None:
        watch.restart_at = None
        watch.started_at = now
        try:
            watch.child.restart()
        except Exception as error:  # noqa: BLE001 - a failed start is one more crash, retried with backoff
            self._schedule(watch, now, f"failed to start ({error})")
            return
        log.warning("%s restarted", watch.child.name)
