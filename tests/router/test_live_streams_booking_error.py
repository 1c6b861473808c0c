"""A booking that fails with an unexpected error loses no output tokens (write-ahead group commit).

LiveStreams books every open stream's counted output in one batch. When the ledger call fails with
an error that is not "Redis unreachable" (that one degrades to the local ledger instead), the batch's
tokens go back to their streams and the next batch books them: the ledger ends equal to what was
counted. Driven through the real LiveStreams and the real Ledger (its in-process store); the fault is
a Ledger whose first batch raises, as a booking bug would.
"""

from __future__ import annotations

import asyncio

from support.unused_endpoint import unused_endpoint

from radixfair_router.config import CostConfig, LedgerConfig
from radixfair_router.ledger import Ledger
from radixfair_router.live_streams import LiveStreamLimits, LiveStreams, StreamBook

LIMITS = LiveStreamLimits(
    charge_interval_s=0.05,
    idle_timeout_s=3600.0,
    unhealthy_silence_s=3600.0,
    output_token_weight=CostConfig().output_token_weight,
    write_ahead=True,
)


class FirstBatchFails(Ledger):
    """The real ledger, except that its first batched charge raises (a booking bug)."""

    failures = 1

    async def charge_many(self, charges) -> None:  # noqa: ANN001
        if self.failures:
            self.failures -= 1
            raise RuntimeError("injected booking failure")
        await super().charge_many(charges)


async def _completion(ledger: Ledger, client: str) -> int:
    return round(sum(r.completion_tokens for r in await ledger.snapshot() if r.client_id == client))


def test_a_failed_batch_is_booked_by_the_next_one():
    async def scenario() -> tuple[int, int]:
        ledger = FirstBatchFails(LedgerConfig(store="memory"), quantum=4096.0)
        live = LiveStreams(ledger, LIMITS, lambda client, service: None)
        channel, endpoint = unused_endpoint()
        books = [StreamBook(client, 1.0, endpoint, prompt_tokens=4) for client in ("alice", "bob")]
        for book in books:
            live.open(book)
        books[0].uncharged_tokens += 5
        books[1].uncharged_tokens += 3
        await live.booked()  # this batch fails
        books[0].uncharged_tokens += 2
        await live.booked()  # this one books the failed batch's tokens too
        booked = (await _completion(ledger, "alice"), await _completion(ledger, "bob"))
        for book in books:
            live.close(book)
        await live.drain()
        await channel.close()
        return booked

    assert asyncio.run(scenario()) == (7, 3)
