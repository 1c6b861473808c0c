"""A worker that leaves rotation between the routing decision and the call (its channel already closed)
costs the request nothing: it goes to another worker and its admission is settled (review finding)."""

from __future__ import annotations

import asyncio

from support.router_stack import client_for, router_config, running_router


def test_a_request_decided_onto_a_closed_channel_is_served_elsewhere_and_leaves_nothing_in_flight(
    two_workers, tiny_model_dir
):
    async def scenario():
        # Round robin: of two requests in a row, one is decided onto each worker.
        config = router_config(tiny_model_dir, two_workers, policy="round_robin")
        async with running_router(config) as running:
            # What the registry does when a worker misses its heartbeats, minus taking it out of the
            # healthy list: the window between a decision and the forward.
            closed = running.registry.healthy()[0]
            await closed.channel.close()
            client = client_for(running, "alice")
            try:
                outputs = [
                    await client.generate([7, 8, 9, n], max_tokens=2, ignore_eos=True) for n in (1, 2, 3)
                ]
            finally:
                await client.close()
            await asyncio.sleep(0)  # settlements run as their own tasks
            for _ in range(100):
                record = next(r for r in await running.ledger.snapshot() if r.client_id == "alice")
                if record.inflight == 0:
                    break
                await asyncio.sleep(0.05)
            return closed.worker_id, outputs, record

    closed_id, outputs, record = asyncio.run(scenario())
    assert all(len(o.token_ids) == 2 for o in outputs)
    assert all(o.result.worker_id != closed_id for o in outputs)
    assert record.inflight == 0
