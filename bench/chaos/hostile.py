"""Malformed and hostile requests, drawn by a seeded builder over the public request's fields.

Each draw mutates a well-formed RouterServiceGenerateRequest along one or more axes (ids out of
the vocabulary, negative or NaN sampling values, huge limits, oversized prompts, labels past
their limit, an unknown model), or replaces the call itself: undecodable bytes, no key, a wrong
key, a tenant calling RegisterWorker. The router must answer each with a clear status (or serve
it, when it is valid after all): UNKNOWN, INTERNAL or a hang counts as a failure.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import grpc

from bench.chaos.load import LoadTally, consume, random_request
from radixfair.auth import bearer_metadata
from radixfair.v1 import generation_pb2, router_pb2, router_pb2_grpc

GENERATE = "/radixfair.v1.RouterService/Generate"
# A crash or unhandled exception in a handler shows as one of these.
BAD_STATUSES = frozenset({"UNKNOWN", "INTERNAL", "HUNG", "DATA_LOSS"})

_INTS = (-(2**31), -1, 0, 1, 49151, 49152, 2**31 - 1)
_FLOATS = (-1.0, 0.0, 1e-9, 0.5, 1.0, 1.5, 1e30, math.inf, -math.inf, math.nan)


def _mutate(rng: random.Random, request: router_pb2.RouterServiceGenerateRequest) -> str:
    """Applies one mutation to ``request``; returns its name."""
    s, p = request.sampling, request.prompt
    kind = rng.choice(
        ["ids", "temperature", "top_k", "top_p", "max_tokens", "stops", "empty_prompt", "big_text",
         "chat", "label", "model", "seed"]
    )  # fmt: skip
    if kind == "ids":
        p.token_ids.ids.extend(rng.choice(_INTS) for _ in range(rng.randint(1, 4)))
    elif kind == "temperature":
        s.temperature = rng.choice(_FLOATS)
    elif kind == "top_k":
        s.top_k = rng.choice(_INTS)
    elif kind == "top_p":
        s.top_p = rng.choice(_FLOATS)
    elif kind == "max_tokens":
        s.max_tokens = rng.choice((-5, 0, 1, 2048, 2**31 - 1))
    elif kind == "stops":
        s.stop_token_ids.extend(rng.choice(_INTS) for _ in range(rng.randint(1, 300)))
        s.stop.extend(
            "\x00" * rng.randint(0, 3) + "é" * rng.randint(0, 2000) for _ in range(rng.randint(1, 50))
        )
    elif kind == "empty_prompt":
        request.ClearField("prompt")
    elif kind == "big_text":
        request.prompt.text = "ab " * rng.choice((1, 1000, 400_000))
    elif kind == "chat":
        roles = ("user", "system", "tool", "", "\u202e")
        turns = [
            generation_pb2.ChatMessage(role=rng.choice(roles), content="x" * rng.randint(0, 5000))
            for _ in range(rng.randint(0, 40))
        ]
        request.prompt.chat.CopyFrom(generation_pb2.ChatPrompt(messages=turns))
    elif kind == "label":
        request.request_id = "\U0001f600" * rng.choice((1, 257, 5000))
    elif kind == "model":
        request.model = rng.choice(("no-such-model", "../../etc/passwd", "m" * 10000))
    else:
        s.seed = rng.choice((0, 2**64 - 1))
    return kind


class HostileClient:
    """Sends one drawn hostile request at a time; its tokens count toward its own client id."""

    def __init__(self, routers: list[str], key: str, client_id: str, seed: int) -> None:
        self._channels = [grpc.aio.insecure_channel(a) for a in routers]
        self._key, self.client_id = key, client_id
        self._rng = random.Random(seed)
        self.kinds: Counter[str] = Counter()

    async def send_one(self, tally: LoadTally, hang_bound_s: float) -> None:
        rng = self._rng
        channel = rng.choice(self._channels)
        stub = router_pb2_grpc.RouterServiceStub(channel)
        metadata = bearer_metadata(self._key)
        form = rng.random()
        if form < 0.1:  # bytes that do not parse as the request
            self.kinds["garbage_bytes"] += 1
            raw = channel.unary_stream(
                GENERATE,
                request_serializer=lambda b: b,
                response_deserializer=router_pb2.RouterServiceGenerateResponse.FromString,
            )
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            await consume(raw(data, metadata=metadata), self.client_id, tally, hang_bound_s)
            return
        request = random_request(rng, "hostile")
        for _ in range(rng.randint(1, 3)):
            self.kinds[_mutate(rng, request)] += 1
        if form < 0.2:  # an unknown key or none: nobody is charged
            self.kinds["bad_key"] += 1
            bad = bearer_metadata("not-a-key") if rng.random() < 0.5 else ()
            await consume(stub.Generate(request, metadata=bad), "anonymous", tally, hang_bound_s)
            return
        if form < 0.25:  # a tenant's key where the workers' token belongs
            self.kinds["register_as_tenant"] += 1
            tally.sent["register"] += 1
            try:
                await stub.RegisterWorker(
                    router_pb2.RegisterWorkerRequest(worker_id="evil", address="127.0.0.1:1"),
                    metadata=metadata,
                    timeout=hang_bound_s,
                )
                tally.status["OK"] += 1
            except grpc.aio.AioRpcError as error:
                name = error.code().name
                tally.status["HUNG" if name == "DEADLINE_EXCEEDED" else name] += 1
            return
        # Without max_tokens a stream may run to the context: no useful bound on what a killed
        # router booked ahead for it, so the bound counts the whole context.
        limit = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 1 << 20
        router = self._channels.index(channel)
        call = stub.Generate(request, metadata=metadata)
        await consume(call, self.client_id, tally, hang_bound_s, router, max(limit, 0))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
