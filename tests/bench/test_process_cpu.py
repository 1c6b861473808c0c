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
