"""Between OpenAI's JSON shapes and radixfair's messages: requests in, completions and chunks out.

A request becomes the very RouterServiceGenerateRequest a gRPC caller would send, so it meets the
same validation, routing, ledger and limits. Replies are built from the router's stream: token
deltas become chunks, the result becomes the finish reason and the usage.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from radixfair.errors import InvalidRequestError
from radixfair.v1 import generation_pb2, router_pb2
from radixfair_router.http_api.schemas import ChatCompletionRequest, CompletionRequest, _Sampling

# OpenAI's default sampling temperature (the gRPC API's unset temperature means greedy instead).
DEFAULT_TEMPERATURE = 1.0
_UINT64 = 1 << 64
_INT32_MAX = (1 << 31) - 1

# OpenAI spells two finish reasons that apply here: a stop token or string, or the token budget.
_FINISH_REASONS = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
}


def _as_float32(name: str, value: float) -> float:
    """``value`` as the float32 field will hold it; InvalidRequestError where that changes its meaning.

    JSON numbers are float64 and the sampling fields float32: 3.5e38 would become inf and 1e-300 would
    become 0, and the range check behind them would then name a value the caller never sent. NaN and
    the infinities pass through unchanged, for that check to name.
    """
    if not math.isfinite(value):
        return value
    try:
        held = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        held = math.inf
    if not math.isfinite(held):
        raise InvalidRequestError(f"{name} is too large for a float32 field, got {value!r}")
    if value != 0 and held == 0:
        raise InvalidRequestError(f"{name} is too small for a float32 field (it would be 0), got {value!r}")
    return held


def sampling_params(body: _Sampling, budget: int | None) -> generation_pb2.SamplingParams:
    temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    params = generation_pb2.SamplingParams(
        temperature=_as_float32("temperature", temperature),
        stop=body.stop_strings,
        ignore_eos=body.ignore_eos,
    )
    if body.top_p is not None:
        params.top_p = _as_float32("top_p", body.top_p)
    if body.seed is not None:
        if not 0 <= body.seed < _UINT64:
            raise InvalidRequestError(f"seed must be an integer in [0, 2**64), got {body.seed}")
        params.seed = body.seed
    if budget is not None:
        if not 0 < budget <= _INT32_MAX:
            raise InvalidRequestError(f"max_tokens must be in [1, {_INT32_MAX}], got {budget}")
        params.max_tokens = budget
    return params


def chat_request(body: ChatCompletionRequest) -> router_pb2.RouterServiceGenerateRequest:
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        if body.max_tokens != body.max_completion_tokens:
            raise InvalidRequestError(
                "max_tokens and max_completion_tokens disagree; set one of them "
                f"(got {body.max_tokens} and {body.max_completion_tokens})"
            )
    turns = [generation_pb2.ChatMessage(role=role, content=text) for role, text in body.turns()]
    return router_pb2.RouterServiceGenerateRequest(
        request_id=body.user or "",
        prompt=generation_pb2.Prompt(chat=generation_pb2.ChatPrompt(messages=turns)),
        sampling=sampling_params(body, body.token_budget),
        model=body.model,
    )


def completion_request(body: CompletionRequest) -> router_pb2.RouterServiceGenerateRequest:
    single = body.single_prompt()
    if isinstance(single, str):
        prompt = generation_pb2.Prompt(text=single)
    else:  # token ids: the router checks them against the vocabulary, as for a gRPC caller
        if any(not 0 <= t <= _INT32_MAX for t in single):
            raise InvalidRequestError(f"prompt token ids must be in [0, {_INT32_MAX}]")
        prompt = generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=single))
    return router_pb2.RouterServiceGenerateRequest(
        request_id=body.user or "",
        prompt=prompt,
        sampling=sampling_params(body, body.token_budget),
        model=body.model,
    )


def finish_reason(result: generation_pb2.GenerationResult) -> str:
    return _FINISH_REASONS.get(result.finish_reason, "stop")


def usage(result: generation_pb2.GenerationResult) -> dict[str, Any]:
    counts = result.usage
    return {
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "total_tokens": counts.prompt_tokens + counts.completion_tokens,
        # The prefix-cache hits: what clients read to see the cache work.
        "prompt_tokens_details": {"cached_tokens": counts.cached_tokens},
    }


@dataclass(frozen=True)
class ReplyShape:
    """The id, clock and model every object of one reply carries, and which endpoint's shape it has."""

    request_id: str
    created: int
    model: str
    chat: bool

    @property
    def id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.request_id}"

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def completion(self, text: str, result: generation_pb2.GenerationResult) -> dict[str, Any]:
        """The whole reply of a call without ``stream``."""
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
            reply = self._envelope("chat.completion")
        else:
            choice = {"index": 0, "text": text}
            reply = self._envelope("text_completion")
        choice.update(logprobs=None, finish_reason=finish_reason(result))
        reply.update(choices=[choice], usage=usage(result), system_fingerprint=None)
        return reply

    def chunk(self, text: str | None, finish: str | None, with_usage_field: bool) -> dict[str, Any]:
        """One streamed chunk; ``text`` None is the chat stream's opening chunk (the role)."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if text is None else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta}
            reply = self._envelope("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text or ""}
            reply = self._envelope("text_completion")
        choice.update(logprobs=None, finish_reason=finish)
        reply["choices"] = [choice]
        if with_usage_field:
            # With include_usage, OpenAI sends usage on every chunk: null until the last one.
            reply["usage"] = None
        return reply

    def usage_chunk(self, result: generation_pb2.GenerationResult) -> dict[str, Any]:
        """The final chunk of ``stream_options.include_usage``: no choices, the whole usage."""
        reply = self._envelope("chat.completion.chunk" if self.chat else "text_completion")
        reply.update(choices=[], usage=usage(result))
        return reply
