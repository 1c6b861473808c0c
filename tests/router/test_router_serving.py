"""The router in front of two real worker processes: streaming, booking, auth, bad input, routing choices."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest
from prometheus_client import generate_latest
from support.router_stack import client_for, router_config, running_router, wait_until, worker_id

from radixfair.prefix_hash import page_hashes
from radixfair.tokenization import ChatTurn
from radixfair.v1 import generation_pb2, router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

PAGE = 4
_prompt_ids = itertools.count(1000, 500)


def fresh_prefix(length: int = 64) -> list[int]:
    """Token ids no other test uses, so the shared workers' caches do not leak between tests."""
    start = next(_prompt_ids)
    return list(range(start, start + length))


async def warm_worker_directly(address: str, token_ids: list[int]) -> None:
    """Puts a prefix in one worker's cache without the router seeing it."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        request = worker_pb2.GenerateRequest(
            client_id="warmup",
            prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=token_ids)),
            sampling=generation_pb2.SamplingParams(max_tokens=1),
        )
        async for _ in stub.Generate(request):
            pass


async def wait_for_report_of(running, wid: str, token_ids: list[int]) -> None:
    last_page = page_hashes(token_ids, PAGE)[-1]

    def reported() -> bool:
        endpoint = running.registry.get(wid)
        return endpoint.last_report is not None and last_page in endpoint.last_report.cached_prefix_hashes

    await wait_until(reported, f"{wid} reporting the warmed prefix")


def test_generate_streams_deltas_then_a_result_and_books_exactly_what_was_served(
    two_workers, tiny_model_dir, redis_url
):
    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers, redis_url)) as running:
            async with client_for(running, "alice") as client:
                messages = [m async for m in client.stream(fresh_prefix(20), max_tokens=6, ignore_eos=True)]
            await running.router.drain()
            return (
                messages,
                await running.ledger.snapshot(),
                generate_latest(running.metrics.registry).decode(),
            )

    messages, ledger, metrics = asyncio.run(scenario())
    deltas, result = messages[:-1], messages[-1].result
    assert deltas and all(m.HasField("delta") for m in deltas)
    assert sum(len(m.delta.token_ids) for m in deltas) == result.usage.completion_tokens == 6
    assert result.worker_id in {worker_id(w) for w in two_workers}
    [alice] = [r for r in ledger if r.client_id == "alice"]
    assert (alice.requests, alice.prompt_tokens, alice.completion_tokens, alice.inflight) == (1, 20, 6, 0)
    # w_in * computed prompt tokens + w_out * output tokens
    expected = 1.0 * (20 - result.usage.cached_tokens) + 2.0 * 6
    assert alice.service == pytest.approx(expected)
    # Prometheus sees the same request: outcome, tokens, latency histograms, per-client service.
    assert 'radixfair_router_requests_total{client="alice",outcome="ok"} 1.0' in metrics
    assert 'radixfair_router_tokens_total{client="alice",kind="completion"} 6.0' in metrics
    assert 'radixfair_router_time_to_first_token_seconds_count{client="alice"} 1.0' in metrics
    assert "radixfair_router_inter_token_seconds_count" in metrics
    assert f'radixfair_router_client_service_total{{client="alice"}} {expected}' in metrics


def test_chat_and_text_prompts_are_tokenized_by_the_router(two_workers, tiny_model_dir):
    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers)) as running:
            async with client_for(running, "bob") as client:
                chat = await client.generate([ChatTurn("user", "Hi there")], max_tokens=3, ignore_eos=True)
                text = await client.generate("Hello world", max_tokens=3, ignore_eos=True)
            return chat, text

    chat, text = asyncio.run(scenario())
    assert chat.result.usage.prompt_tokens > text.result.usage.prompt_tokens > 0
    assert len(chat.token_ids) == len(text.token_ids) == 3


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ((), "missing 'authorization"),
        ((("authorization", "Bearer wrong-key"),), "invalid API key"),
        ((("authorization", "key-alice"),), "Bearer"),
        ((("x-client-id", "alice"),), "missing 'authorization"),
    ],
)
def test_calls_without_a_valid_key_are_unauthenticated_and_the_router_keeps_serving(
    two_workers, tiny_model_dir, metadata, expected
):
    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers)) as running:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                request = router_pb2.RouterServiceGenerateRequest(prompt=generation_pb2.Prompt(text="hi"))
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    async for _ in stub.Generate(request, metadata=metadata):
                        pass
                with pytest.raises(grpc.aio.AioRpcError) as status_failure:
                    await stub.GetStatus(router_pb2.GetStatusRequest(), metadata=metadata)
            async with client_for(running, "alice") as client:
                after = await client.generate("still serving", max_tokens=2, ignore_eos=True)
            return failure.value, status_failure.value, after

    error, status_error, after = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and expected in error.details()
    assert status_error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert after.result.usage.completion_tokens == 2


def _request(**fields) -> router_pb2.RouterServiceGenerateRequest:
    return router_pb2.RouterServiceGenerateRequest(**fields)


MALFORMED = {
    "no prompt": (_request(), "prompt is missing"),
    "empty text": (_request(prompt=generation_pb2.Prompt(text="")), "prompt is empty"),
    "empty chat": (_request(prompt=generation_pb2.Prompt(chat=generation_pb2.ChatPrompt())), "no messages"),
    "bad role": (
        _request(
            prompt=generation_pb2.Prompt(
                chat=generation_pb2.ChatPrompt(
                    messages=[generation_pb2.ChatMessage(role="robot", content="x")]
                )
            )
        ),
        "unknown chat role",
    ),
    "token out of vocab": (
        _request(prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=[1, 10_000_000]))),
        "out of vocabulary",
    ),
    "max_tokens 0": (
        _request(
            prompt=generation_pb2.Prompt(text="x"), sampling=generation_pb2.SamplingParams(max_tokens=0)
        ),
        "max_tokens must be > 0",
    ),
    "top_p 2": (
        _request(prompt=generation_pb2.Prompt(text="x"), sampling=generation_pb2.SamplingParams(top_p=2.0)),
        "top_p",
    ),
    "negative temperature": (
        _request(
            prompt=generation_pb2.Prompt(text="x"), sampling=generation_pb2.SamplingParams(temperature=-1)
        ),
        "temperature",
    ),
    "prompt beyond the context": (
        _request(prompt=generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=[5] * 2000))),
        "",
    ),
}


def test_malformed_requests_get_invalid_argument_and_the_router_keeps_serving(two_workers, tiny_model_dir):
    async def scenario():
        results = {}
        async with running_router(router_config(tiny_model_dir, two_workers)) as running:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                metadata = (("authorization", "Bearer key-alice"),)
                for name, (request, _) in MALFORMED.items():
                    try:
                        async for _ in stub.Generate(request, metadata=metadata, timeout=20):
                            pass
                        results[name] = None
                    except grpc.aio.AioRpcError as error:
                        results[name] = error
                # Raw bytes that are not a RouterServiceGenerateRequest at all.
                raw = channel.unary_stream("/radixfair.v1.RouterService/Generate")
                try:
                    async for _ in raw(b"\xff\xff\xff", metadata=metadata, timeout=20):
                        pass
                except grpc.aio.AioRpcError as error:
                    results["garbage bytes"] = error
            async with client_for(running, "alice") as client:
                after = await client.generate("still serving", max_tokens=2, ignore_eos=True)
            return results, after

    results, after = asyncio.run(scenario())
    for name, (_, message) in MALFORMED.items():
        error = results[name]
        assert error is not None, f"{name}: accepted"
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {error.code()} {error.details()}"
        assert message in error.details(), f"{name}: {error.details()}"
    assert results["garbage bytes"].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in results["garbage bytes"].details()
    assert after.result.usage.completion_tokens == 2


def test_cancelling_the_call_cancels_the_workers_request_and_books_what_was_streamed(
    two_workers, tiny_model_dir, redis_url
):
    async def scenario():
        async with running_router(router_config(tiny_model_dir, two_workers, redis_url)) as running:
            async with client_for(running, "carol") as client:
                stream = client.stream(fresh_prefix(8), max_tokens=900, ignore_eos=True)
                received = 0
                async for message in stream:
                    received += len(message.delta.token_ids)
                    if received >= 3:
                        break
                await stream.aclose()

            def workers_idle() -> bool:
                return all(
                    w.last_report is not None and w.last_report.running_requests == 0 and w.inflight == 0
                    for w in running.registry.all()
                )

            await wait_until(workers_idle, "the worker to drop the cancelled request", timeout_s=10)
            await running.router.drain()
            return received, await running.ledger.snapshot()

    received, ledger = asyncio.run(scenario())
    [carol] = [r for r in ledger if r.client_id == "carol"]
    assert carol.inflight == 0
    assert received <= carol.completion_tokens < 900


def test_cache_aware_follows_a_prefix_the_router_never_routed_learned_from_the_workers_report(
    two_workers, tiny_model_dir
):
    prefix = fresh_prefix(64)
    warm, cold = two_workers[1], two_workers[0]

    async def scenario():
        config = router_config(tiny_model_dir, two_workers, policy="cache_aware", cache_threshold=0.5)
        async with running_router(config) as running:
            await warm_worker_directly(warm.address, prefix)
            await wait_for_report_of(running, worker_id(warm), prefix)
            async with client_for(running, "alice") as client:
                hot = await client.generate(prefix + [7, 8, 9, 10], max_tokens=2, ignore_eos=True)
                new = await client.generate(fresh_prefix(64), max_tokens=2, ignore_eos=True)
            return hot.result, new.result

    hot, new = asyncio.run(scenario())
    assert hot.worker_id == worker_id(warm)
    assert hot.usage.cached_tokens >= 60
    # A prefix nobody holds goes to the worker with the smaller cache: not the warm one.
    assert new.worker_id == worker_id(cold)


def test_d2lpm_keeps_a_client_on_its_cached_worker_for_a_quantum_then_spreads_then_refills(
    two_workers, tiny_model_dir, redis_url
):
    prefix = fresh_prefix(64)
    warm, cold = worker_id(two_workers[0]), worker_id(two_workers[1])

    async def scenario():
        # Each request on the warm worker costs about 4 uncached tokens + 2 x 2 output tokens = 8.
        config = router_config(tiny_model_dir, two_workers, redis_url, policy="d2lpm", quantum=20.0)
        async with running_router(config) as running:
            await warm_worker_directly(two_workers[0].address, prefix)
            await wait_for_report_of(running, warm, prefix)
            served = []
            async with client_for(running, "bob") as client:
                for n in range(5):
                    output = await client.generate(prefix + [50 + n] * 4, max_tokens=2, ignore_eos=True)
                    served.append((output.result.worker_id, output.result.usage.cached_tokens))
                    await running.router.drain()  # book each request before routing the next
            ledger = {r.client_id: r for r in await running.ledger.snapshot()}
            return served, ledger["bob"]

    served, bob = asyncio.run(scenario())
    assert [w for w, _ in served] == [warm, warm, warm, cold, warm]
    assert all(cached >= 64 for w, cached in served if w == warm)
    assert served[3][1] == 0  # the cold worker recomputed the prefix: the price of spreading
    assert bob.deficits[warm] <= 20.0 and bob.deficits[cold] < 0
