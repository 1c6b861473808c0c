"""Write-ahead booking of one stream's output, with credit: tokens are booked ahead of the relay.

A ledger that outlives the router (Redis) must hold every output token before the client sees it,
or a router killed mid-stream under-charges its client. Booking each message just before relaying
it put one ledger round trip (a disk write, with Redis' ``appendfsync always``) on the path of
every message, the first token's included: bench/results/router_overhead_cpu_before.md measured
9.7 ms of the 25 ms the router added to one stream's time to first token, and most of each later
message's time in the router.

So a stream books ``ahead`` output tokens in advance: the first batch when its call to the worker
starts (the round trip overlaps the worker's prefill), the next in the background whenever less
than half of the credit is left (it joins LiveStreams' group commit with every other stream's). A
message the credit covers is relayed at once; one larger than the credit waits for its own
booking, as every message did before. ``ahead=0`` is the old rule: each message booked, then
relayed.

Bounds, whatever happens to the router: booked >= relayed (write-ahead), and booked <= relayed +
``ahead`` + the last message's size, per stream, while it runs (a kill leaves that). Never more
than the request's ``max_tokens`` is booked ahead. A stream that ends is booked exactly: the
settlement takes back what was booked and not relayed (``StreamBook.unrelayed_tokens``, kept equal
to reserved - relayed at every await).
"""

from __future__ import annotations

import asyncio
import functools

from radixfair_router.live_streams import LiveStreams, StreamBook


class OutputCredit:
    """The booked-ahead output of one stream; ``covers``/``wait_for`` before relaying, then ``relayed``.

    ``limit`` is the most output tokens the stream may produce (its ``max_tokens``), None if unknown.
    """

    def __init__(self, live: LiveStreams, book: StreamBook, ahead: int, limit: int | None) -> None:
        self._live = live
        self._book = book
        self._ahead = max(ahead, 0)
        self._limit = limit
        # Output tokens handed to the ledger for this stream so far (added to uncharged_tokens).
        self._reserved = 0
        # Of those, the ones a finished booking has put in the ledger.
        self._covered = 0
        self._booking: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Books the first tokens in the background while the worker computes them: ``ahead``, and at
        least the first token, so a first message of one token is relayed without waiting for the
        ledger (with ``ahead=0`` a router killed before that message over-books by that one token,
        within the one message per cut stream DECISIONS #12 allows)."""
        self._top_up(0, at_least=1)

    def covers(self, count: int) -> bool:
        """True when the next ``count`` tokens are already in the ledger: relay without waiting."""
        return self._book.tokens_sent + count <= self._covered

    async def wait_for(self, count: int) -> None:
        """Returns once the next ``count`` tokens are in the ledger (booking more if need be).

        A caller cancelled here leaves the booking running (it is shielded): what it books is taken
        back by the stream's settlement, as ``unrelayed_tokens``.
        """
        needed = self._book.tokens_sent + count
        if needed > self._reserved:
            self._top_up(needed)
        # The latest booking covers everything reserved (>= needed). Its own result says so: the
        # done callback may not have run yet, and waiting for it in a loop would spin the event loop.
        booking, target = self._booking, self._reserved
        assert booking is not None
        await asyncio.shield(booking)
        self._covered = max(self._covered, target)

    def relayed(self, count: int) -> None:
        """``count`` tokens go to the client now; tops the credit up when it runs low."""
        book = self._book
        book.tokens_sent += count
        book.unrelayed_tokens = self._reserved - book.tokens_sent
        if self._reserved - book.tokens_sent < (self._ahead + 1) // 2:
            self._top_up(book.tokens_sent)

    def _top_up(self, needed: int, at_least: int = 0) -> None:
        """Reserves up to ``needed + ahead`` tokens (at least ``at_least``, within the limit) and books
        them with the next batch of LiveStreams' group commit."""
        target = max(needed + self._ahead, at_least)
        if self._limit is not None:
            target = max(needed, min(target, self._limit))
        extra = target - self._reserved
        if extra <= 0:
            return
        book = self._book
        self._reserved = target
        book.uncharged_tokens += extra
        book.unrelayed_tokens = target - book.tokens_sent
        # LiveStreams books in order: once this batch is in, every token reserved so far is.
        booking = self._live.next_batch()
        booking.add_done_callback(functools.partial(self._booked, target))
        self._booking = booking

    def _booked(self, target: int, done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is None:
            self._covered = max(self._covered, target)
