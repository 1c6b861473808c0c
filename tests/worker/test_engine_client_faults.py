"""The serving front against a faulty engine process (real spawned processes, real pipes).

A half-written message from the engine must never block the front's event
loop; an engine whose every step fails must exit, so the front reports the
worker lost (NOT_SERVING) instead of failing every request while it looks
healthy.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry
from worker.engine_faults import (
    HALF_WRITTEN_MARKER,
    HALF_WRITTEN_TEXT,
    HALF_WRITTEN_TOKENS,
    engine_writing_a_batch_in_two_halves,
    run_engine_with_a_broken_policy,
)

from radixfair.errors import EngineStoppedError, RadixfairError
from radixfair_engine.config import EngineConfig
from radixfair_engine.request import Request, SamplingConfig
from radixfair_worker.engine_client import EngineClient
from radixfair_worker.engine_loop import EXIT_STEPS_FAILING
from radixfair_worker.engine_protocol import EngineSpec, RequestOutcome
from radixfair_worker.worker_metrics import WorkerMetrics

WAIT_S = 120  # generous: a spawned process imports torch and builds a model on a loaded machine


def new_request(max_tokens: int = 4) -> Request:
    return Request("caller-id", "tenant", [100, 101, 102, 103], SamplingConfig(max_tokens=max_tokens))


def test_the_front_keeps_serving_while_the_engine_has_written_half_a_message(tmp_path):
    async def scenario() -> tuple[list[int], str, RequestOutcome]:
        client = EngineClient(
            EngineSpec(EngineConfig(), tmp_path),
            WorkerMetrics(CollectorRegistry()),
            entry=engine_writing_a_batch_in_two_halves,
        )
        await client.start()
        try:
            deadline = time.monotonic() + WAIT_S
            while not (tmp_path / HALF_WRITTEN_MARKER).exists():
                assert time.monotonic() < deadline, "the engine never wrote its first half"
                await asyncio.sleep(0.01)  # the loop runs while the half message sits in the pipe
            # Passes of the loop that poll the pipe, now readable: a reader callback that blocks for
            # the whole message (as the front once had) would stop the loop here.
            for _ in range(3):
                await asyncio.sleep(0)
            # A call made on the event loop now must reach the engine while its message is half
            # written: the engine only writes the rest once a command arrives (or after 60 s).
            stream = client.submit(new_request())
            ids, text = [], ""
            while True:
                chunk = await asyncio.wait_for(stream.take(), WAIT_S)
                ids += chunk.token_ids
                text += chunk.text
                if chunk.end is not None:
                    assert isinstance(chunk.end, RequestOutcome), chunk.end
                    return ids, text, chunk.end
        finally:
            await client.stop()

    ids, text, end = asyncio.run(scenario())

    assert end.text == "released", "the front's event loop was blocked by the half-written message"
    assert ids == HALF_WRITTEN_TOKENS and text == HALF_WRITTEN_TEXT


def test_an_engine_whose_steps_keep_failing_exits_and_the_front_reports_it_lost(tiny_model_dir):
    failures = 3
    config = EngineConfig(num_pages=64, page_size=8, max_failed_steps_in_a_row=failures)
    client = EngineClient(
        EngineSpec(config, tiny_model_dir, torch_threads=1),
        WorkerMetrics(CollectorRegistry()),
        entry=run_engine_with_a_broken_policy,
    )

    async def scenario() -> tuple[list[RadixfairError], bool, int | None]:
        await client.start()
        try:
            errors, lost_before_the_last = [], True
            for _ in range(failures):
                # One request at a time: each one's admission step fails for the whole batch.
                lost_before_the_last = client.lost.is_set()
                chunk = await asyncio.wait_for(client.submit(new_request()).take(), WAIT_S)
                assert isinstance(chunk.end, RadixfairError), chunk
                errors.append(chunk.end)
            await asyncio.wait_for(client.lost.wait(), WAIT_S)
            with pytest.raises(EngineStoppedError):
                client.submit(new_request())
            return errors, lost_before_the_last, await client.engine_exit_code(WAIT_S)
        finally:
            await client.stop()

    errors, lost_before_the_last, exit_code = asyncio.run(scenario())

    assert not lost_before_the_last  # the first failures only fail their requests
    assert all("engine step failed" in str(error) for error in errors)
    assert exit_code == EXIT_STEPS_FAILING
