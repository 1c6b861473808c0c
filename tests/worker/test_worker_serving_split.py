"""The worker's serving path on a real worker process: its own request ids, and its engine process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc


@pytest.fixture(scope="module")
def worker(tiny_model_dir, tmp_path_factory):
    from support.ports import free_port
    from support.processes import start_service

    port = free_port()
    settings = {
        "model": tiny_model_dir,
        "port": port,
        "engine.page_size": 8,
        "engine.max_context_tokens": 512,
    }
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    service = start_service("radixfair_worker", args, f"127.0.0.1:{port}", log)
    yield service
    service.stop()


def token_request(
    prompt: list[int], max_tokens: int, client: str, request_id: str = "", **sampling
) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=request_id,
        client_id=client,
        prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=prompt)),
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True, **sampling),
    )


def collect(address: str, request: worker_pb2.GenerateRequest) -> tuple[list[int], str, object]:
    """Token ids and text of the stream, and its result; one channel per call (one client each)."""
    ids, text, result = [], "", None
    with grpc.insecure_channel(address) as channel:
        for message in worker_pb2_grpc.WorkerServiceStub(channel).Generate(request, timeout=120):
            if message.HasField("delta"):
                ids += message.delta.token_ids
                text += message.delta.text
            else:
                result = message.result
    return ids, text, result


def load_report(address: str) -> worker_pb2.LoadReport:
    with grpc.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        return stub.GetLoadReport(worker_pb2.GetLoadReportRequest(), timeout=30).report


def run_together(calls) -> list:
    """Runs the calls on threads released at the same moment; returns their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except grpc.RpcError as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads), "a stream hung"
    return results


@pytest.mark.parametrize("copies", [2, 3])
def test_requests_sharing_a_caller_request_id_each_get_their_own_output(worker, copies):
    # Different prompt lengths and token budgets, and seeded sampling: a request that saw another's
    # tokens, or shared its random generator, ends with the wrong ids, count or length.
    requests = [
        token_request(
            [2000 + 100 * copies + 10 * i + j for j in range(12 + 5 * i)],
            6 + 4 * i,
            client=f"tenant-{i}",
            request_id="same-id",
            temperature=1.0,
            seed=7,
        )
        for i in range(copies)
    ]
    alone = [collect(worker.address, request) for request in requests]
    baseline = load_report(worker.address)

    together = run_together([lambda r=r: collect(worker.address, r) for r in requests])

    for request, (ids, text, result), (solo_ids, _, _) in zip(requests, together, alone):
        assert ids == solo_ids
        assert len(ids) == result.usage.completion_tokens == request.sampling.max_tokens
        assert result.usage.prompt_tokens == len(request.prompt.token_ids.ids)
        assert text == result.text
    after = load_report(worker.address)
    assert after.running_requests == 0 and after.queue_length == 0 and after.running_tokens == 0
    # The same prompts and outputs as the solo runs: the cache holds the same pages, nothing leaked.
    assert after.free_pages == baseline.free_pages


def test_cancelling_one_of_two_requests_with_the_same_caller_id_leaves_the_other_running(worker):
    long_one = token_request([3100 + j for j in range(20)], 300, client="canceller", request_id="dup")
    other = token_request([3300 + j for j in range(16)], 24, client="keeper", request_id="dup")
    with grpc.insecure_channel(worker.address) as first, grpc.insecure_channel(worker.address) as second:
        cancelled = worker_pb2_grpc.WorkerServiceStub(first).Generate(long_one, timeout=120)
        next(cancelled)
        kept = worker_pb2_grpc.WorkerServiceStub(second).Generate(other, timeout=120)
        messages = [next(kept)]  # both are running now
        cancelled.cancel()
        messages += list(kept)
    ids = [t for m in messages if m.HasField("delta") for t in m.delta.token_ids]
    result = messages[-1].result
    assert len(ids) == result.usage.completion_tokens == 24
    assert result.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == result.text


def engine_pid(worker_pid: int) -> int:
    """The worker's engine process: its child started by multiprocessing's spawn."""
    children = []
    for task in Path(f"/proc/{worker_pid}/task").iterdir():  # any thread may have started it
        children += map(int, (task / "children").read_text().split())
    for child in children:
        if "spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
            return child
    raise AssertionError(f"worker {worker_pid} has no engine process among {children}")


def is_gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status  # exited; only its parent's reaping is left


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="radixfair.v1.WorkerService")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_a_worker_that_loses_its_engine_fails_streams_with_unavailable_and_reports_not_serving(
    tiny_model_dir, start_worker
):
    service = start_worker(tiny_model_dir)
    with grpc.insecure_channel(service.address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        call = stub.Generate(token_request([4000 + j for j in range(16)], 400, client="victim"), timeout=120)
        next(call)
        os.kill(engine_pid(service.process.pid), signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        wait_for(
            lambda: health_status(service.address) == health_pb2.HealthCheckResponse.NOT_SERVING,
            "NOT_SERVING",
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(token_request([5, 6, 7], 2, client="late"), timeout=30))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as no_report:
            stub.GetLoadReport(worker_pb2.GetLoadReportRequest(), timeout=30)
        assert no_report.value.code() == grpc.StatusCode.UNAVAILABLE
    assert service.process.poll() is None  # the front keeps answering


def test_the_engine_process_does_not_outlive_a_killed_worker(tiny_model_dir, start_worker):
    service = start_worker(tiny_model_dir)
    engine = engine_pid(service.process.pid)
    service.kill()
    wait_for(lambda: is_gone(engine), "the engine process to exit")


def test_a_long_text_prompt_is_tokenized_off_the_event_loop_and_judged_like_any_other(worker):
    huge = worker_pb2.GenerateRequest(
        client_id="verbose", prompt=generation_pb2.Prompt(text="many words here " * 20000)
    )
    fits = worker_pb2.GenerateRequest(
        client_id="verbose",
        prompt=generation_pb2.Prompt(text="long enough to go off the loop " + " " * 20000 + "end"),
        sampling=generation_pb2.SamplingParams(max_tokens=3, ignore_eos=True),
    )
    with pytest.raises(grpc.RpcError) as caught:
        collect(worker.address, huge)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context" in caught.value.details()
    ids, text, result = collect(worker.address, fits)
    assert len(ids) == result.usage.completion_tokens == 3 and text == result.text


def test_an_engine_that_cannot_start_is_said_in_one_line_and_the_worker_exits(tiny_model_dir):
    from support.ports import free_port

    settings = {"model": tiny_model_dir, "port": free_port(), "engine.backend": "nope"}
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    done = subprocess.run(
        [sys.executable, "-m", "radixfair_worker", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("radixfair-worker: error: engine failed to start") and "'nope'" in last


def test_the_serving_front_never_imports_torch():
    # Only the engine process holds the model; the front stays small and starts fast.
    check = "import sys, radixfair_worker.__main__; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


class CountingEncoder:
    """The real tokenizer's PromptEncoder, counting how often the front asks its vocabulary size."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self.vocab_size_reads = 0

    @property
    def vocab_size(self) -> int:
        self.vocab_size_reads += 1
        return self._encoder.vocab_size

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)


@pytest.fixture(scope="module")
def prompt_encoder(tiny_model_dir):
    """One real PromptEncoder for the module: reading tokenizer.json costs a second per load, and a
    request never changes it, so each CountingEncoder wraps this one with a count of its own."""
    from radixfair.tokenization import PromptEncoder

    return PromptEncoder(Path(tiny_model_dir))


@pytest.fixture(scope="module")
def vocab_size(prompt_encoder) -> int:
    return prompt_encoder.vocab_size


@given(data=st.data())
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_token_id_prompt_is_taken_as_is_or_refused_naming_its_first_out_of_range_ids(
    prompt_encoder, vocab_size, data
):
    from radixfair.errors import InvalidRequestError
    from radixfair_worker.request_builder import build_request

    ids = data.draw(st.lists(st.integers(0, vocab_size + 3), min_size=1, max_size=1200))
    message = token_request(ids, 4, "tenant")
    bad = [t for t in ids if t >= vocab_size]
    if bad:
        with pytest.raises(InvalidRequestError) as caught:
            build_request(message, CountingEncoder(prompt_encoder), "m", 4096)
        assert str(bad[:5]) in str(caught.value) and f"[0, {vocab_size})" in str(caught.value)
    else:
        assert build_request(message, CountingEncoder(prompt_encoder), "m", 4096).prompt_ids == ids


@pytest.mark.parametrize("length", [1, 1088])
def test_the_front_asks_the_vocabulary_size_a_fixed_number_of_times_whatever_the_prompt_length(
    prompt_encoder, vocab_size, length
):
    # The serving profile (bench/engine/serving_profile.py) found it asked once per prompt id, on the
    # event loop.
    from radixfair_worker.request_builder import build_request

    encoder = CountingEncoder(prompt_encoder)
    build_request(token_request([vocab_size - 1] * length, 4, "tenant"), encoder, "m", 4096)
    assert encoder.vocab_size_reads <= 2


def test_a_long_token_prompt_with_one_id_past_the_vocabulary_is_refused_and_one_at_its_edge_served(
    worker, vocab_size
):
    edge = [0] + [1000 + i for i in range(398)] + [vocab_size - 1]
    with pytest.raises(grpc.RpcError) as caught:
        collect(worker.address, token_request(edge[:-1] + [vocab_size], 2, "edgy"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"[{vocab_size}]" in caught.value.details()
    ids, _, result = collect(worker.address, token_request(edge, 2, "edgy"))
    assert len(ids) == 2 and result.usage.prompt_tokens == len(edge)


def test_text_made_by_the_front_equals_the_text_the_engine_makes(worker):
    # No stop strings: the front detokenizes. A stop string that never appears keeps the text in the
    # engine. Same greedy ids, so the two texts must be byte-identical, each equal to its result's.
    prompt = [6100 + j for j in range(10)]
    never = "@" * 20
    front_ids, front_text, front_result = collect(worker.address, token_request(prompt, 16, "front"))
    engine_ids, engine_text, engine_result = collect(
        worker.address, token_request(prompt, 16, "engine", stop=[never])
    )
    assert front_ids == engine_ids and len(front_ids) == 16
    assert front_text.encode() == engine_text.encode() == front_result.text.encode()
    assert engine_result.text == engine_text

    # Ended by a stop token id: its text is never output, wherever the text is made.
    stop_id = front_ids[5]
    stopped = [
        collect(worker.address, token_request(prompt, 16, "front", stop_token_ids=[stop_id])),
        collect(worker.address, token_request(prompt, 16, "engine", stop_token_ids=[stop_id], stop=[never])),
    ]
    (ids_a, text_a, result_a), (ids_b, text_b, result_b) = stopped
    assert ids_a == ids_b == front_ids[: front_ids.index(stop_id) + 1]
    assert result_a.finish_reason == result_b.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert text_a.encode() == text_b.encode() == result_a.text.encode() == result_b.text.encode()


def test_a_worker_whose_engine_loop_does_its_own_pipe_io_serves_what_the_threaded_one_does(
    worker, tiny_model_dir, start_worker
):
    """``engine_pipe_io: inline`` (one thread in the engine process): concurrent streams get the same
    tokens and text as from the default worker, and its engine process still ends with its front."""
    inline = start_worker(tiny_model_dir, **{"engine.page_size": 8, "engine.max_context_tokens": 512,
                                             "engine_pipe_io": "inline"})  # fmt: skip
    requests = [token_request([300 + 7 * i + j for j in range(5 + i)], 12 + 5 * i, f"c{i}") for i in range(4)]

    def served_by(address: str) -> list[tuple[list[int], str]]:
        results: list[tuple[list[int], str]] = [([], "")] * len(requests)

        def one(index: int) -> None:
            ids, text, result = collect(address, requests[index])
            assert result.usage.completion_tokens == len(ids)
            results[index] = (ids, text)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        return results

    expected = served_by(worker.address)
    assert [len(ids) for ids, _ in expected] == [12 + 5 * i for i in range(4)]
    assert served_by(inline.address) == expected
    engine = engine_pid(inline.process.pid)
    inline.kill()
    wait_for(lambda: is_gone(engine), "the inline engine process to exit")
