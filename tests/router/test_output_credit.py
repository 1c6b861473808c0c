"""Output booked ahead (OutputCredit): never a token relayed unbooked, a bounded excess, exact at the end.

Driven through the real LiveStreams group commit and the real Ledger (its in-process store, the same
booking code the degraded Redis ledger runs); the stream's messages are the only thing made up.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from support.unused_endpoint import unused_endpoint

from radixfair_router.config import CostConfig, LedgerConfig
from radixfair_router.dispatch_core import settlement
from radixfair_router.ledger import Ledger
from radixfair_router.live_streams import LiveStreamLimits, LiveStreams, StreamBook
from radixfair_router.output_credit import OutputCredit
from radixfair_router.policies import RoutingDecision

COSTS = CostConfig()
LIMITS = LiveStreamLimits(
    charge_interval_s=0.05,  # the watch task ends within one interval of a drain
    idle_timeout_s=3600.0,
    unhealthy_silence_s=3600.0,
    output_token_weight=COSTS.output_token_weight,
    write_ahead=True,
)
DECISION = RoutingDecision("w0", "d2lpm", "longest_match", 0, charged=0.0, deficit=0.0)


async def _booked_completion(ledger: Ledger) -> int:
    records = await ledger.snapshot()
    return round(sum(r.completion_tokens for r in records if r.client_id == "alice"))


async def _stream(
    messages: list[int], ahead: int, limit: int | None, cut_at: int | None, cut_while_waiting: bool = True
) -> tuple[list[tuple[int, int, int]], int, int]:
    """Relays ``messages`` (token counts) as the router's relay does; ``cut_at``: the caller leaves
    while that message waits for its booking. Returns (booked, relayed, message) at each relay, then
    the relayed total and the ledger's completion tokens after the stream's settlement."""
    ledger = Ledger(LedgerConfig(store="memory"), quantum=4096.0)
    live = LiveStreams(ledger, LIMITS, lambda client, service: None)
    channel, endpoint = unused_endpoint()
    book = StreamBook("alice", 1.0, endpoint, prompt_tokens=4)
    live.open(book)
    credit = OutputCredit(live, book, ahead, limit)
    credit.start()
    seen = []
    try:
        for index, count in enumerate(messages):
            if index == cut_at:
                # The caller leaves while this message waits for its booking, or once it is booked
                # (before it is relayed): either way the message is never relayed.
                waiting = asyncio.get_running_loop().create_task(credit.wait_for(count))
                if cut_while_waiting:
                    await asyncio.sleep(0)
                    waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
                break
            if not credit.covers(count):
                await credit.wait_for(count)
            seen.append((await _booked_completion(ledger), book.tokens_sent + count, count))
            credit.relayed(count)
        live.close(book)
        await live.drain()
        served = book.tokens_sent > 0
        charge = settlement(
            DECISION, "alice", 1.0, 4, COSTS, served=served,
            completion_tokens=book.uncharged_tokens - book.unrelayed_tokens, cached_tokens=0,
        )  # fmt: skip
        await ledger.charge(charge)
        return seen, book.tokens_sent, await _booked_completion(ledger)
    finally:
        await live.drain()
        await channel.close()


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.integers(1, 12), min_size=1, max_size=30),
    ahead=st.integers(0, 24),
    limited=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 3), st.integers(0, 29)),
    cut_while_waiting=st.booleans(),
)
def test_every_relayed_token_is_booked_first_the_excess_is_bounded_and_the_end_is_exact(
    messages, ahead, limited, cut, cut_while_waiting
):
    limit = sum(messages) if limited else None
    seen, relayed, final = asyncio.run(_stream(messages, ahead, limit, cut, cut_while_waiting))
    for booked, relayed_after, count in seen:
        # Write-ahead: the message about to be relayed is already in the ledger ...
        assert booked >= relayed_after
        # ... and no more than the credit (plus that message) is booked ahead of it, nor past max_tokens.
        assert booked <= relayed_after + ahead + count
        if limit is not None:
            assert booked <= max(limit, relayed_after)
    # Settled: what the client was sent, exactly (nothing when nothing was sent: the booking ahead of
    # a stream that never relayed is taken back with its admission).
    assert final == relayed


def test_a_stream_left_before_its_first_token_books_nothing_though_its_credit_was_booked():
    seen, relayed, final = asyncio.run(_stream([2, 2], 16, None, cut_at=0, cut_while_waiting=False))
    assert seen == [] and relayed == final == 0


def test_with_no_credit_each_message_is_booked_just_before_it_is_relayed():
    seen, relayed, final = asyncio.run(_stream([3, 1, 5], ahead=0, limit=None, cut_at=None))
    assert [booked for booked, _, _ in seen] == [3, 4, 9]
    assert relayed == final == 9


def test_a_credit_of_sixteen_books_ahead_of_the_stream_and_tops_up_at_half():
    seen, relayed, final = asyncio.run(_stream([1] * 20, ahead=16, limit=None, cut_at=None))
    booked = [b for b, _, _ in seen]
    # 16 booked before the first token is relayed, nothing more until fewer than 8 are left (after
    # token 9: up to 9 + 16, in the background); token 17 cannot go out before that booking is in.
    assert booked[:9] == [16] * 9
    assert booked[16] >= 25
    assert relayed == final == 20


def test_a_message_arriving_as_its_booking_lands_is_relayed_without_spinning_the_event_loop():
    """The booking is done but its done-callback has not run yet when the message asks to be covered:
    waiting must read the booking's own result, not loop on the callback's state (that loop never
    yielded, so the callback never ran and the router froze; pytest's timeout ends it here)."""

    async def scenario() -> tuple[bool, bool, int]:
        ledger = Ledger(LedgerConfig(store="memory"), quantum=4096.0)
        live = LiveStreams(ledger, LIMITS, lambda client, service: None)
        channel, endpoint = unused_endpoint()
        book = StreamBook("alice", 1.0, endpoint)
        live.open(book)
        credit = OutputCredit(live, book, 4, None)
        credit.start()
        booking = credit._booking
        assert booking is not None
        while not booking.done():  # wakes in the same loop pass that completes the booking
            await asyncio.sleep(0)
        stale = not credit.covers(2)  # its callback is still queued behind this task
        await credit.wait_for(2)
        covered = credit.covers(2)
        credit.relayed(2)
        live.close(book)
        await live.drain()
        await channel.close()
        return stale, covered, await _booked_completion(ledger)

    stale, covered, booked = asyncio.run(scenario())
    assert stale and covered and booked == 4


def test_with_no_credit_the_first_token_is_booked_while_the_worker_computes_it():
    async def scenario() -> tuple[bool, int]:
        ledger = Ledger(LedgerConfig(store="memory"), quantum=4096.0)
        live = LiveStreams(ledger, LIMITS, lambda client, service: None)
        channel, endpoint = unused_endpoint()
        book = StreamBook("alice", 1.0, endpoint, prompt_tokens=4)
        live.open(book)
        credit = OutputCredit(live, book, 0, None)
        try:
            credit.start()
            await live.booked()  # the booking started with the call has landed (the worker's prefill)
            return credit.covers(1), await _booked_completion(ledger)
        finally:
            live.close(book)
            await live.drain()
            await channel.close()

    covers_first, booked = asyncio.run(scenario())
    # A first message of one token goes out with no ledger round trip of its own, and only it is booked.
    assert covers_first and booked == 1
