"""d2lpm_gated through the real router: the gate holds a flood back and releases a late client first.

The same scenario as global VTC's gate test, under D2LPM with late binding: the policy's
``admission_gate`` hook is what gives the router the gate (docs/cluster-fairness.md).
"""

from __future__ import annotations

import asyncio

from support.router_stack import client_for, router_config, running_router


def test_d2lpm_gated_serves_a_late_client_before_a_flooding_clients_backlog(
    two_workers, tiny_model_dir, redis_url
):
    finished: list[str] = []

    async def scenario():
        config = router_config(
            tiny_model_dir, two_workers[:1], redis_url, policy="d2lpm_gated", vtc_slots_per_worker=1
        )
        async with running_router(config) as running:
            async with client_for(running, "alice") as alice, client_for(running, "bob") as bob:
                first_token = asyncio.Event()

                async def request(client, name: str, n: int) -> None:
                    async for _ in client.stream(f"{name} asks question {n}", max_tokens=24, ignore_eos=True):
                        first_token.set()
                    finished.append(name)

                flood = [asyncio.create_task(request(alice, "alice", n)) for n in range(5)]
                await first_token.wait()  # alice holds the only slot; her other four wait at the gate
                late = [asyncio.create_task(request(bob, "bob", n)) for n in range(2)]
                await asyncio.gather(*flood, *late)

    asyncio.run(scenario())
    # Without the gate (plain d2lpm) all seven reach the worker at once and bob's two come last;
    # behind the gate each freed slot goes to the lower counter, so bob's come before alice's rest.
    assert finished.index("bob") < 3 and len(finished) - 1 - finished[::-1].index("bob") < 6, finished
