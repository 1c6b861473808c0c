"""A columnar StepBatch carries exactly the per-request updates a list of RequestUpdates did.

The engine process sends each step as parallel lists (keys, token ids, counts, texts) with the ends
as a short side list, and the sender coalesces batches the pipe has not taken. Whatever the rows
(any token count, text, end, a request with rows after its end, rows of aborted requests), however
they are cut into steps and coalesced, and through the pickle that crosses the pipe:
- ``StepBatch.rows`` reads back exactly the rows appended, in order;
- the engine loop's batch of a step's real StepOutputs is the old per-row update of each;
- the front's fan-out leaves every stream exactly what pushing the rows one by one (the old
  ``_deliver``) leaves, and asks the engine to abort the same requests;
- through a real engine loop, a finished, an aborted, a refused and an engine-detokenized request
  each end once with all their tokens, and the loop keeps no key of an ended request.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from multiprocessing import Pipe

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from worker.engine_harness import greedy, make_stack

from radixfair.errors import InvalidRequestError, QueueFullError, RadixfairError, RequestFailedError
from radixfair.tokenization import PromptEncoder
from radixfair_engine.config import EngineConfig
from radixfair_engine.engine_outputs import StepOutput
from radixfair_engine.request import FinishReason
from radixfair_engine.text_stream import TextStream
from radixfair_worker.engine_client import EngineClient
from radixfair_worker.engine_loop import PIPE_IO_MODES, EngineLoop
from radixfair_worker.engine_protocol import (
    STOP,
    AbortRequest,
    EngineSpec,
    RequestOutcome,
    RequestUpdate,
    StepBatch,
    SubmitRequest,
    worker_request_id,
)
from radixfair_worker.request_stream import RequestStream
from radixfair_worker.worker_metrics import WorkerMetrics

KEYS = range(6)
OUTCOMES = [
    RequestOutcome(reason, 1, 2, 0, 1.0, 2.0, 3.0, text="")
    for reason in (FinishReason.LENGTH, FinishReason.STOP, FinishReason.CANCELLED)
]
ERRORS = [RequestFailedError("its step failed"), QueueFullError("the queue is full")]

# Mostly what a decode step makes (one token, no text, no end), with every other kind mixed in.
token_lists = st.lists(st.integers(0, 40), min_size=1, max_size=1) | st.lists(st.integers(-1, 40), max_size=4)
texts = st.just("") | st.text(alphabet="ab é🙂", max_size=3)
ends = st.none() | st.none() | st.sampled_from(OUTCOMES) | st.sampled_from(ERRORS)
rows = st.builds(RequestUpdate, st.sampled_from(KEYS), token_lists, texts, ends)


def cut(draw: st.DrawFn, items: list, label: str) -> list[list]:
    """``items`` cut into consecutive groups at points hypothesis picks (empty groups included)."""
    points = sorted(draw(st.lists(st.integers(0, len(items)), max_size=5), label=label))
    return [items[a:b] for a, b in zip([0, *points], [*points, len(items)])]


@st.composite
def coalesced_steps(draw: st.DrawFn) -> tuple[list[RequestUpdate], list[StepBatch]]:
    """Rows cut into steps, the steps' batches merged in runs (the sender's coalescing), pickled."""
    updates = draw(st.lists(rows, max_size=24))
    steps = [StepBatch.of(step) for step in cut(draw, updates, "steps")]
    messages = []
    for run in cut(draw, steps, "coalesced runs"):
        if run:
            message = run[0]
            for later in run[1:]:
                message.merge(later)
            messages.append(pickle.loads(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)))
    return updates, messages


def same(a: object, b: object) -> bool:
    """Equal, with an error equal to an error of its type and message (a pickled copy is another object)."""
    if isinstance(a, RadixfairError) or isinstance(b, RadixfairError):
        return type(a) is type(b) and str(a) == str(b)
    return a == b


def same_rows(got: list[RequestUpdate], expected: list[RequestUpdate]) -> bool:
    return len(got) == len(expected) and all(
        g[:3] == e[:3] and same(g.end, e.end) for g, e in zip(got, expected)
    )


@given(steps=coalesced_steps())
def test_coalesced_pickled_batches_read_back_exactly_the_rows_in_order(steps):
    updates, messages = steps
    got = [row for message in messages for row in message.rows()]
    assert same_rows(got, updates)


@pytest.fixture(scope="module")
def encoder(smollm2_dir) -> PromptEncoder:
    return PromptEncoder(smollm2_dir)


def front_streams(encoder: PromptEncoder, with_text: set[int], aborted: set[int]) -> dict[int, RequestStream]:
    """A stream per key not aborted; the keys in ``with_text`` are detokenized on the front."""
    return {
        key: RequestStream(
            worker_request_id(key),
            0.0,
            text=TextStream(encoder.new_detokenizer(), ()) if key in with_text else None,
        )
        for key in KEYS
        if key not in aborted
    }


def deliver_one_by_one(streams: dict[int, RequestStream], updates: list[RequestUpdate]) -> list[str]:
    """The old fan-out: one push per row; returns the ids it asks the engine to abort."""
    aborts = []
    for key, token_ids, text, end in updates:
        stream = streams.get(key)
        if stream is None:
            continue
        if stream.push(token_ids, text, end) is not None:
            del streams[key]
            if end is None:
                aborts.append(stream.request_id)
    return aborts


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=coalesced_steps(), with_text=st.sets(st.sampled_from(KEYS)), aborted=st.sets(st.sampled_from(KEYS))
)
def test_the_fronts_fan_out_leaves_every_stream_what_one_push_per_row_did(
    encoder, smollm2_dir, steps, with_text, aborted
):
    updates, messages = steps
    expected_streams = front_streams(encoder, with_text, aborted)
    expected_aborts = deliver_one_by_one(dict(expected_streams), updates)

    loop = asyncio.new_event_loop()  # the histograms' update is scheduled on it, never run
    try:
        client = EngineClient(EngineSpec(EngineConfig(), smollm2_dir), WorkerMetrics(CollectorRegistry()))
        client._loop = loop
        streams = front_streams(encoder, with_text, aborted)
        client._streams = dict(streams)
        for message in messages:
            client._deliver(message)
        aborts = []
        while not client._outbox.empty():
            command = client._outbox.get()
            assert isinstance(command, AbortRequest)
            aborts.append(command.request_id)
    finally:
        loop.close()

    assert aborts == expected_aborts
    assert client._streams.keys() == {key for key, stream in expected_streams.items() if stream._end is None}
    for key, stream in streams.items():
        got, expected = stream.take_pending(), expected_streams[key].take_pending()
        if expected is None:
            assert got is None
        else:
            assert (got.token_ids, got.text) == (expected.token_ids, expected.text)
            assert same(got.end, expected.end)


@pytest.fixture(scope="module")
def engine_loop(tiny_model_dir) -> EngineLoop:
    """A real engine's loop, not started: its batches are built by the test's calls."""
    commands, _ = Pipe(duplex=False)
    _, outputs = Pipe(duplex=False)
    return EngineLoop(make_stack(tiny_model_dir).engine, commands, outputs)


step_outputs = st.lists(
    st.tuples(st.sampled_from(KEYS), token_lists, texts, st.sampled_from(["runs", "finished", "failed"])),
    max_size=16,
)


@given(outputs=step_outputs)
def test_the_engine_loops_batch_of_a_step_is_the_old_per_row_update_of_each_output(engine_loop, outputs):
    requests = {key: greedy([1, 2, 3], 4, worker_request_id(key)) for key in KEYS}
    engine_loop._keys = {request.request_id: key for key, request in requests.items()}
    step = []
    for key, token_ids, text, how in outputs:
        request = requests[key]
        request.finish_reason = FinishReason.LENGTH if how == "finished" else None
        error = RequestFailedError("its step failed") if how == "failed" else None
        step.append(StepOutput(request, token_ids, text, finished=how != "runs", error=error))

    batch = engine_loop._batch_of(step)

    # The old format: one update per output, with the end the front must see. A request ends
    # once: rows after its end are left out (the front dropped them), and its key is released.
    expected, ended = [], set()
    for output, (key, token_ids, text, how) in zip(step, outputs):
        if key in ended:
            continue
        end = None if how == "runs" else (output.error or RequestOutcome.of(output.request))
        expected.append(RequestUpdate(key, token_ids, text, end))
        if end is not None:
            ended.add(key)
    assert same_rows(list(batch.rows()), expected)
    assert set(engine_loop._keys.values()) == set(KEYS) - ended


@pytest.mark.parametrize("pipe_io", PIPE_IO_MODES)
def test_through_a_real_engine_loop_every_request_ends_once_with_all_its_tokens_and_no_key_is_left(
    tiny_model_dir, pipe_io: str
):
    engine = make_stack(tiny_model_dir).engine
    commands_in, commands = Pipe(duplex=False)
    outputs, outputs_out = Pipe(duplex=False)
    loop = EngineLoop(engine, commands_in, outputs_out, pipe_io)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    requests = {
        0: greedy([5, 6, 7, 8], 6, worker_request_id(0), ignore_eos=True),
        1: greedy([9, 10, 11], 400, worker_request_id(1), ignore_eos=True),  # aborted below
        2: greedy([], 4, worker_request_id(2)),  # refused at submit: an empty prompt
        3: greedy([5, 6, 7, 8], 8, worker_request_id(3), ignore_eos=True, stop_strings=("@@@@",)),
    }
    tokens: dict[int, list[int]] = {key: [] for key in requests}
    texts: dict[int, str] = {key: "" for key in requests}
    ends: dict[int, list[object]] = {key: [] for key in requests}
    try:
        commands.send([SubmitRequest(request) for request in requests.values()])
        aborted = False
        while sum(map(len, ends.values())) < len(requests):
            assert outputs.poll(120), "the engine loop sent nothing"
            for key, token_ids, text, end in outputs.recv().rows():
                tokens[key] += token_ids
                texts[key] += text
                if end is not None:
                    ends[key].append(end)
            if tokens[1] and not aborted:
                commands.send([AbortRequest(worker_request_id(1))])
                aborted = True
    finally:
        commands.send([STOP])
        thread.join(120)

    assert all(len(request_ends) == 1 for request_ends in ends.values())
    (refusal,) = ends[2]
    assert isinstance(refusal, InvalidRequestError) and tokens[2] == []
    (cancelled,) = ends[1]
    assert cancelled.finish_reason is FinishReason.CANCELLED and 0 < len(tokens[1]) < 400
    for key in (0, 1, 3):
        (outcome,) = ends[key]
        assert outcome.completion_tokens == len(tokens[key])
    assert ends[0][0].finish_reason is FinishReason.LENGTH and len(tokens[0]) == 6
    # Text made in the engine (a stop string asks for it) reaches the front whole.
    assert texts[3] == ends[3][0].text
    assert loop._keys == {}
