"""GenerateMultiplexed (and Generate) when one request fails in a way nobody planned for: the request
ends alone with a clear status, and every other request on the call goes on (issue 12: one request
must never hang, cross or crash other tenants).

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

BOOM = "divide by zero"
# Renders every chat but the one whose message is BOOM, for which it raises ZeroDivisionError.
FAULTY_TEMPLATE = (
    "{% for m in messages %}{% if m.content == '" + BOOM + "' %}{{ 1 // 0 }}{% endif %}"
    "{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
)


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
