"""A worker without GenerateMultiplexed is recognised at every open, never mistaken for a broken one.

grpc.aio replaces the status of a stream whose write was in flight when the server ended it with a
local INTERNAL ("Internal error from Core", grpc/grpc#36066). A server without the method answers
UNIMPLEMENTED at once, so a router that wrote its first start before that answer read INTERNAL about
half the time: it took the worker out of rotation and failed the requests instead of sending them as
Generate calls (seen in the suite as a flaky fallback test). The router now waits for the worker's
headers before its first write. A real gRPC server with no methods at all stands for the old worker.
"""

from __future__ import annotations

import asyncio

import grpc

from radixfair.v1 import worker_pb2
from radixfair_router.multiplexed_worker_call import MultiplexedConnection, MultiplexedUnsupportedError

OPENS = 40
STARTS = 4


async def ends_of_one_call(address: str) -> list[BaseException | None]:
    """Opens a fresh connection's call with one start and sends more while the answer is on its way
    (the writes the race needs); what each request ended with."""
    async with grpc.aio.insecure_channel(address) as channel:
        connection = MultiplexedConnection(channel, "old-worker")
        handles = []
        for n in range(STARTS):
            request = worker_pb2.GenerateRequest(request_id=f"r{n}", client_id="c", client_weight=1.0)
            handles.append(connection.start(request, "", {}))
            await asyncio.sleep(0.001)
        ends: list[BaseException | None] = []
        for handle in handles:
            try:
                await asyncio.wait_for(handle.take(), 30)
                ends.append(None)
            except Exception as error:  # the end it raises
                ends.append(error)
        connection.close()
    return ends


def test_every_open_on_a_worker_without_the_method_reads_unimplemented():
    async def scenario() -> list[BaseException | None]:
        server = grpc.aio.server()  # no handlers: every method answers UNIMPLEMENTED
        address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        try:
            return [end for _ in range(OPENS) for end in await ends_of_one_call(address)]
        finally:
            await server.stop(0)

    ends = asyncio.run(scenario())
    assert all(isinstance(end, MultiplexedUnsupportedError) for end in ends), [repr(e) for e in ends]
