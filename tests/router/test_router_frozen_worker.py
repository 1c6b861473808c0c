"""A frozen worker (SIGSTOP): its open streams end when it leaves rotation (issue 12, point 7).

With the default ``forward.unhealthy_stream_silence_s`` (unset) a stream of a worker out of rotation
ends once it has been silent for what the health checks needed to give up on the worker,
``unhealthy_after_failures x health_check_timeout_s``. A frozen worker has been silent about that
long when it leaves rotation, so its streams end then, or within one more check timeout.

Nothing here is timed. The idle limit and the caller's deadline are set far beyond that bound, so
a stream that ends with UNAVAILABLE ended because its worker left rotation; and how soon after is
counted in health checks: the registry counts each failed check of the frozen worker, one per
check timeout plus interval, so the count when the stream ends says how many check periods it
outlived the worker's removal by.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace

import grpc
import pytest
from support.router_stack import CLIENTS, router_config, running_router, worker_id

from radixfair.client import ClientConfig, RouterClient

# Far above every health-check bound (2 x 1 s check timeouts here): a stream that ends before
# either ended because its worker left rotation, not because it idled out or the caller gave up.
IDLE_LIMIT_S = 600.0
CALLER_DEADLINE_S = 20.0


def frozen_stack_config(tiny_model_dir, workers):
    """The test stack (checks every 0.2 s; check timeout, failures and stream silence at their defaults)."""
    config = router_config(tiny_model_dir, workers, policy="round_robin")
    return replace(config, forward=replace(config.forward, stream_idle_timeout_s=IDLE_LIMIT_S))


def caller(running, client_id: str) -> RouterClient:
    key = CLIENTS[client_id][0]
    return RouterClient(
        ClientConfig(f"127.0.0.1:{running.port}", key, max_attempts=1, timeout_s=CALLER_DEADLINE_S)
    )


def test_the_default_silence_bound_is_what_the_health_checks_take_to_give_up(tiny_model_dir):
    config = router_config(tiny_model_dir, [])
    registry = config.registry
    assert config.forward.unhealthy_stream_silence_s is None
    gives_up_after_s = registry.unhealthy_after_failures * registry.health_check_timeout_s
    assert config.unhealthy_stream_silence_s == gives_up_after_s
    assert config.unhealthy_stream_silence_s * 10 <= CALLER_DEADLINE_S


def test_a_stream_of_a_worker_frozen_mid_stream_ends_with_unavailable_when_it_leaves_rotation(
    spawn_workers, tiny_model_dir
):
    workers = spawn_workers(2)
    by_id = {worker_id(w): w for w in workers}
    frozen = []
    config = frozen_stack_config(tiny_model_dir, workers)

    async def scenario():
        async with running_router(config) as running:
            async with caller(running, "alice") as client:

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
                    await read()
                endpoint = running.registry.get(worker_id(frozen[0]))
                failed_checks = endpoint.failures
                healthy = [w.worker_id for w in running.registry.healthy()]
            return failure.value, failed_checks, healthy

    try:
        error, failed_checks, healthy = asyncio.run(scenario())
    finally:
        for worker in frozen:
            worker.process.send_signal(signal.SIGCONT)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    assert "left rotation" in error.details() and "retry the request" in error.details()
    assert worker_id(frozen[0]) not in healthy
    # Out after unhealthy_after_failures failed checks; the stream ends within one more check
    # timeout, so at most one more failed check (and one in flight as the error reaches us).
    assert failed_checks <= config.registry.unhealthy_after_failures + 2, failed_checks


def test_a_request_stuck_on_a_frozen_worker_before_its_first_token_is_retried_elsewhere(
    spawn_workers, two_workers, tiny_model_dir
):
    # Only the frozen worker is the test's own; the one that serves is one of the session's.
    workers = [*spawn_workers(1), two_workers[0]]
    frozen = workers[0]

    async def scenario():
        async with running_router(frozen_stack_config(tiny_model_dir, workers)) as running:
            # Frozen while still in rotation: round robin sends one of these two requests there.
            frozen.process.send_signal(signal.SIGSTOP)
            async with caller(running, "bob") as client:
                requests = [client.generate(f"frozen {n}", max_tokens=3, ignore_eos=True) for n in range(2)]
                outputs = await asyncio.gather(*requests)
            retries = running.metrics.retries._value.get()
            return outputs, retries

    try:
        outputs, retries = asyncio.run(scenario())
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    assert [o.result.worker_id for o in outputs] == [worker_id(workers[1])] * 2
    assert all(o.result.usage.completion_tokens == 3 for o in outputs)
    assert retries >= 1
