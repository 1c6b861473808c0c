"""GenerateMultiplexed (and Generate) when one request fails in a way nobody planned for, or its
refusal is large: the request ends alone with a clear status, and every other request on the call goes
on (issue 12: one request must never hang, cross or crash other tenants).

The worker is real (its own process, over loopback); the unexpected failure is real too: the model's
chat template divides by zero for one message, which raises ZeroDivisionError (not a template error)
while the worker builds that request.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import grpc
import pytest
from worker.test_worker_multiplexed import (
    SECRET,
    MuxCall,
    collect_until_ended,
    request,
    signature,
    start,
)

from radixfair.caller_identity import IDENTITY_SIGNATURE_KEY
from radixfair.errors import FAILURE_SCOPE_KEY, REQUEST_SCOPE
from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from radixfair_worker.multiplexed_call import ERROR_MESSAGE_CHARS

BOOM = "divide by zero"
# Renders every chat but the one whose message is BOOM, for which it raises ZeroDivisionError.
FAULTY_TEMPLATE = (
    "{% for m in messages %}{% if m.content == '" + BOOM + "' %}{{ 1 // 0 }}{% endif %}"
    "{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
)
# gRPC's default receive limit, which the caller (a router) keeps.
GRPC_MESSAGE_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def faulty_worker(tiny_model_dir, tmp_path_factory):
    from support.router_stack import start_worker_process

    model_dir = tmp_path_factory.mktemp("faulty-model") / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text(FAULTY_TEMPLATE)
    settings = {"engine.page_size": 8, "engine.max_context_tokens": 512}
    service = start_worker_process(
        model_dir, tmp_path_factory.mktemp("faulty-worker"), identity_secret=SECRET, **settings
    )
    yield service
    service.stop()


@pytest.fixture
def stub(faulty_worker) -> Iterator[worker_pb2_grpc.WorkerServiceStub]:
    with grpc.insecure_channel(faulty_worker.address) as channel:
        yield worker_pb2_grpc.WorkerServiceStub(channel)


def chat_request(content: str, request_id: str) -> worker_pb2.GenerateRequest:
    req = request("", request_id, max_tokens=4)
    turn = generation_pb2.ChatMessage(role="user", content=content)
    req.prompt.CopyFrom(generation_pb2.Prompt(chat=generation_pb2.ChatPrompt(messages=[turn])))
    return req


def test_a_request_that_fails_the_worker_unexpectedly_ends_alone_with_internal(faulty_worker, stub):
    logged_before = len(faulty_worker.log())
    mux = MuxCall(stub, timeout=60)
    mux.send(
        starts=[
            start(1, chat_request(BOOM, "boom-1")),
            start(2, request("a good one", "boom-2", max_tokens=5, ignore_eos=True)),
        ]
    )
    by_tag = collect_until_ended(mux, {1, 2})
    mux.close_sending()
    [event] = by_tag[1]
    assert event.error.code == grpc.StatusCode.INTERNAL.value[0], event
    # Its own failure, not the worker's: a router neither retries it elsewhere nor takes the worker out.
    assert event.error.request_scoped and "ZeroDivisionError" in event.error.message
    assert by_tag[2][-1].result.usage.completion_tokens == 5
    # The traceback is in the worker's log, not swallowed.
    assert "ZeroDivisionError" in faulty_worker.log()[logged_before:]


def test_generate_ends_such_a_request_internal_scoped_to_it_as_the_multiplexed_call_does(stub):
    req = chat_request(BOOM, "boom-generate")
    with pytest.raises(grpc.RpcError) as failure:
        list(stub.Generate(req, metadata=((IDENTITY_SIGNATURE_KEY, signature(req)),), timeout=60))
    error = failure.value
    assert error.code() == grpc.StatusCode.INTERNAL, error
    assert "ZeroDivisionError" in error.details()
    assert (FAILURE_SCOPE_KEY, REQUEST_SCOPE) in tuple(error.trailing_metadata() or ())


def refused_for_its_model(tag: int, model_chars: int) -> worker_pb2.MultiplexedStart:
    """A start the worker refuses for its model name, which the refusal repeats: each \\x01 of it
    reads as the four characters \\\\x01 there, so the refusal is about 4 x ``model_chars`` long."""
    req = request("hello", f"big-refusal-{tag}")
    req.model = "\x01" * model_chars
    return start(tag, req)


def test_many_refusals_at_once_go_out_in_messages_the_caller_can_receive(stub):
    # 600 refusals of ~8.4 KB each: ~5 MB of error events, all made before the worker's next reply.
    refused = [refused_for_its_model(tag, 2100) for tag in range(1, 601)]
    mux = MuxCall(stub, timeout=60)
    mux.send(
        starts=[*refused, start(1000, request("a good one", "refusals-ok", max_tokens=4, ignore_eos=True))]
    )
    by_tag = collect_until_ended(mux, {*range(1, 601), 1000})
    mux.close_sending()
    for tag in range(1, 601):
        [event] = by_tag[tag]
        assert event.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], event.error.message[:200]
    assert by_tag[1000][-1].result.usage.completion_tokens == 4
    assert mux.messages > 1


def test_a_refusal_too_long_for_one_message_is_cut_and_the_call_goes_on(stub):
    # Its full text would be ~4.4 MB: past the caller's receive limit on its own.
    mux = MuxCall(stub, timeout=60)
    mux.send(
        starts=[
            refused_for_its_model(1, 1_100_000),
            start(2, request("a good one", "cut-ok", max_tokens=4, ignore_eos=True)),
        ]
    )
    by_tag = collect_until_ended(mux, {1, 2})
    mux.close_sending()
    [event] = by_tag[1]
    assert event.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert event.error.message.startswith("this worker serves model")
    assert ERROR_MESSAGE_CHARS < len(event.error.message) < ERROR_MESSAGE_CHARS + 100 < GRPC_MESSAGE_LIMIT
    assert "truncated" in event.error.message[-100:]
    assert by_tag[2][-1].result.usage.completion_tokens == 4
