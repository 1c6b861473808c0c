"""The serving bench's CPU accounting (bench/engine/process_cpu.py) against processes' own clocks.

A child and its grandchild each burn CPU, report their own ``time.process_time()`` (user + system
seconds since they started, the same quantity /proc counts in clock ticks) and then wait on stdin,
so they are alive when sampled. The role is the child's command line; the grandchild's CPU counts
under its top-level ancestor's role. Tolerance: /proc counts whole ticks per process (a tick per
process and per field, user and system, may be cut), so 4 ticks for the two processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.engine import process_cpu

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
REPORT_AND_WAIT = "print(time.process_time(), flush=True)\nimport sys\nsys.stdin.read()\n"
GRANDCHILD = BURN + REPORT_AND_WAIT
CHILD = (
    "# radixfair_worker: the role's marker\n"
    "import subprocess, sys\n"
    f"g = subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}],\n"
    "    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)\n"
    "grandchild = float(g.stdout.readline())\n" + BURN + "print(grandchild, flush=True)\n" + REPORT_AND_WAIT
)

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")


def test_a_roles_cores_count_its_process_and_its_descendants_by_their_own_clocks() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        grandchild_cpu = float(child.stdout.readline())
        child_cpu = float(child.stdout.readline())
        role, counted, below = process_cpu.children_cpu(os.getpid())[child.pid]
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert role == "worker"
    assert abs(counted - (child_cpu + grandchild_cpu)) <= 4 * tick
    assert counted >= 0.6 - 4 * tick  # both burned 0.3 s at least: the grandchild is not lost
    # A worker's descendants (its engine process) are also counted apart: the grandchild alone.
    assert abs(below - grandchild_cpu) <= 2 * tick


def test_a_cell_reports_every_role_in_cores() -> None:
    cell = process_cpu.CellCpu()
    cell.start()
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    cores = cell.stop()
    assert set(cores) == {f"{role}_cores" for role in process_cpu.ROLES}
    # This process burned 0.2 s of CPU in at least 0.2 s of wall time, on one thread: at most one core.
    assert 0.0 < cores["bench_cores"] <= 1.0 + 0.05


def test_a_threads_scheduler_clock_counts_its_cpu_time_and_not_its_sleep() -> None:
    wall, cpu = time.monotonic(), time.thread_time()
    before = process_cpu.thread_sched(os.getpid())
    assert before is not None, "this kernel keeps no schedstat"
    while time.thread_time() - cpu < 0.2:
        pass
    time.sleep(0.3)
    after = process_cpu.thread_sched(os.getpid())
    cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    assert after is not None
    on_cpu, runqueue = after[0] - before[0], after[1] - before[1]
    # The main thread's own clock, read by the kernel in ns: the burn counts (0.2 s at least), the
    # 0.3 s sleep does not (on a CPU no longer than the thread's CPU time, which /proc's reads add to).
    assert 0.2 - 0.001 <= on_cpu <= cpu + 0.001
    # On a CPU and waiting for one are parts of the same wall time.
    assert 0 <= runqueue and on_cpu + runqueue <= wall + 0.001
