"""The relay reads the worker's replies as the router's message type and passes them on unchanged
(request_router._relay_call), which holds only while the two messages share one wire format."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from radixfair.v1 import generation_pb2, router_pb2, worker_pb2


def test_the_worker_and_router_response_messages_have_the_same_fields():
    worker = worker_pb2.GenerateResponse.DESCRIPTOR
    router = router_pb2.RouterServiceGenerateResponse.DESCRIPTOR
    shape = lambda d: sorted(  # noqa: E731
        (f.number, f.name, f.type, f.message_type.full_name if f.message_type else "") for f in d.fields
    )
    assert shape(worker) == shape(router)
    assert [o.name for o in worker.oneofs] == [o.name for o in router.oneofs]


@given(
    token_ids=st.lists(st.integers(0, 2**31 - 1), max_size=20),
    text=st.text(max_size=40),
    as_result=st.booleans(),
)
def test_a_worker_reply_parses_as_the_same_router_reply(token_ids, text, as_result):
    if as_result:
        reply = worker_pb2.GenerateResponse(result=generation_pb2.GenerationResult(text=text, worker_id="w"))
    else:
        reply = worker_pb2.GenerateResponse(delta=generation_pb2.TokenDelta(token_ids=token_ids, text=text))
    relayed = router_pb2.RouterServiceGenerateResponse.FromString(reply.SerializeToString())
    assert relayed.WhichOneof("event") == reply.WhichOneof("event")
    expected = router_pb2.RouterServiceGenerateResponse()
    getattr(expected, reply.WhichOneof("event")).CopyFrom(getattr(reply, reply.WhichOneof("event")))
    assert relayed == expected
