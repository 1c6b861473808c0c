"""The worker's gRPC API on a real worker process over loopback."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from radixfair.prefix_hash import matched_prefix_tokens
from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc


@pytest.fixture(scope="module")
def worker(tiny_model_dir, tmp_path_factory):
    from support.ports import free_port
    from support.processes import start_service

    port, metrics_port = free_port(), free_port()
    settings = {
        "model": tiny_model_dir,
        "port": port,
        "worker_id": "w-test",
        "metrics_port": metrics_port,
        "engine.page_size": 8,
        "engine.max_context_tokens": 512,
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


def text_request(text: str, client: str = "alice", **sampling) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        client_id=client,
        prompt=generation_pb2.Prompt(text=text),
        sampling=generation_pb2.SamplingParams(**sampling),
    )


def collect(stub, request, timeout=60):
    deltas, result = [], None
    for message in stub.Generate(request, timeout=timeout):
        if message.HasField("delta"):
            deltas.append(message.delta)
        else:
            result = message.result
    return deltas, result


def test_generate_streams_deltas_then_a_result_with_usage(stub):
    deltas, result = collect(stub, text_request("Once upon a time", max_tokens=12, ignore_eos=True))
    # A consumer that falls behind the step rate gets several tokens in one message (coalesced
    # deltas, issue 11), so the count of messages depends on timing; the tokens do not.
    assert 1 <= len(deltas) <= 12
    assert sum(len(d.token_ids) for d in deltas) == 12
    assert result.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert result.usage.completion_tokens == 12
    assert result.usage.prompt_tokens > 0
    assert "".join(d.text for d in deltas) == result.text
    assert result.worker_id == "w-test"
    assert result.timings.total_ms >= result.timings.time_to_first_token_ms > 0


def test_chat_prompt_uses_the_models_template_and_reports_cache_hits(stub):
    chat = generation_pb2.ChatPrompt(
        messages=[
            generation_pb2.ChatMessage(role="system", content="You are a helpful assistant. " * 8),
            generation_pb2.ChatMessage(role="user", content="Hi there"),
        ]
    )
    request = worker_pb2.GenerateRequest(
        client_id="bob",
        prompt=generation_pb2.Prompt(chat=chat),
        sampling=generation_pb2.SamplingParams(max_tokens=4, ignore_eos=True),
    )
    _, first = collect(stub, request)
    _, second = collect(stub, request)
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 8


@pytest.mark.parametrize(
    "request_message, fragment",
    [
        (text_request(""), "empty"),
        (text_request("hello", max_tokens=0), "max_tokens"),
        (text_request("hello", max_tokens=-3), "max_tokens"),
        (text_request("hello", top_p=1.5), "top_p"),
        (text_request("hello", top_p=0.0), "top_p"),
        (text_request("hello", temperature=-1.0), "temperature"),
        (text_request("hello", client=""), "client_id"),
        (worker_pb2.GenerateRequest(client_id="alice"), "prompt"),
        (
            worker_pb2.GenerateRequest(
                client_id="alice",
                prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=[1] * 600)),
            ),
            "context",
        ),
        (
            worker_pb2.GenerateRequest(
                client_id="alice",
                prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=[10**7])),
            ),
            "vocabulary",
        ),
        (
            worker_pb2.GenerateRequest(
                client_id="alice",
                prompt=generation_pb2.Prompt(
                    chat=generation_pb2.ChatPrompt(
                        messages=[generation_pb2.ChatMessage(role="wizard", content="x")]
                    )
                ),
            ),
            "role",
        ),
        (
            worker_pb2.GenerateRequest(
                client_id="alice", model="other-model", prompt=generation_pb2.Prompt(text="hi")
            ),
            "model",
        ),
    ],
)
def test_bad_input_gets_invalid_argument_and_the_worker_keeps_serving(stub, request_message, fragment):
    with pytest.raises(grpc.RpcError) as caught:
        collect(stub, request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()
    _, result = collect(stub, text_request("still fine", max_tokens=2, ignore_eos=True))
    assert result.usage.completion_tokens == 2


def test_malformed_bytes_get_a_clear_status(worker):
    with grpc.insecure_channel(worker.address) as channel:
        raw = channel.unary_stream(
            "/radixfair.v1.WorkerService/Generate",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(b"\xff\xff\xff\xff", timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in caught.value.details()
    with grpc.insecure_channel(worker.address) as channel:
        _, result = collect(worker_pb2_grpc.WorkerServiceStub(channel), text_request("ok", max_tokens=1))
    assert result.usage.completion_tokens == 1


def test_cancelling_a_stream_frees_its_pages_and_logs_no_error(worker, stub):
    before = stub.GetLoadReport(worker_pb2.GetLoadReportRequest()).report
    call = stub.Generate(text_request("A long story " * 10, max_tokens=400, ignore_eos=True), timeout=60)
    next(call), next(call)
    running = stub.GetLoadReport(worker_pb2.GetLoadReportRequest()).report
    assert running.running_requests == 1
    logged_before = len(worker.log())
    call.cancel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        report = stub.GetLoadReport(worker_pb2.GetLoadReportRequest()).report
        if report.running_requests == 0:
            break
        time.sleep(0.1)
    assert report.running_requests == 0 and report.running_tokens == 0
    # Pages of the cancelled request went back; only whole pages it cached stay in the tree.
    assert report.free_pages >= before.free_pages - (len("A long story " * 10) // 8 + 2)
    # A hang-up is a normal end of a stream: no ERROR line, no traceback (issue 12, observability).
    log = worker.log()[logged_before:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_load_report_digest_tells_a_router_what_is_cached(stub):
    prompt = list(range(1000, 1040))
    request = worker_pb2.GenerateRequest(
        client_id="carol",
        prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=prompt)),
        sampling=generation_pb2.SamplingParams(max_tokens=2, ignore_eos=True),
    )
    collect(stub, request)
    time.sleep(0.5)  # the digest is refreshed at most every 250 ms
    report = stub.GetLoadReport(worker_pb2.GetLoadReportRequest()).report
    assert report.page_size == 8
    assert matched_prefix_tokens(prompt, report.page_size, set(report.cached_prefix_hashes)) == 40
    assert report.client_service["carol"] > 0


def test_health_and_reflection_are_served(worker):
    with grpc.insecure_channel(worker.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="radixfair.v1.WorkerService"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"radixfair.v1.WorkerService", "grpc.health.v1.Health"} <= names


def test_full_queue_gets_resource_exhausted(one_slot_worker):
    service = one_slot_worker
    codes: list[grpc.StatusCode] = []
    completed: list[int] = []

    def call() -> None:
        with grpc.insecure_channel(service.address) as channel:
            try:
                _, result = collect(
                    worker_pb2_grpc.WorkerServiceStub(channel),
                    text_request("busy " * 20, max_tokens=60, ignore_eos=True),
                )
                completed.append(result.usage.completion_tokens)
            except grpc.RpcError as error:
                codes.append(error.code())

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert completed and all(n == 60 for n in completed)


def test_prometheus_metrics_count_requests_tokens_and_latency(worker, stub):
    import urllib.request

    collect(stub, text_request("metrics please", client="dave", max_tokens=5, ignore_eos=True))
    stub.GetLoadReport(worker_pb2.GetLoadReportRequest())
    body = urllib.request.urlopen(worker.metrics_url, timeout=5).read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['radixfair_worker_requests_total{client="dave",finish_reason="length"}'] == 1
    assert samples['radixfair_worker_tokens_total{client="dave",kind="completion"}'] == 5
    assert samples['radixfair_worker_time_to_first_token_seconds_count{client="dave"}'] >= 1
    assert samples['radixfair_worker_inter_token_latency_seconds_count{client="dave"}'] >= 4
    assert samples['radixfair_worker_client_service{client="dave"}'] > 0
    assert "radixfair_worker_cache_hit_rate" in samples and "radixfair_worker_queue_depth" in samples
    # The default policy is DLPM: its deficits and quantum are exported.
    assert 'radixfair_worker_dlpm_deficit{client="dave"}' in samples
    assert samples["radixfair_worker_dlpm_quantum"] == 1024
    # The engine loop's step counters, as of the load report above: dave's 5 tokens took a prefill
    # step and 4 decode steps at least (earlier tests' requests on this worker add to them).
    steps, prefills = (
        samples["radixfair_worker_engine_steps_total"],
        samples["radixfair_worker_engine_prefill_steps_total"],
    )
    assert steps >= 5 and 1 <= prefills <= steps
    assert samples["radixfair_worker_engine_sampled_rows_total"] >= 5
    waited, stepping = (
        samples["radixfair_worker_engine_device_wait_seconds_total"],
        samples["radixfair_worker_engine_step_seconds_total"],
    )
    assert 0 <= waited <= stepping and stepping > 0
    # The front's event-loop lag, sampled every 50 ms since it started serving.
    assert samples["radixfair_worker_event_loop_lag_seconds_count"] >= 1


def test_watch_load_report_pushes_reports_at_the_interval(stub):
    stream = stub.WatchLoadReport(worker_pb2.WatchLoadReportRequest(interval_ms=100), timeout=10)
    reports = [next(stream).report for _ in range(3)]
    stream.cancel()
    assert all(r.worker_id == "w-test" and r.total_pages > 0 for r in reports)


def test_watch_load_report_rejects_a_negative_interval(stub):
    with pytest.raises(grpc.RpcError) as caught:
        next(stub.WatchLoadReport(worker_pb2.WatchLoadReportRequest(interval_ms=-5), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
