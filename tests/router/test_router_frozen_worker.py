"""A frozen worker (SIGSTOP): its open streams end once it leaves rotation, long before the idle limit.

Deadlines here are generous bounds derived from the configured intervals (the idle limit is set
far above them), never measurements: the assertion is that the stream ends, and how.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace

import grpc
import pytest
from support.router_stack import client_for, router_config, running_router, worker_id

# Far above health checks (0.2 s interval, 1 s timeout, 2 failures): a stream that ends before
# this ended because the worker left rotation, not because it idled out.
IDLE_LIMIT_S = 600.0
# A stream of a worker out of rotation ends once silent this long (the default is larger, for
# loaded machines whose workers miss health checks while busy).
SILENCE_S = 3.0
ENDS_WITHIN_S = 60.0


def frozen_stack_config(tiny_model_dir, workers):
    config = router_config(tiny_model_dir, workers, policy="round_robin")
    forward = replace(
        config.forward, stream_idle_timeout_s=IDLE_LIMIT_S, unhealthy_stream_silence_s=SILENCE_S
    )
    return replace(config, forward=forward)


def test_a_stream_of_a_worker_frozen_mid_stream_ends_with_unavailable(spawn_workers, tiny_model_dir):
    workers = spawn_workers(2)
    by_id = {worker_id(w): w for w in workers}
    frozen = []

    async def scenario():
        async with running_router(frozen_stack_config(tiny_model_dir, workers)) as running:
            async with client_for(running, "alice", max_attempts=1) as client:

                async def read() -> int:
                    received = 0
                    async for message in client.stream("a long story", max_tokens=100_000, ignore_eos=True):
                        received += len(message.delta.token_ids)
                        if received and not frozen:
                            [victim] = [w for w in running.registry.all() if w.inflight]
                            frozen.append(by_id[victim.worker_id])
                            frozen[0].process.send_signal(signal.SIGSTOP)
                    return received

                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await asyncio.wait_for(read(), ENDS_WITHIN_S)
                healthy = [w.worker_id for w in running.registry.healthy()]
            return failure.value, healthy

    try:
        error, healthy = asyncio.run(scenario())
    finally:
        for worker in frozen:
            worker.process.send_signal(signal.SIGCONT)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "left rotation" in error.details() and "retry the request" in error.details()
    assert worker_id(frozen[0]) not in healthy


def test_a_request_stuck_on_a_frozen_worker_before_its_first_token_is_retried_elsewhere(
    spawn_workers, tiny_model_dir
):
    workers = spawn_workers(2)
    frozen = workers[0]

    async def scenario():
        async with running_router(frozen_stack_config(tiny_model_dir, workers)) as running:
            # Frozen while still in rotation: round robin sends one of these two requests there.
            frozen.process.send_signal(signal.SIGSTOP)
            async with client_for(running, "bob", max_attempts=1) as client:
                requests = [client.generate(f"frozen {n}", max_tokens=3, ignore_eos=True) for n in range(2)]
                outputs = await asyncio.wait_for(asyncio.gather(*requests), ENDS_WITHIN_S)
            retries = running.metrics.retries._value.get()
            return outputs, retries

    try:
        outputs, retries = asyncio.run(scenario())
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    assert [o.result.worker_id for o in outputs] == [worker_id(workers[1])] * 2
    assert all(o.result.usage.completion_tokens == 3 for o in outputs)
    assert retries >= 1
