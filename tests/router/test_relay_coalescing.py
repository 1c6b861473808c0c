"""The relay coalesces what a client has not taken yet (WorkerStream), and the text stays byte-identical.

Read from a real worker process's Generate, as the router's relay reads it (the worker's reply parsed
as the router's message type): a relay that keeps up gets each worker message as it came; one that
fell behind gets everything pending as one delta. Either way the streamed text is the worker's text.
Through a router with a stream interval, what comes after the first token is gathered the same way,
and the ledger books every token streamed.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
from hypothesis import given
from hypothesis import strategies as st
from support.router_stack import client_for, router_config, running_router, wait_until

from radixfair.client import build_prompt, build_sampling
from radixfair.v1 import generation_pb2, router_pb2, worker_pb2
from radixfair_router.live_streams import StreamBook
from radixfair_router.worker_stream import WorkerStream, coalesce

NEW_TOKENS = 24


def _worker_call(channel: grpc.aio.Channel, request_id: str, prompt: str) -> grpc.aio.UnaryStreamCall:
    generate = channel.unary_stream(
        "/radixfair.v1.WorkerService/Generate",
        request_serializer=worker_pb2.GenerateRequest.SerializeToString,
        response_deserializer=router_pb2.RouterServiceGenerateResponse.FromString,
    )
    request = worker_pb2.GenerateRequest(
        request_id=request_id,
        client_id="alice",
        prompt=build_prompt(prompt),
        sampling=build_sampling(max_tokens=NEW_TOKENS, ignore_eos=True),
    )
    return generate(request, timeout=60)


Relayed = tuple[list[int], str, int, generation_pb2.GenerationResult]


async def _relay(address: str, fall_behind: bool) -> Relayed:
    """Streams one request through WorkerStream; with ``fall_behind`` takes nothing until the worker
    has sent its result. Returns the ids and text taken, the number of deltas, and the result."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = _worker_call(channel, f"coalesce-{fall_behind}", f"coalescing test, behind={fall_behind}")
        stream = WorkerStream(call, StreamBook("alice", 1.0, None, 0))  # type: ignore[arg-type]
        try:
            if fall_behind:
                await wait_until(lambda: stream.complete, "the worker's whole stream read")
            ids: list[int] = []
            text, deltas = "", 0
            while True:
                delta, result = await stream.take()
                if delta is not None:
                    deltas += 1
                    ids += delta.delta.token_ids
                    text += delta.delta.text
                if result is not None:
                    return ids, text, deltas, result.result
        finally:
            stream.close()


def test_a_relay_that_fell_behind_gets_everything_pending_as_one_delta_with_the_same_text(two_workers):
    ids, text, deltas, result = asyncio.run(_relay(two_workers[0].address, fall_behind=True))
    assert deltas == 1
    assert len(ids) == NEW_TOKENS == result.usage.completion_tokens
    assert text == result.text and text


def test_a_relay_that_keeps_up_streams_the_same_text_in_several_deltas(two_workers):
    ids, text, deltas, result = asyncio.run(_relay(two_workers[0].address, fall_behind=False))
    assert deltas > 1
    assert len(ids) == NEW_TOKENS == result.usage.completion_tokens
    assert text == result.text and text


@given(st.lists(st.tuples(st.lists(st.integers(0, 2**31 - 1), max_size=5), st.text(max_size=8)), min_size=1))
def test_coalesced_deltas_concatenate_ids_and_text_in_order(parts):
    deltas = [
        router_pb2.RouterServiceGenerateResponse(delta=generation_pb2.TokenDelta(token_ids=ids, text=text))
        for ids, text in parts
    ]
    one = coalesce(deltas)
    assert list(one.delta.token_ids) == [i for ids, _ in parts for i in ids]
    assert one.delta.text == "".join(text for _, text in parts)
    # Byte-identical on the wire too: the text's UTF-8 bytes are the parts' bytes, in order.
    assert one.delta.text.encode() == b"".join(text.encode() for _, text in parts)


def test_a_stream_interval_gathers_what_comes_after_the_first_token_and_books_every_token(
    two_workers, tiny_model_dir, redis_url
):
    # An interval longer than the whole generation: the first token goes out as it comes, everything
    # after it is held until the result arrives, which ends the hold at once (a hold that waited for
    # its interval would outlast the wait_for below by an hour).
    async def scenario():
        config = router_config(tiny_model_dir, two_workers[:1], redis_url, policy="round_robin")
        config = replace(config, forward=replace(config.forward, stream_interval_s=3600.0))
        async with running_router(config) as running, client_for(running, "alice") as client:
            stream = client.stream("stream interval test", max_tokens=NEW_TOKENS, ignore_eos=True)
            messages = [message async for message in stream]
            await running.router.drain()
            return messages, await running.ledger.snapshot()

    messages, ledger = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    deltas = [m.delta for m in messages if m.HasField("delta")]
    result = messages[-1].result
    assert len(deltas) == 2
    assert sum(len(d.token_ids) for d in deltas) == NEW_TOKENS == result.usage.completion_tokens
    assert "".join(d.text for d in deltas) == result.text and result.text
    assert {r.client_id: r.completion_tokens for r in ledger} == {"alice": NEW_TOKENS}
