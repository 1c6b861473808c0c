"""Raw HTTP against the router's OpenAI-compatible API: SSE framing, hang-ups, bad bodies, status codes.

What the SDK hides is checked on the wire with httpx: the event-stream framing, the JSON error
shape, 429 with Retry-After when the worker's queue is full, 503 with no worker, and a client that
disconnects mid-stream, whose request the worker then stops, freeing its pages.
"""

from __future__ import annotations

import itertools
import json
import threading
import time

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.http_router import http_router
from support.metrics_scrape import scrape
from support.ports import free_port
from support.router_stack import CLIENTS, start_worker_process

from radixfair.auth import ApiKeyConfig, AuthConfig
from radixfair.v1 import worker_pb2, worker_pb2_grpc

AUTH = {"Authorization": f"Bearer {CLIENTS['alice'][0]}"}
# Tenants of the narrow worker's tests, so their usage is theirs alone.
LEAVER, QUEUER = ("http-leaver", "key-http-leaver"), ("http-queuer", "key-http-queuer")
# Generous bound on every wait (a loaded 2-core machine); the conditions are events, not times.
WAIT_S = 60.0
_unique = itertools.count()


def fresh_text(words: int = 10) -> str:
    n = next(_unique)
    return " ".join(f"raw{n}z{i}" for i in range(words))


@pytest.fixture(scope="module")
def api(tiny_model_dir, two_workers):
    with http_router(tiny_model_dir, two_workers) as router:
        yield router


@pytest.fixture(scope="module")
def model(api) -> str:
    return httpx.get(f"{api.base_url}/models", headers=AUTH, timeout=30).json()["data"][0]["id"]


@pytest.fixture(scope="module")
def narrow_worker(tiny_model_dir, tmp_path_factory):
    """One request running and one waiting at most, with its /metrics endpoint on."""
    metrics_port = free_port()
    worker = start_worker_process(
        tiny_model_dir,
        tmp_path_factory.mktemp("narrow-worker"),
        metrics_port=metrics_port,
        **{"engine.max_running_requests": 1, "engine.max_waiting_requests": 1},
    )
    worker.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def narrow(tiny_model_dir, narrow_worker):
    keys = [ApiKeyConfig(key, cid, weight) for cid, (key, weight) in CLIENTS.items()]
    keys += [ApiKeyConfig(key, cid) for cid, key in (LEAVER, QUEUER)]
    with http_router(tiny_model_dir, [narrow_worker], auth=AuthConfig(tuple(keys))) as router:
        yield router


def post(api, path: str, body: object, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**AUTH, "Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(f"{api.base_url}{path}", content=content, headers=headers, timeout=120, **kwargs)


def events(raw: str) -> list[str]:
    """The data of each SSE event; asserts the framing: ``data: <line>`` blocks, blank-line separated."""
    assert raw.endswith("\n\n"), raw[-200:]
    blocks = raw[:-2].split("\n\n")
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks), blocks
    return [block[len("data: ") :] for block in blocks]


def test_a_streamed_chat_is_framed_as_server_sent_events_ending_with_done(api, model):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": fresh_text()}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
        "some_future_field": {"ignored": True},
    }
    reply = post(api, "/chat/completions", body)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    data = events(reply.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["id"] for c in chunks} == {f"chatcmpl-{reply.headers['x-request-id']}"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *with_choice, usage = chunks
    finishes = [c["choices"][0]["finish_reason"] for c in with_choice]
    assert finishes[:-1] == [None] * (len(finishes) - 1) and finishes[-1] in ("stop", "length")
    assert all(c["usage"] is None for c in with_choice)
    assert usage["choices"] == [] and 1 <= usage["usage"]["completion_tokens"] <= 6
    assert set(usage["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
    }


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"model": "x", "messages": [', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"model": "x"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n=2"),
        ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ],
)
def test_a_bad_body_is_a_400_in_openai_error_shape_naming_the_problem(api, body, named):
    reply = post(api, "/chat/completions", body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and named in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}


def test_a_wrong_key_is_a_401_and_an_unknown_path_a_404_in_the_same_shape(api):
    reply = post(api, "/completions", {"prompt": "hi"}, headers={"Authorization": "Bearer nope"})
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.get(f"{api.base_url}/no/such/path", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_health_and_metrics_are_served_on_the_http_port(api, model):
    root = api.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health", timeout=30).json() == {"status": "serving", "healthy_workers": 2}
    before = scrape(f"{root}/metrics").value("radixfair_router_requests_total", client="bob", outcome="ok")
    headers = {"Authorization": f"Bearer {CLIENTS['bob'][0]}"}
    assert post(
        api, "/completions", {"model": model, "prompt": fresh_text(), "max_tokens": 2}, headers=headers
    )
    api.call(api.running.router.drain())
    after = scrape(f"{root}/metrics").value("radixfair_router_requests_total", client="bob", outcome="ok")
    assert after == before + 1


def test_no_worker_is_a_503_with_retry_after(tiny_model_dir):
    with http_router(tiny_model_dir, []) as router:
        reply = post(router, "/completions", {"prompt": "hi", "max_tokens": 1})
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert reply.json()["error"]["type"] == "service_unavailable"


def load_report(worker) -> worker_pb2.LoadReport:
    with grpc.insecure_channel(worker.address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        return stub.GetLoadReport(worker_pb2.GetLoadReportRequest(), timeout=30).report


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


def long_stream(router, tenant, started: threading.Event, leave: threading.Event) -> None:
    """A completion of up to 900 tokens; reads its first events, then hangs up when ``leave`` is set."""
    body = {"prompt": fresh_text(), "max_tokens": 900, "stream": True, "temperature": 1.0, "ignore_eos": True}
    headers = {**AUTH, "Authorization": f"Bearer {tenant[1]}"}
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", f"{router.base_url}/completions", json=body, headers=headers) as reply:
            assert reply.status_code == 200
            lines = reply.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            started.set()
            leave.wait(WAIT_S)
    # Leaving the block closed the connection mid-stream: the client hung up.


def test_a_client_hanging_up_mid_stream_cancels_the_request_on_the_worker_and_frees_its_pages(
    narrow, narrow_worker
):
    worker_before = scrape(narrow_worker.metrics_url)
    started, leave = threading.Event(), threading.Event()
    leave.set()  # hang up right after the first event
    long_stream(narrow, LEAVER, started, leave)
    assert started.is_set()

    def stopped() -> bool:
        # The server counts the hang-up at once; the engine lets the request go at its next step.
        cancelled = scrape(narrow_worker.metrics_url).value("radixfair_worker_cancelled_requests_total")
        report = load_report(narrow_worker)
        counted = cancelled == worker_before.value("radixfair_worker_cancelled_requests_total") + 1
        return counted and report.running_requests == 0 and report.running_tokens == 0

    wait_until(stopped, "the worker counting the request cancelled and letting it go")
    report = load_report(narrow_worker)
    worker_after = scrape(narrow_worker.metrics_url)
    # Every page is free or holds cached prefix only: none is held by a request any more.
    cached = worker_after.value("radixfair_worker_cached_kv_pages")
    assert cached + report.free_pages == report.total_pages
    narrow.call(narrow.running.router.drain())
    [leaver] = [r for r in narrow.call(narrow.running.ledger.snapshot()) if r.client_id == LEAVER[0]]
    # The router booked what it relayed before the hang-up: far below the 900 asked for.
    assert leaver.inflight == 0 and 1 <= leaver.completion_tokens < 900
    metrics = scrape(f"{narrow.base_url.removesuffix('/v1')}/metrics")
    assert metrics.value("radixfair_router_requests_total", client=LEAVER[0], outcome="cancelled") == 1


def test_a_full_worker_queue_is_a_429_with_retry_after(narrow, narrow_worker):
    leave = threading.Event()
    running_started, waiting_started = threading.Event(), threading.Event()
    running = threading.Thread(target=long_stream, args=(narrow, QUEUER, running_started, leave))
    waiting = threading.Thread(target=long_stream, args=(narrow, QUEUER, waiting_started, leave))
    running.start()
    try:
        assert running_started.wait(WAIT_S)
        waiting.start()
        wait_until(lambda: load_report(narrow_worker).queue_length == 1, "the second request queued")
        headers = {"Authorization": f"Bearer {QUEUER[1]}"}
        reply = post(narrow, "/completions", {"prompt": "hi", "max_tokens": 1}, headers=headers)
    finally:
        leave.set()
        running.join(WAIT_S)
        waiting.join(WAIT_S)
    assert reply.status_code == 429 and reply.headers["retry-after"] == "1"
    error = reply.json()["error"]
    assert error["type"] == "rate_limit_error" and "capacity" in error["message"]


@pytest.mark.parametrize(
    ("prompt", "named"),
    [
        ([], "prompt is empty"),
        ([1, 2**40], "token ids must be in"),
        ([1, 10**6], "out of vocabulary range"),
        (["one", "two"], "batch of 2"),
    ],
)
def test_a_completion_prompt_radixfair_cannot_serve_is_a_400_naming_it(api, prompt, named):
    reply = post(api, "/completions", {"prompt": prompt, "max_tokens": 1})
    assert reply.status_code == 400 and named in reply.json()["error"]["message"], reply.text


def test_an_http_request_is_traced_as_a_grpc_one_under_the_callers_traceparent(tiny_model_dir, two_workers):
    spans = InMemorySpanExporter()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    with http_router(tiny_model_dir, two_workers, span_exporter=spans) as router:
        body = {"messages": [{"role": "user", "content": fresh_text()}], "max_tokens": 2, "ignore_eos": True}
        assert post(router, "/chat/completions", body, headers=headers).status_code == 200
        router.call(router.running.router.drain())
    by_name = {s.name: s for s in spans.get_finished_spans()}
    server, route, forward = by_name["router.generate"], by_name["router.route"], by_name["router.forward"]
    assert server.parent.span_id == int(parent_id, 16)
    assert {s.context.trace_id for s in (server, route, forward)} == {int(trace_id, 16)}
    assert route.parent.span_id == forward.parent.span_id == server.context.span_id
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["radixfair.front_door"] == "http"
    assert server.attributes["radixfair.client_id"] == "alice"
    assert forward.attributes["gen_ai.usage.output_tokens"] == 2
