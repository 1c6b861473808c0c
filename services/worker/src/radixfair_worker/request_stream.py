"""One request's output on the serving front, coalesced for a consumer that falls behind.

The engine's updates are appended as they arrive; the gRPC handler takes
everything pending at once. While it keeps up, a take holds one step's
token; when it falls behind the step rate, a take holds the tokens of every
step since its last one, sent as one TokenDelta. Text deltas are only ever
concatenated in order, so the streamed text is byte-identical either way.

A request with no stop strings is detokenized here, not in the engine: its
text decides nothing there, so it stays off the engine's step. The ids are
pushed one at a time, exactly as the engine would push them, and the stop
token (or EOS) that ends a request is never text, so the text is the one the
engine would have made.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from radixfair.errors import RadixfairError, RequestFailedError
from radixfair_engine.request import FinishReason
from radixfair_engine.text_stream import TextStream
from radixfair_worker.engine_protocol import RequestOutcome


@dataclass(frozen=True)
class StreamChunk:
    """Everything that arrived since the last take; ``end`` as in RequestUpdate."""

    token_ids: list[int]
    text: str
    end: RequestOutcome | RadixfairError | None


class RequestStream:
    """The front's view of one request, named by its worker-internal id."""

    def __init__(
        self, request_id: str, arrival_time: float, client_row: int = 0, text: TextStream | None = None
    ) -> None:
        """``text`` is the front's text stream, for a request the engine does not detokenize."""
        self.request_id = request_id
        self._text = text
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
        # GenerateMultiplexed's writer, told once per take that output is pending (``watch``).
        self._on_pending: Callable[[RequestStream], None] | None = None
        self._told = False

    @property
    def ended(self) -> bool:
        """True once the consumer has taken the request's end (an outcome or an error)."""
        return self._taken_end

    @property
    def outcome(self) -> RequestOutcome | None:
        return self._end if self._taken_end and isinstance(self._end, RequestOutcome) else None

    def push(
        self, token_ids: list[int], text: str, end: RequestOutcome | RadixfairError | None = None
    ) -> RequestOutcome | RadixfairError | None:
        """Appends one update; returns the end it recorded, if this update ended the stream.

        A detokenizing failure here ends the stream with a RequestFailedError, although the
        engine sent no end: the caller then aborts the request in the engine.
        """
        if self._end is not None:
            return None  # nothing follows an end (a late update after a failure)
        if self._text is not None:
            try:
                text, end = self._detokenize(token_ids, end)
            except Exception as error:  # this request's text alone is broken
                self.fail(RequestFailedError(f"detokenizing its tokens failed: {error!r}"))
                return self._end
        self._token_ids.extend(token_ids)
        if text:
            self._texts.append(text)
        self._end = end
        self._ready.set()
        if self._on_pending is not None and not self._told:
            self._tell()
        return end

    def push_token(self, token: int, text: str = "") -> RadixfairError | None:
        """Appends one token that does not end the request (``push([token], text)``, less work).

        Returns the error that ended the stream if its text failed here (as ``push`` does).
        """
        if self._end is not None:
            return None
        if self._text is not None:
            try:
                text = self._text.push([token])[0]
            except Exception as error:  # this request's text alone is broken
                failure = RequestFailedError(f"detokenizing its tokens failed: {error!r}")
                self.fail(failure)
                return failure
        self._token_ids.append(token)
        if text:
            self._texts.append(text)
        self._ready.set()
        if self._on_pending is not None and not self._told:
            self._tell()
        return None

    def _detokenize(
        self, token_ids: list[int], end: RequestOutcome | RadixfairError | None
    ) -> tuple[str, RequestOutcome | RadixfairError | None]:
        """The text of ``token_ids``, and ``end`` with the final text when they end the request."""
        assert self._text is not None
        stops_here = isinstance(end, RequestOutcome) and end.finish_reason is FinishReason.STOP
        # With no stop strings a STOP finish is a stop token or EOS: the last id, never text.
        ids = token_ids[:-1] if stops_here else token_ids
        text = "".join([self._text.push([token])[0] for token in ids])
        if isinstance(end, RequestOutcome):
            text += self._text.finish()
            end = dataclasses.replace(end, text=self._text.text)
        return text, end

    def fail(self, error: RadixfairError) -> None:
        """Ends the stream with ``error``; tokens not taken yet are dropped."""
        if self._end is None:
            self._token_ids, self._texts = [], []
            self._end = error
            self._ready.set()
            if self._on_pending is not None and not self._told:
                self._tell()

    def watch(self, on_pending: Callable[[RequestStream], None]) -> None:
        """Calls ``on_pending(self)`` when output is pending, once until the next ``take_pending``:
        how one writer serves many streams (GenerateMultiplexed) without a task per stream. Called
        at once if output is pending already."""
        self._on_pending = on_pending
        if self._token_ids or self._texts or (self._end is not None and not self._taken_end):
            self._tell()

    def _tell(self) -> None:
        assert self._on_pending is not None
        self._told = True
        self._on_pending(self)

    def take_pending(self) -> StreamChunk | None:
        """Everything pushed since the last take, or None when nothing is."""
        self._told = False
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
