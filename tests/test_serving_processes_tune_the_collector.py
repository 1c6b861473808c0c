"""Every process on a request's path runs under the serving collector settings (radixfair.gc_tuning).

The worker's serving front ran with CPython's default collector while its engine process and the
router ran ``tune_for_serving``: the front allocates per token of every stream and holds the
tokenizer, tracer and gRPC state, so its collections ran every few hundred tokens and walked all of
it (notes/OPEN_FINDINGS.md, tenth wave). The same gap was found before in the serving bench's
in-process engine (tests/bench/test_bench_engines_run_as_served.py).

A service process starts as ``run_service(name, serve, config)`` in its package's ``__main__``; its
``serve`` (in ``app.py``) must tune the collector once serving, and so must the worker's engine
process entry. The distiller is the one service left out, by name: its requests start training jobs,
and nothing in it runs per token of a stream.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support.ast_calls import called_names

SERVICES = Path(__file__).resolve().parents[1] / "services"
TUNERS = {"tune_for_serving", "tune_for_routing"}
# Services whose process serves no stream (see the module docstring).
NOT_ON_THE_REQUEST_PATH = {"radixfair_distiller"}


def _reached_calls(path: Path, name: str) -> set[str]:
    """What ``name`` in ``path`` calls, and what the module's functions it calls call, transitively."""
    functions = {
        node.name: node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert name in functions, f"{path} defines no {name}"
    reached, todo, seen = set(), [name], set()
    while todo:
        current = todo.pop()
        seen.add(current)
        calls = called_names(functions[current])
        reached |= calls
        todo += [c for c in calls if c in functions and c not in seen]
    return reached


def test_every_serving_process_tunes_its_collector_once_serving() -> None:
    services = sorted(p.parent for p in SERVICES.glob("*/src/*/__main__.py"))
    checked, untuned = [], []
    for package in services:
        if "run_service" not in called_names(ast.parse((package / "__main__.py").read_text())):
            continue
        if package.name in NOT_ON_THE_REQUEST_PATH:
            continue
        checked.append(package.name)
        if not _reached_calls(package / "app.py", "serve") & TUNERS:
            untuned.append(f"{package.name}.app.serve")
    engine_loop = SERVICES / "worker/src/radixfair_worker/engine_loop.py"
    if not _reached_calls(engine_loop, "run_engine_process") & TUNERS:
        untuned.append("radixfair_worker.engine_loop.run_engine_process")
    assert checked == ["radixfair_router", "radixfair_worker"]  # the walk finds the serving processes
    assert untuned == []
