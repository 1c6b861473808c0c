"""global_vtc: the router holds requests back when worker slots are full, then releases them in VTC order."""

from __future__ import annotations

import asyncio

from support.router_stack import client_for, router_config, running_router


def test_a_late_client_is_served_before_a_flooding_clients_backlog(two_workers, tiny_model_dir, redis_url):
    one_worker = two_workers[:1]
    finished: list[str] = []

    async def scenario():
        config = router_config(
            tiny_model_dir, one_worker, redis_url, policy="global_vtc", vtc_slots_per_worker=1
        )
        async with running_router(config) as running:
            async with client_for(running, "alice") as alice, client_for(running, "bob") as bob:
                first_token = asyncio.Event()

                async def request(client, name: str, n: int) -> float:
                    output = None
                    async for message in client.stream(
                        f"{name} asks question {n}", max_tokens=24, ignore_eos=True
                    ):
                        first_token.set()
                        if message.HasField("result"):
                            output = message.result
                    finished.append(name)
                    return output.timings.queue_ms

                flood = [asyncio.create_task(request(alice, "alice", n)) for n in range(5)]
                await first_token.wait()  # alice holds the only slot; her other four wait at the gate
                late = [asyncio.create_task(request(bob, "bob", n)) for n in range(2)]
                return await asyncio.gather(*flood, *late)

    worker_queue_ms = asyncio.run(scenario())
    # FIFO would finish bob last; VTC gives him the slots as soon as alice's counter is ahead.
    assert finished.index("bob") < 3 and len(finished) - 1 - finished[::-1].index("bob") < 6, finished
    # The router, not the worker, did the queueing: one request reached the worker at a time.
    assert max(worker_queue_ms) < 1000
