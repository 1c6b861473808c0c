"""The worker's engine process with its model taken out (a spawn entry point for EngineClient).

A module of its own so a spawned process imports it by name: bench scripts run as ``__main__``.
"""

from __future__ import annotations

from multiprocessing.connection import Connection

from radixfair_engine.engine import Engine
from radixfair_worker.engine_loop import run_engine_process
from radixfair_worker.engine_protocol import EngineSpec


def null_runner(engine: Engine) -> None:
    """Swaps the engine's runner for one whose forward costs nothing (engine_step_anatomy.NullRunner)."""
    from bench.engine.engine_step_anatomy import NullRunner

    engine.runner = NullRunner()  # type: ignore[assignment]


def run_null_engine_process(spec: EngineSpec, commands: Connection, outputs: Connection) -> None:
    run_engine_process(spec, commands, outputs, after_build=null_runner)
