"""Sampling parameters at their numeric edges, through the real engine on a tiny random Llama.

Every SamplingParams a caller can send is either rejected at the edge with
INVALID_ARGUMENT, or sampled without harming anyone: it finishes, and the
requests sharing its batch get exactly the tokens they get alone. A request
that fails inside a step anyway fails alone and gives its pages back.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict

import grpc
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from worker.engine_harness import greedy, make_stack, run_to_completion

from radixfair.errors import InvalidRequestError
from radixfair.request_checks import MAX_STOP_STRING_CHARS, MAX_STOP_TOKEN_IDS
from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from radixfair_engine.engine import Engine
from radixfair_engine.request import FinishReason, Request, SamplingConfig
from radixfair_engine.sampler import Sampler, tempered_probs
from radixfair_worker.request_builder import build_request

PROMPT = [101, 202, 303, 404, 505, 606]
BYSTANDER_PROMPT = [7, 8, 9, 10, 11]
# A context window this small caps every request at 10 generated tokens, so examples stay cheap.
MAX_CONTEXT = len(PROMPT) + 10
VOCAB = 49152  # the SmolLM2 tokenizer's, which the tiny model uses

EDGE_FLOATS = [0.0, -0.0, 1e-45, 1e-40, 1e-30, 1e-7, 1.0, 0.5, 1 - 2**-24, 3.4e38, -1e-40, -1.0]
NON_FINITE = [math.nan, math.inf, -math.inf]
FLOAT32 = st.floats(width=32) | st.sampled_from(EDGE_FLOATS + NON_FINITE)
INT32 = st.integers(-(2**31), 2**31 - 1) | st.sampled_from([-1, 0, 1, 2, VOCAB - 1, VOCAB, 2**31 - 1])
TOKEN_ID = st.integers(0, VOCAB - 1) | INT32
UINT64 = st.integers(0, 2**64 - 1) | st.sampled_from([0, 2**63, 2**64 - 1])


@st.composite
def sampling_params(draw: st.DrawFn) -> generation_pb2.SamplingParams:
    """Any SamplingParams: every field, set or not, at any value its proto type holds."""
    params = generation_pb2.SamplingParams(
        temperature=draw(FLOAT32), top_k=draw(INT32), ignore_eos=draw(st.booleans())
    )
    if draw(st.booleans()):
        params.top_p = draw(FLOAT32)
    if draw(st.booleans()):
        params.seed = draw(UINT64)
    if draw(st.booleans()):
        params.max_tokens = draw(INT32)
    params.stop_token_ids.extend(draw(st.lists(TOKEN_ID, max_size=3)))
    params.stop.extend(draw(st.lists(st.text(max_size=4), max_size=3)))
    return params


def documented_valid(params: generation_pb2.SamplingParams) -> bool:
    """The ranges the proto documents, written out independently of the code under test."""
    return (
        (not params.HasField("max_tokens") or params.max_tokens > 0)
        and math.isfinite(params.temperature)
        and params.temperature >= 0
        and params.top_k >= 0
        and (not params.HasField("top_p") or 0 < params.top_p <= 1)
        and all(0 <= t < VOCAB for t in params.stop_token_ids)
        and all(params.stop)
    )


def generate_request(params: generation_pb2.SamplingParams) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        client_id="fuzzer",
        prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=PROMPT)),
        sampling=params,
    )


@pytest.fixture(scope="module")
def stack(tiny_model_dir):
    return make_stack(tiny_model_dir, num_pages=64, page_size=4, max_context_tokens=MAX_CONTEXT)


@pytest.fixture(scope="module")
def bystander_alone(stack) -> list[int]:
    alone = greedy(BYSTANDER_PROMPT, 8, "bystander-alone", client="bystander", ignore_eos=True)
    run_to_completion(stack.engine, [alone])
    return alone.output_ids


def run_collecting(engine: Engine, requests: list[Request]) -> dict[str, list]:
    """Runs the engine until idle; returns every StepOutput, by request id."""
    outputs: dict[str, list] = defaultdict(list)
    for request in requests:
        engine.submit(request)
    for _ in range(1_000):
        if not engine.has_work():
            return outputs
        for output in engine.step():
            outputs[output.request.request_id].append(output)
    raise AssertionError("engine still busy after 1000 steps")


def assert_no_pages_held(engine: Engine) -> None:
    assert not engine.running and not engine.waiting
    assert engine.allocator.num_free + engine.cache.cached_pages == engine.allocator.num_pages


@given(params=sampling_params())
@settings(max_examples=40)
@example(params=generation_pb2.SamplingParams(temperature=1e-40))
@example(params=generation_pb2.SamplingParams(temperature=3.4e38, top_k=1, top_p=1e-45, seed=2**64 - 1))
@example(params=generation_pb2.SamplingParams(temperature=math.nan))
@example(params=generation_pb2.SamplingParams(temperature=1.0, top_p=math.nan))
def test_any_sampling_params_are_rejected_at_the_edge_or_finish_without_touching_the_batch(
    stack, bystander_alone, params
):
    engine = stack.engine
    try:
        request = build_request(generate_request(params), stack.encoder, "tiny", engine.max_context_tokens)
    except InvalidRequestError:
        assert not documented_valid(params)
        return
    assert documented_valid(params)
    bystander = greedy(BYSTANDER_PROMPT, 8, uuid.uuid4().hex, client="bystander", ignore_eos=True)

    outputs = run_collecting(engine, [request, bystander])

    assert [o.error for o in outputs[request.request_id]] == [None] * len(outputs[request.request_id])
    assert request.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert 1 <= len(request.output_ids) <= request.sampling.max_tokens
    assert bystander.output_ids == bystander_alone
    assert_no_pages_held(engine)


def test_a_vanishing_temperature_samples_the_greedy_tokens(stack):
    reference = greedy(PROMPT, 10, uuid.uuid4().hex, ignore_eos=True)
    vanishing = [
        greedy(PROMPT, 10, uuid.uuid4().hex, ignore_eos=True, temperature=t, seed=3)
        for t in (1e-45, 1e-40, 1e-30, 1e-12)
    ]
    run_to_completion(stack.engine, [reference, *vanishing])
    assert [r.output_ids for r in vanishing] == [reference.output_ids] * len(vanishing)


@given(
    logits=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=2, max_size=64),
    temperature=st.floats(min_value=0, exclude_min=True, allow_infinity=False, width=32),
    top_k=st.integers(0, 100),
)
def test_tempered_probabilities_of_finite_logits_are_a_distribution_peaked_at_the_argmax(
    logits, temperature, top_k
):
    scores = torch.tensor(logits, dtype=torch.float32)
    probs = tempered_probs(scores, temperature, top_k)
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert abs(probs.sum().item() - 1.0) < 1e-4
    best = scores.max()
    # Never less likely than any other token, whatever the temperature.
    assert probs[scores == best].min() >= probs.max() - 1e-6


@pytest.mark.parametrize("overlap", [False, True])
def test_a_request_that_fails_inside_a_step_fails_alone_and_frees_its_pages(
    tiny_model_dir, bystander_alone, overlap
):
    engine = make_stack(tiny_model_dir, num_pages=64, page_size=4, overlap_schedule=overlap).engine
    # The edge rejects a NaN temperature; a caller of the engine itself can still pass one.
    broken = Request(uuid.uuid4().hex, "broken", PROMPT, SamplingConfig(max_tokens=8, temperature=math.nan))
    bystander = greedy(BYSTANDER_PROMPT, 8, uuid.uuid4().hex, client="bystander", ignore_eos=True)
    engine.submit(bystander)
    engine.step()  # the bystander is decoding (with overlap, its token still on the device)

    outputs = run_collecting(engine, [broken])

    [failure] = outputs[broken.request_id]
    assert failure.finished and failure.error is not None
    assert failure.error.code is grpc.StatusCode.INTERNAL and "temperature" in str(failure.error)
    assert broken.finish_reason is FinishReason.ERROR
    assert bystander.output_ids == bystander_alone and bystander.finish_reason is FinishReason.LENGTH
    assert_no_pages_held(engine)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_request_whose_forward_pass_fails_fails_alone(tiny_model_dir, overlap):
    engine = make_stack(tiny_model_dir, num_pages=64, page_size=4, overlap_schedule=overlap).engine
    decoding = greedy(BYSTANDER_PROMPT, 12, uuid.uuid4().hex, client="bystander", ignore_eos=True)
    alone = greedy(BYSTANDER_PROMPT, 12, uuid.uuid4().hex, client="bystander", ignore_eos=True)
    run_to_completion(engine, [alone])
    engine.submit(decoding)
    for _ in range(3):
        engine.step()
    # An id beyond the model's embedding: the edge rejects it, a caller of the engine can still pass it.
    beyond = Request(uuid.uuid4().hex, "broken", [5, 60_000, 6], SamplingConfig(max_tokens=4))

    outputs = run_collecting(engine, [beyond])

    [failure] = outputs[beyond.request_id]
    assert failure.error is not None and "forward pass failed" in str(failure.error)
    assert beyond.finish_reason is FinishReason.ERROR
    assert decoding.output_ids == alone.output_ids and decoding.finish_reason is FinishReason.LENGTH
    assert_no_pages_held(engine)


def test_sampler_fails_only_the_rows_it_cannot_sample():
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0], [2.0, 0.0, 1.0]])
    configs = [
        SamplingConfig(max_tokens=1, temperature=1e-40),
        SamplingConfig(max_tokens=1, temperature=math.nan),
        SamplingConfig(max_tokens=1),
    ]
    rows = Sampler().sample(logits, ["a", "b", "c"], configs)
    assert rows.tokens[0] == 1 and rows.tokens[2] == 0
    assert list(rows.failures) == [1]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (generation_pb2.SamplingParams(temperature=math.nan), "temperature"),
        (generation_pb2.SamplingParams(temperature=math.inf), "temperature"),
        (generation_pb2.SamplingParams(temperature=-1e-40), "temperature"),
        (generation_pb2.SamplingParams(top_p=math.nan), "top_p"),
        (generation_pb2.SamplingParams(top_p=0.0), "top_p"),
        (generation_pb2.SamplingParams(top_k=-1), "top_k"),
        (generation_pb2.SamplingParams(max_tokens=0), "max_tokens"),
        (generation_pb2.SamplingParams(stop_token_ids=[-1]), "stop_token_ids"),
        (generation_pb2.SamplingParams(stop_token_ids=[VOCAB]), "stop_token_ids"),
        (generation_pb2.SamplingParams(stop_token_ids=[1] * (MAX_STOP_TOKEN_IDS + 1)), "stop_token_ids"),
        (generation_pb2.SamplingParams(stop=["x" * (MAX_STOP_STRING_CHARS + 1)]), "stop"),
        (generation_pb2.SamplingParams(stop=[""]), "stop"),
    ],
)
def test_out_of_range_sampling_fields_are_rejected_with_the_field_named(stack, params, fragment):
    with pytest.raises(InvalidRequestError, match=fragment):
        build_request(generate_request(params), stack.encoder, "tiny", stack.engine.max_context_tokens)


# ---- the same at the gRPC edge of a real worker process ---------------------------------------


@pytest.fixture(scope="module")
def worker_stub(tiny_model_dir, tmp_path_factory):
    from support.ports import free_port
    from support.processes import start_service

    port = free_port()
    settings_ = {
        "model": tiny_model_dir,
        "port": port,
        "worker_id": "w-edges",
        "engine.page_size": 4,
        "engine.max_context_tokens": MAX_CONTEXT,
    }
    args = [arg for key, value in settings_.items() for arg in ("--set", f"{key}={value}")]
    service = start_service(
        "radixfair_worker", args, f"127.0.0.1:{port}", tmp_path_factory.mktemp("w") / "worker.log"
    )
    with grpc.insecure_channel(service.address) as channel:
        yield worker_pb2_grpc.WorkerServiceStub(channel)
    service.stop()


def stream(stub, params: generation_pb2.SamplingParams) -> tuple[str, generation_pb2.GenerationResult]:
    text, result = [], None
    for message in stub.Generate(generate_request(params), timeout=120):
        if message.HasField("delta"):
            text.append(message.delta.text)
        else:
            result = message.result
    return "".join(text), result


@given(params=sampling_params())
@settings(max_examples=20)
@example(params=generation_pb2.SamplingParams(temperature=1e-40, stop=["@" * 20]))
@example(params=generation_pb2.SamplingParams(temperature=math.nan))
def test_the_worker_answers_any_sampling_params_with_a_result_or_invalid_argument(worker_stub, params):
    if not documented_valid(params):
        with pytest.raises(grpc.RpcError) as refused:
            stream(worker_stub, params)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        return
    text, result = stream(worker_stub, params)
    assert result is not None and result.finish_reason in (
        generation_pb2.FINISH_REASON_STOP,
        generation_pb2.FINISH_REASON_LENGTH,
    )
    assert text == result.text


def test_the_stream_keeps_held_back_text_when_a_stop_id_ends_it(worker_stub, stack):
    # The case at the edge: a long stop string holds text back when a stop id (like EOS) ends it.
    reference = greedy(PROMPT, 10, uuid.uuid4().hex, ignore_eos=True)
    run_to_completion(stack.engine, [reference])
    params = generation_pb2.SamplingParams(stop=["@" * 20], stop_token_ids=[reference.output_ids[6]])

    text, result = stream(worker_stub, params)

    assert result.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert result.text and text == result.text
