"""A worker message the router cannot parse breaks the worker call, as a broken connection would.

grpc.aio hands a stream's reader None for a message whose bytes do not parse (it logs the parse error
and goes on). The connection's one reader serves every request to that worker, so reading None as a
message must not end the reader and leave the call looking open: every request on it, and every later
request to that worker, would wait for events nobody reads any more. The worker here is a real gRPC
server on loopback that answers GenerateMultiplexed with bytes that are not a
GenerateMultiplexedResponse (what a worker built from another version of the contract could send).
The per-request transport's reader (WorkerStream) read None the same way, and its request hung.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from radixfair.v1 import generation_pb2, router_pb2, worker_pb2
from radixfair_router.live_streams import StreamBook
from radixfair_router.multiplexed_worker_call import MultiplexedConnection
from radixfair_router.worker_stream import WorkerStream

MULTIPLEXED = "/radixfair.v1.WorkerService/GenerateMultiplexed"
GENERATE = "/radixfair.v1.WorkerService/Generate"


class GarbageWorker(grpc.GenericRpcHandler):
    """Answers each GenerateMultiplexed message with undecodable bytes; records how each call ended."""

    def __init__(self) -> None:
        self.calls = 0
        self.ended: list[bool] = []  # per call: True once it ended

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method == GENERATE:
            return grpc.unary_stream_rpc_method_handler(self._answer_one)
        if handler_call_details.method != MULTIPLEXED:
            return None
        return grpc.stream_stream_rpc_method_handler(self._answer)

    async def _answer_one(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff"
        await asyncio.Event().wait()  # the call stays open: only the router's reading can end it

    async def _answer(self, requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self.calls += 1
        index = len(self.ended)
        self.ended.append(False)
        context.add_done_callback(lambda _: self.ended.__setitem__(index, True))
        async for _ in requests:
            yield b"\xff\xff\xff"  # a truncated varint: no message parses from it


def start(connection: MultiplexedConnection, request_id: str):
    request = worker_pb2.GenerateRequest(
        request_id=request_id,
        client_id="alice",
        client_weight=1.0,
        prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=[800, 801, 802])),
        sampling=generation_pb2.SamplingParams(max_tokens=4),
    )
    return connection.start(request, "", {})


def test_an_undecodable_worker_message_ends_the_calls_requests_unavailable_instead_of_hanging():
    async def scenario():
        worker = GarbageWorker()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((worker,))
        address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                connection = MultiplexedConnection(channel, "garbage")
                first, second = start(connection, "g-1"), start(connection, "g-2")
                ends = []
                for request in (first, second):
                    # Bounded: a hang fails here (it is a guard, not a measurement).
                    with pytest.raises(grpc.aio.AioRpcError) as failure:
                        await asyncio.wait_for(request.take(), 30)
                    ends.append(failure.value)
                open_after = len(connection)
                for _ in range(300):  # until the server has seen the call end
                    if worker.ended and worker.ended[0]:
                        break
                    await asyncio.sleep(0.01)
                connection.close()
                return ends, open_after, list(worker.ended)
        finally:
            await server.stop(0)

    ends, open_after, ended = asyncio.run(scenario())
    for end in ends:
        assert end.code() == grpc.StatusCode.UNAVAILABLE, end
        assert "worker garbage" in end.details() and "does not parse" in end.details(), end.details()
    assert open_after == 0
    # The call ended at the worker: a real worker aborts its requests then, which frees their KV pages.
    assert ended == [True]


def test_an_undecodable_worker_message_ends_a_per_request_stream_unavailable_instead_of_hanging():
    async def scenario():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((GarbageWorker(),))
        address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                generate = channel.unary_stream(
                    GENERATE, response_deserializer=router_pb2.RouterServiceGenerateResponse.FromString
                )
                call = generate(b"")
                stream = WorkerStream(call, StreamBook("alice", 1.0, None, 0))  # type: ignore[arg-type]
                try:
                    # Bounded: a hang fails here (it is a guard, not a measurement).
                    with pytest.raises(grpc.aio.AioRpcError) as failure:
                        await asyncio.wait_for(stream.take(), 30)
                finally:
                    stream.close()
                    call.cancel()
                return failure.value
        finally:
            await server.stop(0)

    end = asyncio.run(scenario())
    assert end.code() == grpc.StatusCode.UNAVAILABLE, end
    assert "does not parse" in end.details(), end.details()
