"""CPU time of the serving stack's processes over a cell, by role, from /proc: where the cores go.

A throughput ceiling on the serving path is a process that runs out of CPU (a router relaying per
message, a worker front, the engine's host loop) or a resource they wait on. Counting each role's
CPU seconds over a cell, divided by the cell's wall time, says which: a role near a whole core per
process is the limit (Python runs one thread at a time), one well below is waiting.

Roles are the bench's direct children, by command line (``radixfair_router``, ``radixfair_worker``,
``redis-server``; anything else still running: ``other``, e.g. multiprocessing's resource tracker),
each with all its descendants (the worker's engine process is the worker's child). The bench's own
process and the children it has reaped are ``bench``: ``resource.getrusage``, since the CPU of an
exited process is no longer in /proc. The load generators are spawned and joined within their cell,
so their CPU is in ``bench`` (as is a server that died mid-cell, whose own role then reads low).

The engine loop's own thread is also read by the scheduler's clock (``loop_sched``: the thread's
seconds on a CPU and runnable but waiting for one, /proc/<pid>/task/<tid>/schedstat): a loop that
steps without pause but shows less than a core is either waiting for a CPU (run queue: other
processes on its core) or blocked (the GIL, a lock, a pipe, the device), and the two differ here.

Linux only; elsewhere ``sample`` returns nothing and the columns stay empty.
"""

from __future__ import annotations

import os
import resource
import time
from collections import defaultdict
from pathlib import Path

PROC = Path("/proc")
ROLES = ("router", "worker", "worker_engine", "redis", "other", "bench")
_ROLE_NEEDLES = (("radixfair_router", "router"), ("radixfair_worker", "worker"), ("redis-server", "redis"))
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process; None if it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) * _TICK_S


def thread_sched(pid: int, tid: int | None = None) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of thread ``tid`` (default: the
    process's main thread) of process ``pid``; None if it is gone or the kernel keeps no schedstat."""
    try:
        task = PROC / str(pid) / "task" / str(pid if tid is None else tid)
        fields = (task / "schedstat").read_text().split()
    except OSError:
        return None
    return int(fields[0]) * 1e-9, int(fields[1]) * 1e-9


def engine_loop_sched(root: int | None = None) -> tuple[float, float]:
    """``thread_sched`` of the engine loop, summed over every worker's engine process below ``root``
    (default: this process): the main thread of each process whose parent is a worker."""
    root = os.getpid() if root is None else root
    workers = {pid for pid, (role, _, _) in children_cpu(root).items() if role == "worker"}
    on_cpu = waiting = 0.0
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] in workers:
                sched = thread_sched(int(entry.name))
                if sched is not None:
                    on_cpu, waiting = on_cpu + sched[0], waiting + sched[1]
    return on_cpu, waiting


def _role(pid: int) -> str:
    try:
        cmdline = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    for needle, role in _ROLE_NEEDLES:
        if needle in cmdline:
            return role
    return "other"


def children_cpu(root: int) -> dict[int, tuple[str, float, float]]:
    """Per direct child of ``root``: (role, CPU seconds so far of it and all its descendants, of its
    descendants alone)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parent[int(entry.name)], cpu[int(entry.name)] = stat
    trees: dict[int, tuple[str, float, float]] = {}
    for pid, seconds in cpu.items():
        top = pid
        while parent.get(top, 0) not in (root, 0) and top != root:
            top = parent[top]
        if top == root or parent.get(top) != root:
            continue  # not below root (or root itself)
        role, total, below = trees.get(top) or (_role(top), 0.0, 0.0)
        trees[top] = (role, total + seconds, below + (seconds if pid != top else 0.0))
    return trees


def sample(root: int | None = None) -> dict[str, float]:
    """CPU seconds so far per role among ``root``'s descendants (default: this process), plus ``bench``
    (this process and its reaped children)."""
    if not PROC.is_dir():
        return {}
    totals: dict[str, float] = defaultdict(float)
    for role, seconds, below in children_cpu(os.getpid() if root is None else root).values():
        totals[role] += seconds
        if role == "worker":
            # The worker's engine process (its child): the rest of ``worker`` is the serving front.
            totals["worker_engine"] += below
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals["bench"] = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    return dict(totals)


class CellCpu:
    """Cores used per role between ``start`` and ``stop``: CPU seconds over wall seconds."""

    def __init__(self) -> None:
        self._before: dict[str, float] = {}
        self._started = 0.0

    def start(self) -> None:
        self._before, self._started = sample(), time.monotonic()

    def stop(self) -> dict[str, float | None]:
        after, wall = sample(), time.monotonic() - self._started
        if not after or wall <= 0:
            return {f"{role}_cores": None for role in ROLES}
        return {
            f"{role}_cores": round((after.get(role, 0.0) - self._before.get(role, 0.0)) / wall, 3)
            for role in ROLES
        }
