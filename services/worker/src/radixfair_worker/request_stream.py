"""One request's output on the serving front, coalesced for a consumer that falls behind.

The engine's updates are appended as they arrive; the gRPC handler takes
everything pending at once. While it keeps up, a take holds one step's
token; when it falls behind the step rate, a take holds the tokens of every
step since its last one, sent as one TokenDelta. Text deltas are only ever
concatenated in order, so the streamed text is byte-identical either way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from radixfair.errors import RadixfairError
from radixfair_worker.engine_protocol import RequestOutcome


@dataclass(frozen=True)
class StreamChunk:
    """Everything that arrived since the last take; ``end`` as in RequestUpdate."""

    token_ids: list[int]
    text: str
    end: RequestOutcome | RadixfairError | None


class RequestStream:
    """The front's view of one request, named by its worker-internal id."""

    def __init__(self, request_id: str, arrival_time: float, client_row: int = 0) -> None:
        self.request_id = request_id
        self.arrival_time = arrival_time
        # The client's row in the latency histograms (ClientLabels.row).
        self.client_row = client_row
        # When the front received this request's latest token (inter-token latency).
        self.last_token_time: float | None = None
        self._token_ids: list[int] = []
        self._texts: list[str] = []
        self._end: RequestOutcome | RadixfairError | None = None
        self._taken_end = False
        self._ready = asyncio.Event()

    @property
    def ended(self) -> bool:
        """True once the consumer has taken the request's end (an outcome or an error)."""
        return self._taken_end

    @property
    def outcome(self) -> RequestOutcome | None:
        return self._end if self._taken_end and isinstance(self._end, RequestOutcome) else None

    def push(
        self, token_ids: list[int], text: str, end: RequestOutcome | RadixfairError | None = None
    ) -> None:
        if self._end is not None:
            return  # nothing follows an end (a late update after a failure)
        self._token_ids.extend(token_ids)
        if text:
            self._texts.append(text)
        self._end = end
        self._ready.set()

    def fail(self, error: RadixfairError) -> None:
        """Ends the stream with ``error``; tokens not taken yet are dropped."""
        if self._end is None:
            self._token_ids, self._texts = [], []
            self._end = error
            self._ready.set()

    def take_pending(self) -> StreamChunk | None:
        """Everything pushed since the last take, or None when nothing is."""
        if not self._token_ids and not self._texts and (self._end is None or self._taken_end):
            return None
        chunk = StreamChunk(self._token_ids, "".join(self._texts), None if self._taken_end else self._end)
        self._token_ids, self._texts = [], []
        self._taken_end = self._end is not None
        return chunk

    async def take(self) -> StreamChunk:
        """Waits until something is pending, then takes all of it."""
        while True:
            chunk = self.take_pending()
            if chunk is not None:
                return chunk
            self._ready.clear()
            await self._ready.wait()
