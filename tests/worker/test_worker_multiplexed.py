"""GenerateMultiplexed on a real worker process over loopback: many requests on one call, each as its
own Generate call would be served, failing alone, and freeing its pages when cancelled."""

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Iterator

import grpc
import pytest

from radixfair.caller_identity import IDENTITY_SIGNATURE_KEY, identity_signature
from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc

SECRET = "mux-test-secret"
LONG_PROMPT = "A long story " * 10


@pytest.fixture(scope="module")
def worker(tiny_model_dir, tmp_path_factory):
    from support.router_stack import start_worker_process

    settings = {"engine.page_size": 8, "engine.max_context_tokens": 512}
    service = start_worker_process(
        tiny_model_dir, tmp_path_factory.mktemp("worker"), identity_secret=SECRET, **settings
    )
    yield service
    service.stop()


@pytest.fixture
def stub(worker):
    with grpc.insecure_channel(worker.address) as channel:
        yield worker_pb2_grpc.WorkerServiceStub(channel)


def request(text: str, request_id: str, client: str = "alice", **sampling) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=request_id,
        client_id=client,
        client_weight=1.0,
        prompt=generation_pb2.Prompt(text=text),
        sampling=generation_pb2.SamplingParams(**sampling),
    )


def signature(req: worker_pb2.GenerateRequest) -> str:
    return identity_signature(SECRET, req.client_id, req.client_weight, req.request_id)


def start(
    tag: int, req: worker_pb2.GenerateRequest, signed: str | None = None
) -> worker_pb2.MultiplexedStart:
    return worker_pb2.MultiplexedStart(
        tag=tag, request=req, identity_signature=signature(req) if signed is None else signed
    )


class MuxCall:
    """One GenerateMultiplexed call: ``send`` queues a message, ``events`` reads the worker's."""

    def __init__(self, stub: worker_pb2_grpc.WorkerServiceStub, timeout: float = 120) -> None:
        self._outgoing: queue.SimpleQueue[worker_pb2.GenerateMultiplexedRequest | None] = queue.SimpleQueue()
        self.call = stub.GenerateMultiplexed(self._requests(), timeout=timeout)
        self.messages = 0

    def _requests(self) -> Iterator[worker_pb2.GenerateMultiplexedRequest]:
        while (message := self._outgoing.get()) is not None:
            yield message

    def send(self, starts=(), cancel_tags=()) -> None:
        self._outgoing.put(worker_pb2.GenerateMultiplexedRequest(starts=starts, cancel_tags=cancel_tags))

    def close_sending(self) -> None:
        self._outgoing.put(None)

    def events(self) -> Iterator[worker_pb2.MultiplexedEvent]:
        for message in self.call:
            self.messages += 1
            yield from message.events


def collect_until_ended(mux: MuxCall, tags: set[int]) -> dict[int, list[worker_pb2.MultiplexedEvent]]:
    """Every event of ``tags`` until each has its end; raises if an event names another tag."""
    by_tag: dict[int, list[worker_pb2.MultiplexedEvent]] = {tag: [] for tag in tags}
    open_tags = set(tags)
    for event in mux.events():
        assert event.tag in open_tags, f"event for tag {event.tag}, which is not open"
        by_tag[event.tag].append(event)
        if event.WhichOneof("event") != "delta":
            open_tags.discard(event.tag)
        if not open_tags:
            break
    return by_tag


def text_of(events: list[worker_pb2.MultiplexedEvent]) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


def single_generate(stub, req: worker_pb2.GenerateRequest) -> tuple[str, generation_pb2.GenerationResult]:
    text, result = "", None
    for message in stub.Generate(req, metadata=((IDENTITY_SIGNATURE_KEY, signature(req)),), timeout=60):
        if message.HasField("delta"):
            text += message.delta.text
        else:
            result = message.result
    return text, result


def load(stub) -> worker_pb2.LoadReport:
    return stub.GetLoadReport(worker_pb2.GetLoadReportRequest()).report


def wait_idle(stub) -> worker_pb2.LoadReport:
    deadline = time.monotonic() + 15
    while True:
        report = load(stub)
        if report.running_requests == 0 and report.queue_length == 0 or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


def test_many_requests_on_one_call_each_get_their_own_tokens_in_shared_messages(stub):
    requests = {
        tag: request(f"story number {tag} begins", f"many-{tag}", max_tokens=6 + tag, ignore_eos=True)
        for tag in range(1, 13)
    }
    mux = MuxCall(stub)
    mux.send(starts=[start(tag, req) for tag, req in requests.items()])
    by_tag = collect_until_ended(mux, set(requests))
    mux.close_sending()
    for tag in requests:
        events = by_tag[tag]
        result = events[-1].result
        assert [e.WhichOneof("event") for e in events[:-1]] == ["delta"] * (len(events) - 1)
        assert sum(len(e.delta.token_ids) for e in events[:-1]) == result.usage.completion_tokens == 6 + tag
        assert text_of(events) == result.text
    # Requests share messages: fewer messages than one per token of each request.
    assert mux.messages < sum(6 + tag for tag in requests)


def test_one_request_on_the_call_streams_the_text_its_own_generate_call_does(stub):
    req = request("Once upon a time", "same-1", max_tokens=16, seed=11, temperature=0.9, top_p=0.9)
    mux = MuxCall(stub)
    mux.send(starts=[start(5, req)])
    events = collect_until_ended(mux, {5})[5]
    mux.close_sending()
    alone, result = single_generate(stub, req)
    assert text_of(events) == events[-1].result.text == alone == result.text


def test_a_bad_request_and_a_bad_signature_fail_alone_while_the_others_finish(stub):
    good = request("a good one", "fine-1", max_tokens=5, ignore_eos=True)
    malformed = request("no client", "fine-2", client="", max_tokens=5)
    forged = request("claims bob", "fine-3", client="bob", max_tokens=5)
    mux = MuxCall(stub)
    mux.send(
        starts=[
            start(1, good),
            start(2, malformed),
            start(3, forged, signed=signature(request("claims bob", "fine-3", max_tokens=5))),  # alice's
            start(4, good, signed=""),
        ]
    )
    by_tag = collect_until_ended(mux, {1, 2, 3, 4})
    mux.close_sending()
    assert by_tag[1][-1].result.usage.completion_tokens == 5
    assert [e.WhichOneof("event") for e in by_tag[2]] == ["error"]
    assert by_tag[2][0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for tag in (3, 4):
        [event] = by_tag[tag]
        assert event.error.code == grpc.StatusCode.UNAUTHENTICATED.value[0], event
        assert IDENTITY_SIGNATURE_KEY in event.error.message


def test_a_duplicate_open_tag_ends_both_with_invalid_argument_and_never_crosses(stub):
    before = wait_idle(stub)
    mux = MuxCall(stub)
    mux.send(starts=[start(7, request(LONG_PROMPT, "dup-1", max_tokens=400, ignore_eos=True))])
    events = mux.events()
    first = next(events)
    assert first.tag == 7 and first.HasField("delta")
    mux.send(
        starts=[
            start(7, request("an intruder", "dup-2", client="bob", max_tokens=3)),
            start(8, request("a bystander", "dup-3", max_tokens=4, ignore_eos=True)),
        ]
    )
    seen: dict[int, list[worker_pb2.MultiplexedEvent]] = {7: [], 8: []}
    for event in events:
        seen[event.tag].append(event)
        if event.tag == 8 and not event.HasField("delta"):
            break
    mux.close_sending()
    # After its error, nothing more came for tag 7: the running request was aborted with it.
    ends = [e for e in seen[7] if not e.HasField("delta")]
    assert [e.WhichOneof("event") for e in ends] == ["error"] and seen[7][-1] is ends[0]
    assert ends[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert seen[8][-1].result.usage.completion_tokens == 4
    report = wait_idle(stub)
    assert report.running_requests == 0 and report.running_tokens == 0
    assert report.free_pages >= before.free_pages - (len(LONG_PROMPT) // 8 + 2)


@pytest.mark.parametrize("how", ["cancel-entry", "call-ended"])
def test_cancelling_one_request_or_the_whole_call_frees_its_pages(worker, stub, how):
    before = wait_idle(stub)
    mux = MuxCall(stub)
    mux.send(starts=[start(1, request(LONG_PROMPT, f"cancel-{how}", max_tokens=400, ignore_eos=True))])
    events = mux.events()
    next(events), next(events)
    assert load(stub).running_requests == 1
    logged_before = len(worker.log())
    if how == "cancel-entry":
        mux.send(cancel_tags=[1])
        # The call goes on: a later request on it is served.
        mux.send(starts=[start(2, request("after the cancel", "cancel-next", max_tokens=3, ignore_eos=True))])
        seen = []
        for event in events:
            seen.append(event)
            if event.tag == 2 and not event.HasField("delta"):
                break
        mux.close_sending()
        assert seen[-1].result.usage.completion_tokens == 3
        # Nothing ended tag 1 after its cancel: its tokens already on the way were all it got.
        assert all(e.HasField("delta") for e in seen if e.tag == 1)
    else:
        mux.call.cancel()
    report = wait_idle(stub)
    assert report.running_requests == 0 and report.running_tokens == 0
    assert report.free_pages >= before.free_pages - (len(LONG_PROMPT) // 8 + 2)
    log = worker.log()[logged_before:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_a_stopping_worker_finishes_the_open_request_then_ends_the_call_with_ok(start_worker, tiny_model_dir):
    worker = start_worker(tiny_model_dir, identity_secret=SECRET, **{"engine.page_size": 8})
    with grpc.insecure_channel(worker.address) as channel:
        mux = MuxCall(worker_pb2_grpc.WorkerServiceStub(channel))
        mux.send(starts=[start(1, request("before the stop", "stop-1", max_tokens=40, ignore_eos=True))])
        events = mux.events()
        assert next(events).HasField("delta")
        worker.process.send_signal(signal.SIGTERM)
        # The running request runs to its result; then the call ends with status OK (the iterator
        # ends instead of raising), not cancelled at the end of the worker's grace period.
        rest = list(events)
        assert rest[-1].tag == 1 and rest[-1].result.usage.completion_tokens == 40
        assert mux.call.code() == grpc.StatusCode.OK
    assert worker.process.wait(timeout=30) == 0
