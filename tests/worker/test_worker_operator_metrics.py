"""The worker's operator metrics, read from its real /metrics endpoint after real requests."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from support.metrics_scrape import scrape

from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc

PAGE_SIZE = 8
NUM_PAGES = 20
TTFT = "radixfair_worker_time_to_first_token_seconds_count"
INTER_TOKEN = "radixfair_worker_inter_token_latency_seconds_count"
DURATION = "radixfair_worker_request_duration_seconds_count"
REJECTED = "radixfair_worker_rejected_requests_total"
CANCELLED = "radixfair_worker_cancelled_requests_total"


@pytest.fixture(scope="module")
def worker(tiny_model_dir, tmp_path_factory):
    from support.ports import free_port
    from support.processes import start_service

    port, metrics_port = free_port(), free_port()
    settings = {
        "model": tiny_model_dir,
        "port": port,
        "worker_id": "w-metrics",
        "metrics_port": metrics_port,
        "metrics.max_client_labels": 1,
        # 20 pages of 8 tokens cannot hold four 40-90 token prompts growing by 48 tokens each.
        "engine.page_size": PAGE_SIZE,
        "engine.num_pages": NUM_PAGES,
        "engine.max_batched_tokens": 256,
    }
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    service = start_service("radixfair_worker", args, f"127.0.0.1:{port}", log)
    service.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    yield service
    service.stop()


@pytest.fixture
def stub(worker):
    with grpc.insecure_channel(worker.address) as channel:
        yield worker_pb2_grpc.WorkerServiceStub(channel)


def token_request(token_ids: list[int], client: str, **sampling) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        client_id=client,
        prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=token_ids)),
        sampling=generation_pb2.SamplingParams(**sampling),
    )


def result_of(stub, request) -> generation_pb2.GenerationResult:
    results = [m.result for m in stub.Generate(request, timeout=120) if m.HasField("result")]
    return results[0]


def wait_for(condition, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for: {what}")
        time.sleep(0.05)


def test_preemptions_queue_time_and_kv_pages_follow_the_requests(worker, stub):
    before = scrape(worker.metrics_url)
    prompts = [[(7 * i + j) % 4000 + 50 for j in range(40 + 9 * i)] for i in range(4)]
    results: list[generation_pb2.GenerationResult] = []

    def call(prompt: list[int]) -> None:
        results.append(result_of(stub, token_request(prompt, "pages", max_tokens=48, ignore_eos=True)))

    threads = [threading.Thread(target=call, args=(prompt,)) for prompt in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    report = stub.GetLoadReport(worker_pb2.GetLoadReportRequest()).report
    after = scrape(worker.metrics_url)

    assert len(results) == 4
    preempted = sum(r.timings.preemptions for r in results)
    assert preempted > 0  # the pool is too small for all four at once
    delta = after.value("radixfair_worker_preemptions_total") - before.value(
        "radixfair_worker_preemptions_total"
    )
    assert delta == preempted
    queued = "radixfair_worker_queue_time_seconds_count"
    assert after.value(queued) - before.value(queued) == 4
    assert after.value(DURATION, outcome="ok") - before.value(DURATION, outcome="ok") == 4
    assert after.value("radixfair_worker_total_kv_pages") == NUM_PAGES == report.total_pages
    cached = after.value("radixfair_worker_cached_kv_pages")
    # Finished requests leave their pages in the prefix cache; nothing else holds any.
    assert cached > 0 and cached + report.free_pages == NUM_PAGES


def test_latency_labels_stop_at_the_configured_client_bound(worker, stub):
    before = scrape(worker.metrics_url)
    for client in ("first-of-two", "second-of-two"):
        result_of(stub, token_request([5, 6, 7, 8], client, max_tokens=3, ignore_eos=True))
    after = scrape(worker.metrics_url)

    # One own label (whichever client came first on this worker); every later client is "other".
    labels = after.label_values(TTFT, "client")
    assert "other" in labels and len(labels) == 2
    assert "second-of-two" not in labels and "second-of-two" not in after.label_values(INTER_TOKEN, "client")
    total = sum(after.value(TTFT, client=c) - before.value(TTFT, client=c) for c in labels)
    assert total == 2
    assert after.value(TTFT, client="other") - before.value(TTFT, client="other") >= 1


def test_a_bad_argument_is_counted_as_an_invalid_argument_rejection(worker, stub):
    before = scrape(worker.metrics_url)
    with pytest.raises(grpc.RpcError) as bad:
        result_of(stub, token_request([1, 2, 3], "bad", max_tokens=-1))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(worker.metrics_url)

    reason = {"reason": "invalid_argument"}
    assert after.value(REJECTED, **reason) - before.value(REJECTED, **reason) == 1
    assert after.value(DURATION, outcome="error") - before.value(DURATION, outcome="error") == 1
    assert after.value(CANCELLED) == before.value(CANCELLED)


def test_a_caller_hanging_up_mid_stream_is_counted_cancelled(worker, stub):
    before = scrape(worker.metrics_url)
    call = stub.Generate(token_request([9, 10, 11, 12], "leaver", max_tokens=400, ignore_eos=True))
    next(call)  # a first token: the request is running
    call.cancel()

    def counted() -> bool:
        return scrape(worker.metrics_url).value(CANCELLED) == before.value(CANCELLED) + 1

    wait_for(counted, "the cancelled request counted")
    after = scrape(worker.metrics_url)
    assert after.value(DURATION, outcome="cancelled") - before.value(DURATION, outcome="cancelled") == 1
    assert sum(v for (name, _), v in after.samples.items() if name == REJECTED) == sum(
        v for (name, _), v in before.samples.items() if name == REJECTED
    )


def test_a_full_queue_is_counted_as_a_queue_full_rejection(one_slot_worker):
    service = one_slot_worker
    before = scrape(service.metrics_url)
    codes: list[grpc.StatusCode] = []

    def call() -> None:
        with grpc.insecure_channel(service.address) as channel:
            request = token_request(list(range(100, 140)), "busy", max_tokens=60, ignore_eos=True)
            try:
                result_of(worker_pb2_grpc.WorkerServiceStub(channel), request)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    after = scrape(service.metrics_url)

    def counted(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert refused > 0 and len(codes) == 6
    assert counted(REJECTED, reason="queue_full") == refused
    assert counted(DURATION, outcome="error") == refused
    assert counted(DURATION, outcome="ok") == codes.count(grpc.StatusCode.OK) == 6 - refused
