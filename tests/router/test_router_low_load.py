"""Low load through the real router and real workers: an idle worker beats a trivial prefix match,
and a client's long shared prefix stays on its worker (the README demo's shape, issue 11)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from support.router_stack import client_for, router_config, running_router, worker_id

from radixfair.tokenization import ChatTurn

# Prompts no other test on the shared workers uses: each client has its own long system prompt,
# and all of them share only the chat template's first tokens.
SYSTEMS = {
    "alice": "You answer questions about lighthouse maintenance schedules on the northern coast, "
    "listing the lamp, the lens and the foghorn checks in the order a keeper does them.",
    "bob": "You are a gardening helper for balcony tomatoes: watering, feeding and pruning advice, "
    "one short paragraph, always mentioning how much sun the plant needs each day.",
    "carol": "You write short bedtime stories about a small red tugboat in a busy harbour, "
    "each with a friendly seagull and a calm ending that mentions the evening tide.",
}
QUESTIONS = ["Where do I start?", "What comes next?", "Give me one more tip."]


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_two_workers_both_serve_three_light_clients_and_each_client_stays_on_its_worker(
    two_workers, tiny_model_dir, redis_url, store
):
    # With Redis, an admission is a round trip: the three clients' first requests arrive together
    # and must still see each other's placements.
    async def scenario():
        url = redis_url if store == "redis" else ""
        config = router_config(tiny_model_dir, two_workers, url, policy="d2lpm")
        async with running_router(config) as running:
            placed: dict[str, list[str]] = defaultdict(list)
            clients = {name: client_for(running, name) for name in SYSTEMS}
            try:
                for question in QUESTIONS:

                    async def ask(name: str, question: str = question) -> None:
                        # Prefixed by the store: the other case's cached prefixes match nothing here.
                        system = f"[{store}] {SYSTEMS[name]}"
                        turns = [ChatTurn("system", system), ChatTurn("user", question)]
                        output = await clients[name].generate(turns, max_tokens=2, ignore_eos=True)
                        placed[name].append(output.result.worker_id)

                    await asyncio.gather(*(ask(name) for name in SYSTEMS))
            finally:
                for client in clients.values():
                    await client.close()
            return placed

    placed = asyncio.run(scenario())
    served = {w for workers in placed.values() for w in workers}
    assert served == {worker_id(w) for w in two_workers}
    # Each client's system prompt is most of its prompt: after its first request it stays put.
    assert all(len(set(workers)) == 1 for workers in placed.values()), placed
