"""A failure that is one request's own ends that request alone: the router neither retries it on other
workers nor takes any worker out of rotation (issue 12.3: one request must not take down the pool)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from router.conftest import start_workers
from support.models import make_tiny_model_dir
from support.router_stack import client_for, router_config, running_router

# The model's embedding has 1,000 rows while its tokenizer knows 49,152 ids, so a prompt id in
# between passes every edge check and fails only inside the forward pass of the request holding it.
MODEL_VOCAB = 1000
BAD_ID = 5000


@pytest.fixture
def small_vocab_workers(smollm2_dir, tmp_path):
    model_dir = make_tiny_model_dir(tmp_path / "small-vocab", smollm2_dir, vocab_size=MODEL_VOCAB)
    workers = start_workers(model_dir, tmp_path, 2)
    yield model_dir, workers
    for worker in workers:
        worker.stop()


def test_a_request_failing_alone_is_not_retried_and_leaves_every_worker_in_rotation(small_vocab_workers):
    model_dir, workers = small_vocab_workers

    async def scenario():
        async with running_router(router_config(model_dir, workers)) as running:
            client = client_for(running, "alice")
            try:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await client.generate([1, 2, BAD_ID, 3], max_tokens=4, ignore_eos=True)
                healthy_after_failure = len(running.registry.healthy())
                fine = await client.generate([1, 2, 3, 4], max_tokens=4, ignore_eos=True)
            finally:
                await client.close()
            return failed.value, healthy_after_failure, fine

    error, healthy, fine = asyncio.run(scenario())
    # The worker's own verdict reaches the caller (not UNAVAILABLE after every worker was tried).
    assert error.code() == grpc.StatusCode.INTERNAL, error
    assert healthy == len(workers)
    assert len(fine.token_ids) == 4
