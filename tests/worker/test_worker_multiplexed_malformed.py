"""GenerateMultiplexed given bytes that do not parse: a clear INVALID_ARGUMENT, as Generate answers them
(issue 12: bad input gets a clear gRPC status, never UNKNOWN with a Python exception's text), and the
requests already open on the call are aborted, their KV pages back in the pool."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
from worker.test_worker_multiplexed import request, start, stub, wait_idle, worker  # noqa: F401 (fixtures)

from radixfair.v1 import worker_pb2


def test_undecodable_bytes_end_the_call_invalid_argument_and_free_its_open_requests(worker, stub):  # noqa: F811
    before = wait_idle(stub)
    outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def messages() -> Iterator[bytes]:
        while (message := outgoing.get()) is not None:
            yield message

    with grpc.insecure_channel(worker.address) as channel:
        method = channel.stream_stream("/radixfair.v1.WorkerService/GenerateMultiplexed")
        call = method(messages(), timeout=60)
        opened = worker_pb2.GenerateMultiplexedRequest(
            starts=[start(1, request("A long story " * 20, "r-open", max_tokens=400, ignore_eos=True))]
        )
        outgoing.put(opened.SerializeToString())
        first = worker_pb2.GenerateMultiplexedResponse.FromString(next(call))
        assert first.events[0].tag == 1 and first.events[0].HasField("delta")  # it runs
        outgoing.put(b"\xff\xff\xff")  # not a GenerateMultiplexedRequest
        try:
            for _ in call:
                pass
            raise AssertionError("the call ended OK after undecodable bytes")
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        outgoing.put(None)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("malformed request:"), details
    # The open request was aborted: nothing runs, and its pages (but for its cached prompt) are free.
    report = wait_idle(stub)
    assert report.running_requests == 0 and report.running_tokens == 0
    assert report.free_pages >= before.free_pages - (len("A long story " * 20) // 8 + 2)
