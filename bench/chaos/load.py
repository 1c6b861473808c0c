"""Streaming tenants and the per-stream bookkeeping: tokens received, final status, hangs.

A stream counts as hung when no message arrives for longer than ``hang_bound_s``; it is then
cancelled by the client (so the soak itself never hangs) and reported. The bound is derived
from the router's own limits by the caller.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from radixfair.auth import bearer_metadata
from radixfair.v1 import generation_pb2, router_pb2, router_pb2_grpc

PROMPT_IDS = (100, 40000)  # inside the tiny model's vocabulary, clear of special tokens


@dataclass
class LoadTally:
    """What the clients saw, per client id; aggregates only."""

    sent: Counter[str] = field(default_factory=Counter)
    status: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    hung: int = 0
    # Tokens received on streams that then failed (a worker or router died under them).
    cut_tokens: int = 0
    longest_silence_s: float = 0.0
    # Streams that failed: (client id, router index, time.time() of the failure, output tokens the
    # request allowed and the client did not receive). A router killed under a stream has booked
    # at most the one message it was relaying (booked before the relay) and cannot settle it.
    failed_streams: list[tuple[str, int, float, int]] = field(default_factory=list)
    # The most tokens one delta message held (a worker coalesces a slow reader's steps into one):
    # the size of "one message" in the router-kill bound.
    largest_message_tokens: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": sum(self.sent.values()),
            "completed": self.status.get("OK", 0),
            "by_status": dict(sorted(self.status.items())),
            "hung_streams": self.hung,
            "tokens_on_failed_streams": self.cut_tokens,
            "longest_silence_s": round(self.longest_silence_s, 2),
        }


async def consume(
    call: AsyncIterator[router_pb2.RouterServiceGenerateResponse],
    client_id: str,
    tally: LoadTally,
    hang_bound_s: float,
    router_index: int = -1,
    max_tokens: int = 0,
) -> None:
    """Reads one stream to its end; counts delta tokens and the final status (OK or the error code)."""
    tally.sent[client_id] += 1
    stream = call.__aiter__()
    last = time.monotonic()
    received = 0
    try:
        while True:
            try:
                message = await asyncio.wait_for(stream.__anext__(), hang_bound_s)
            except StopAsyncIteration:
                tally.status["OK"] += 1
                return
            now = time.monotonic()
            tally.longest_silence_s = max(tally.longest_silence_s, now - last)
            last = now
            if message.HasField("delta"):
                count = len(message.delta.token_ids)
                tally.tokens[client_id] += count
                received += count
                tally.largest_message_tokens = max(tally.largest_message_tokens, count)
    except TimeoutError:
        tally.hung += 1
        tally.status["HUNG"] += 1
        call.cancel()  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError as error:
        tally.status[error.code().name] += 1
        tally.cut_tokens += received
        unreceived = max(max_tokens - received, 0)
        tally.failed_streams.append((client_id, router_index, time.time(), unreceived))


def random_request(rng: random.Random, label: str) -> router_pb2.RouterServiceGenerateRequest:
    prompt = [rng.randint(*PROMPT_IDS) for _ in range(rng.randint(8, 64))]
    return router_pb2.RouterServiceGenerateRequest(
        request_id=label,
        prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=prompt)),
        sampling=generation_pb2.SamplingParams(max_tokens=rng.randint(4, 32), ignore_eos=True),
    )


async def tenant_loop(
    routers: list[str],
    key: str,
    client_id: str,
    streams: int,
    stop: asyncio.Event,
    tally: LoadTally,
    hang_bound_s: float,
    seed: int,
) -> None:
    """``streams`` back-to-back streams of one tenant, each request to the next router in turn."""
    channels = [grpc.aio.insecure_channel(a) for a in routers]
    stubs = [router_pb2_grpc.RouterServiceStub(c) for c in channels]

    async def one_stream(lane: int) -> None:
        rng = random.Random(seed * 1000 + lane)
        turn = lane
        while not stop.is_set():
            request = random_request(rng, f"{client_id}-{lane}-{turn}")
            router = turn % len(stubs)
            call = stubs[router].Generate(request, metadata=bearer_metadata(key))
            await consume(call, client_id, tally, hang_bound_s, router, request.sampling.max_tokens)
            turn += 1
            await asyncio.sleep(0.05)  # a router that refuses at once must not spin the loop

    try:
        await asyncio.gather(*(one_stream(lane) for lane in range(streams)))
    finally:
        await asyncio.gather(*(c.close() for c in channels))
