"""Turning a step's sampled ids into per-request outputs: placeholders, stops and text.

The engine hands this module each sampled token of a running request. It
resolves the request's oldest placeholder to the token, stamps the first
token's time, detokenizes, and decides whether the request stops there (a
stop token id, EOS, a stop string, max_tokens or the context window). The
engine then finishes what stopped; ``close`` gives the text a finished
request's stream still owes, so the concatenated deltas always equal
``request.final_text`` whatever ended it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from radixfair.tokenization import IncrementalDetokenizer
from radixfair_engine.request import FinishReason, Request
from radixfair_engine.text_stream import TextStream


class TokenOutcome(NamedTuple):
    """What one appended token did: the text it released, and why the request stops there, if it does.

    ``error`` is set when this request's text alone could not be made (the engine fails it).
    """

    text: str
    finish: FinishReason | None = None
    error: str | None = None


# What most tokens do (no text made here, no stop): one shared value, nothing built per token.
_CONTINUES = TokenOutcome("")


class OutputProcessor:
    """Per-request output state: the text streams of requests that asked for text, and the stop rules."""

    def __init__(
        self,
        eos_token_ids: frozenset[int],
        max_context_tokens: int,
        detokenizer_factory: Callable[[], IncrementalDetokenizer] | None,
        clock: Callable[[], float],
    ) -> None:
        self.max_context_tokens = max_context_tokens
        self._eos_token_ids = eos_token_ids
        self._detokenizer_factory = detokenizer_factory
        self._clock = clock
        self._streams: dict[str, TextStream] = {}

    def open(self, request: Request) -> None:
        """Takes a new request: sets its stop rules, and starts its text stream (when the engine makes
        its text at all)."""
        sampling = request.sampling
        request.output_limit = min(sampling.max_tokens, self.max_context_tokens - len(request.prompt_ids))
        stop_ids = frozenset(sampling.stop_token_ids)
        request.stop_token_set = stop_ids if sampling.ignore_eos else stop_ids | self._eos_token_ids
        if self._detokenizer_factory is not None and request.text_in_engine:
            self._streams[request.request_id] = TextStream(self._detokenizer_factory(), sampling.stop_strings)

    @staticmethod
    def length_reached(request: Request, num_output: int) -> bool:
        """True when ``num_output`` generated tokens reach max_tokens or the context window."""
        return num_output >= request.output_limit

    def append(self, request: Request, token: int) -> TokenOutcome:
        """Resolves the request's oldest placeholder to ``token``; says whether the request stops there."""
        # Runs for every running request every step: fields are read once, and requests whose text
        # the front makes skip the stream lookup.
        pending = request.pending_tokens
        index = len(request.output_ids) - pending
        request.output_ids[index] = token
        request.pending_tokens = pending - 1
        if request.first_token_time is None:
            request.first_token_time = self._clock()
        is_stop_token = token in request.stop_token_set
        text, hit_stop_string = "", False
        if self._streams and not is_stop_token:
            stream = self._streams.get(request.request_id)
            if stream is not None:
                try:
                    text, hit_stop_string = stream.push([token])
                except Exception as error:  # this request's text alone is broken; the batch goes on
                    return TokenOutcome("", error=f"detokenizing token {token} failed: {error!r}")
        if is_stop_token or hit_stop_string:
            return TokenOutcome(text, FinishReason.STOP)
        if index + 1 >= request.output_limit:
            return TokenOutcome(text, FinishReason.LENGTH)
        return TokenOutcome(text) if text else _CONTINUES

    def drop_pending(self, request: Request) -> None:
        """Drops tokens launched after the request stopped (overlap): as if no step ran for them.

        Their K/V count as never computed, so they never reach the cache.
        """
        if request.pending_tokens:
            del request.output_ids[-request.pending_tokens :]
            request.pending_tokens = 0
            request.num_computed_tokens = min(request.num_computed_tokens, request.num_tokens - 1)

    def close(self, request: Request) -> str:
        """Ends the request's stream: sets ``final_text`` and returns the text the stream still owes.

        Text held back as a possible stop-string prefix is real output once no further token can
        complete the stop string, so it is flushed here whatever ended the request.
        """
        stream = self._streams.pop(request.request_id, None)
        if stream is None:
            return ""
        tail = stream.finish()
        request.final_text = stream.text
        return tail
