"""The supervisor's restart rule over any history of crashes (issue 12, point 9).

Real child processes: each is a Python process that exits with a given status
when told to (its stdin closes), so "a crash" is a real exit the supervisor
notices by polling. Time is the supervisor's injected clock, advanced by the
test, so no test waits for a backoff to pass.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair.supervisor import RestartPolicy, Supervisor

POLICY = RestartPolicy(first_backoff_s=0.5, max_backoff_s=8.0, stable_after_s=60.0)


class ExitOnRequest:
    """A real child process that runs until ``crash()`` makes it exit with status 3."""

    name = "child"

    def __init__(self) -> None:
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.restart()

    def restart(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(3)"], stdin=subprocess.PIPE
        )
        self.starts += 1

    def crash(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_reason(self) -> str:
        return f"exited with {self.process.returncode if self.process else None}"

    def stop(self) -> None:
        if self.alive():
            self.crash()


def expected_delays(uptimes: list[float]) -> list[float]:
    """The backoff before each restart: doubling per crash, reset by a stable run, capped."""
    delays, crashes = [], 0
    for uptime in uptimes:
        if uptime >= POLICY.stable_after_s:
            crashes = 0
        delays.append(min(POLICY.max_backoff_s, POLICY.first_backoff_s * 2**crashes))
        crashes += 1
    return delays


@settings(max_examples=8)
@given(uptimes=st.lists(st.sampled_from([0.0, 1.0, 59.0, 60.0, 500.0]), min_size=1, max_size=6))
def test_each_crash_is_restarted_after_the_backoff_its_history_calls_for(uptimes):
    now = [0.0]
    supervisor = Supervisor(POLICY, clock=lambda: now[0])
    child = ExitOnRequest()
    supervisor.watch(child)
    try:
        for uptime, delay in zip(uptimes, expected_delays(uptimes), strict=True):
            now[0] += uptime
            child.crash()
            supervisor.check()  # notices the exit, schedules the restart
            starts = child.starts
            now[0] += delay - 0.25  # binary fractions: the sums are exact
            supervisor.check()
            assert child.starts == starts, "restarted before its backoff"
            now[0] += 0.25
            supervisor.check()
            assert child.starts == starts + 1 and child.alive(), "not restarted once its backoff passed"
    finally:
        child.stop()


def test_a_child_that_fails_to_start_is_retried_with_a_longer_backoff():
    now = [0.0]
    supervisor = Supervisor(POLICY, clock=lambda: now[0])
    child = ExitOnRequest()
    supervisor.watch(child)
    real_restart, failures = child.restart, [1]

    def restart_failing_once() -> None:
        if failures:
            failures.pop()
            raise OSError("no such binary")
        real_restart()

    child.restart = restart_failing_once  # type: ignore[method-assign]
    try:
        child.crash()
        supervisor.check()
        now[0] += POLICY.first_backoff_s
        supervisor.check()  # the start fails: one more crash, twice the backoff
        assert not child.alive()
        now[0] += 2 * POLICY.first_backoff_s
        supervisor.check()
        assert child.alive()
    finally:
        child.stop()


def test_a_killed_redis_comes_back_on_its_port_with_its_data():
    """`up`'s own Redis is supervised too: the router reconnects to the same ledger."""
    import redis

    from radixfair.local_stack import SupervisedRedis
    from radixfair.redis_launcher import RedisLaunchConfig, RedisServer

    now = [0.0]
    supervisor = Supervisor(POLICY, clock=lambda: now[0])
    server = RedisServer(RedisLaunchConfig(persistent=True)).start()
    try:
        redis.Redis.from_url(server.url).set("ledger", "kept")
        supervisor.watch(SupervisedRedis("redis", server))
        server._process.kill()  # noqa: SLF001 - a crash, as kill -9 would be
        server._process.wait()  # noqa: SLF001
        supervisor.check()
        now[0] += POLICY.first_backoff_s
        supervisor.check()
        assert server.running
        assert redis.Redis.from_url(server.url).get("ledger") == b"kept"
    finally:
        server.stop()


def _gone(pid: int) -> bool:
    """No such process, or only its zombie left (nothing runs)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_stack_child_stops_when_the_launcher_is_killed_outright(tmp_path):
    """`up` killed with SIGKILL cannot stop its children itself; they are told to stop (no orphans)."""
    script = (
        "import sys, time; from pathlib import Path; from radixfair.local_stack import _Child; "
        "child = _Child('sleeper', [sys.executable, '-c', 'import time; time.sleep(600)'], "
        f"Path({str(tmp_path / 'sleeper.log')!r})); print(child.process.pid, flush=True); time.sleep(600)"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(launcher.stdout.readline())
    try:
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 60  # a safety limit: the loop ends as soon as the child is gone
        while not _gone(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(child_pid), "the child outlived its launcher"
    finally:
        if not _gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)
