"""A load report does not wait behind a long engine step, but does wait on a stuck engine.

The routers' health check asks each worker for a load report with the check's timeout. A CPU step
can take seconds (a prefill chunk on a busy box), so a report that waited for the step in progress
failed the check of a worker that was only busy, and the routers took it out of rotation. The
engine here is scripted (a real spawned process and real pipes): it answers the first state
request at once and holds the second, as a step in progress does, until the test releases it.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from pathlib import Path

from prometheus_client import CollectorRegistry

from radixfair_engine.config import EngineConfig
from radixfair_engine.engine_outputs import LoadSnapshot
from radixfair_worker.engine_client import EngineClient
from radixfair_worker.engine_protocol import (
    STOP,
    EngineReady,
    EngineSpec,
    PublishedState,
    ReportState,
    StepBatch,
)
from radixfair_worker.worker_metrics import WorkerMetrics

WAIT_S = 120  # generous bound on each wait: a spawned process starts slowly on a loaded machine
RELEASE = "release-the-step"


def published(number: int) -> PublishedState:
    """The engine's ``number``-th published state (told apart by its queue length)."""
    snapshot = LoadSnapshot(
        queue_length=number, running_requests=0, running_tokens=0, free_pages=1,
        total_pages=1, cached_pages=0, cache_hit_rate=0.0,
    )  # fmt: skip
    return PublishedState(snapshot, [], {}, {}, {}, 0)


def engine_with_a_long_second_step(spec: EngineSpec, commands: Connection, outputs: Connection) -> None:
    """Publishes state 1 at once; state 2 only once the test writes RELEASE into model_dir."""
    outputs.send(EngineReady(page_size=16, max_context_tokens=4096))
    asked = 0
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            received = commands.recv()
        except EOFError:
            return
        if STOP in received:
            return
        for command in received:
            if not isinstance(command, ReportState):
                continue
            asked += 1
            while asked > 1 and not (Path(spec.model_dir) / RELEASE).exists():
                if time.monotonic() > deadline:
                    return  # the front never released the step: the test has failed already
                time.sleep(0.02)
            outputs.send(StepBatch(state=published(asked)))


def start_client(model_dir: Path, **options: float) -> EngineClient:
    return EngineClient(
        EngineSpec(EngineConfig(), model_dir),
        WorkerMetrics(CollectorRegistry()),
        entry=engine_with_a_long_second_step,
        **options,
    )


def test_a_load_report_asked_during_a_long_step_is_the_last_published_state_at_once(tmp_path):
    async def scenario() -> tuple[int, int, int]:
        client = start_client(tmp_path)
        await client.start()
        try:
            first = await asyncio.wait_for(client.current_state(), WAIT_S)
            # The engine holds this one, as it would during a long step.
            fresh = asyncio.ensure_future(client.current_state())
            await asyncio.sleep(0)
            # Must answer without the step: the engine finishes it only after this returns.
            during = await asyncio.wait_for(client.current_state(), WAIT_S)
            (tmp_path / RELEASE).touch()
            after = await asyncio.wait_for(fresh, WAIT_S)
        finally:
            await client.stop()
        return first.snapshot.queue_length, during.snapshot.queue_length, after.snapshot.queue_length

    first, during, after = asyncio.run(scenario())

    assert (first, during, after) == (1, 1, 2)


def test_a_load_report_waits_again_once_the_engine_is_stuck_past_the_limit(tmp_path):
    stuck_after_s = 0.5

    async def scenario() -> tuple[bool, int]:
        client = start_client(tmp_path, stuck_engine_after_s=stuck_after_s)
        await client.start()
        try:
            await asyncio.wait_for(client.current_state(), WAIT_S)
            fresh = asyncio.ensure_future(client.current_state())
            await asyncio.sleep(2 * stuck_after_s)  # the held ask is now older than the limit
            late = asyncio.ensure_future(client.current_state())
            done, _ = await asyncio.wait({late}, timeout=2 * stuck_after_s)
            answered_from_the_last_state = late in done
            (tmp_path / RELEASE).touch()
            await asyncio.wait_for(fresh, WAIT_S)
            state = await asyncio.wait_for(late, WAIT_S)
        finally:
            await client.stop()
        return answered_from_the_last_state, state.snapshot.queue_length

    answered_from_the_last_state, queue_length = asyncio.run(scenario())

    assert not answered_from_the_last_state
    assert queue_length == 2
