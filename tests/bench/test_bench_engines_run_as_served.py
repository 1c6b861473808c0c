"""Every benchmark that times an engine runs it under the worker engine process's collector settings.

The serving bench's in-process ceiling once ran with CPython's default collector while the served
engine ran `tune_for_serving`, and every ratio against it was flattered by ~25-30% at 256 streams
(notes/OPEN_FINDINGS.md, ninth wave). A script that builds an engine (``build_engine(`` or
``Engine(``) must call ``tune_for_serving()`` or build it with ``build_in_process_engine``, which does.
The simulator is left out: its engine runs on a virtual clock and a cost model, so no host time counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support.ast_calls import called_names

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_every_bench_that_builds_an_engine_runs_it_as_served() -> None:
    builders, unserved = [], []
    for path in sorted(BENCH.rglob("*.py")):
        if {"scratch", "simulator"} & set(path.relative_to(BENCH).parts):
            continue
        called = called_names(ast.parse(path.read_text()))
        if called & {"build_engine", "Engine"}:
            builders.append(path.name)
            if not called & {"tune_for_serving", "build_in_process_engine"}:
                unserved.append(str(path.relative_to(BENCH)))
    assert "serving_in_process.py" in builders  # the walk finds the engine builders
    assert unserved == []
