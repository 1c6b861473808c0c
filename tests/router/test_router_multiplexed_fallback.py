"""forward.worker_transport "multiplexed" in front of workers that cannot serve GenerateMultiplexed.

A router upgraded before its workers (a rolling upgrade) meets workers that answer UNIMPLEMENTED: they
must still serve, per request, with no error for the client. A worker whose multiplexed call fails at
its open for any other reason must cost the router a bounded number of calls, not one per request.

The worker here is a real gRPC server in front of a real worker process: it relays the old contract's
methods (Generate, GetLoadReport, WatchLoadReport, health) as bytes, and either has no
GenerateMultiplexed at all (gRPC itself answers UNIMPLEMENTED) or refuses it at the open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.router_stack import router_config, running_router, start_worker_process, stream_text

from radixfair_router.app import RunningRouter
from radixfair_router.config import RouterConfig
from radixfair_router.multiplexed_worker_call import REOPEN_CAP_S, reopen_delay

SECRET = "fallback-router-secret"
MULTIPLEXED = "/radixfair.v1.WorkerService/GenerateMultiplexed"
# The old contract: what a worker built before GenerateMultiplexed serves.
UNARY_STREAM = ("/radixfair.v1.WorkerService/Generate", "/radixfair.v1.WorkerService/WatchLoadReport")
UNARY_UNARY = ("/radixfair.v1.WorkerService/GetLoadReport", "/grpc.health.v1.Health/Check")
# Call metadata the relay must not pass on (set by gRPC itself on the next hop).
_HOP_KEYS = ("user-agent",)

# What the old-contract server does with a GenerateMultiplexed call: None, no such method.
MultiplexedHandler = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[bytes]] | None


@dataclass
class OldContractWorker(grpc.GenericRpcHandler):
    """Relays the old contract to a real worker at ``upstream``; counts the calls it is asked for."""

    upstream: grpc.aio.Channel
    multiplexed: MultiplexedHandler = None
    calls: dict[str, int] = field(default_factory=dict)
    address: str = ""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        self.calls[method] = self.calls.get(method, 0) + 1
        if method == MULTIPLEXED:
            if self.multiplexed is None:
                return None  # gRPC answers UNIMPLEMENTED, as a worker without the method does
            return grpc.stream_stream_rpc_method_handler(self.multiplexed)
        if method in UNARY_STREAM:
            streaming = self.upstream.unary_stream(method)

            async def relay_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
                async for reply in streaming(request, metadata=_passed_on(context)):
                    yield reply

            return grpc.unary_stream_rpc_method_handler(relay_stream)
        if method in UNARY_UNARY:
            unary = self.upstream.unary_unary(method)

            async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await unary(request, metadata=_passed_on(context))

            return grpc.unary_unary_rpc_method_handler(relay)
        return None


def _passed_on(context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
    return [
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not key.startswith(":") and not key.startswith("grpc-") and key not in _HOP_KEYS
    ]


@asynccontextmanager
async def old_contract_worker(upstream: str, multiplexed: MultiplexedHandler = None):
    """The old-contract server on a free loopback port, relaying to the worker at ``upstream``."""
    async with grpc.aio.insecure_channel(upstream) as channel:
        worker = OldContractWorker(channel, multiplexed)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((worker,))
        worker.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        try:
            yield worker
        finally:
            await server.stop(0)


async def text_of(running: RunningRouter, prompt: list[int], **options: Any) -> tuple[str, Any]:
    """One attempt only: a request the router sent again would hide a fallback that failed."""
    return await stream_text(running, prompt, max_attempts=1, **options)


@pytest.fixture(scope="module")
def signed_worker(tiny_model_dir, tmp_path_factory):
    worker = start_worker_process(
        tiny_model_dir, tmp_path_factory.mktemp("fallback-worker"), identity_secret=SECRET
    )
    yield worker
    worker.stop()


def configured(tokenizer_dir, addresses: list[str], transport: str, **forward: Any) -> RouterConfig:
    @dataclass
    class At:
        address: str

    config = router_config(tokenizer_dir, [At(a) for a in addresses])  # type: ignore[arg-type]
    return replace(
        config,
        forward=replace(config.forward, worker_transport=transport, identity_secret=SECRET, **forward),
    )


PROMPTS = [[400 + 7 * n, 401, 402, 403 + n] for n in range(6)]
SAMPLING: list[dict[str, Any]] = [
    {"max_tokens": 6 + n, "temperature": 0.0 if n % 2 else 0.9, "seed": 11 + n, "ignore_eos": True}
    for n in range(6)
]


def test_a_worker_without_generate_multiplexed_serves_every_request_per_request_with_the_same_text(
    signed_worker, tiny_model_dir, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="radixfair_router.multiplexed_worker_call")

    async def scenario():
        async with old_contract_worker(signed_worker.address) as old:
            # max_attempts=1: a request sent again after the fallback spends no attempt.
            multiplexed_config = configured(tiny_model_dir, [old.address], "multiplexed", max_attempts=1)
            per_request_config = configured(tiny_model_dir, [signed_worker.address], "per_request")
            async with (
                running_router(per_request_config) as per_request,
                running_router(multiplexed_config) as multiplexed,
            ):
                # First, all at once: several requests are on the first call when it fails.
                first = await asyncio.gather(
                    *(text_of(multiplexed, p, **s) for p, s in zip(PROMPTS, SAMPLING, strict=True))
                )
                # Then one by one on both routers, each prompt already cached, so both compute the same.
                pairs = []
                for prompt, sampling in zip(PROMPTS, SAMPLING, strict=True):
                    pairs.append(
                        (
                            await text_of(per_request, prompt, **sampling),
                            await text_of(multiplexed, prompt, **sampling),
                        )
                    )
                fallbacks = multiplexed.metrics.registry.get_sample_value(
                    "radixfair_router_worker_transport_fallbacks_total",
                    {"worker": multiplexed.registry.all()[0].worker_id},
                )
                return first, pairs, dict(old.calls), fallbacks

    first, pairs, calls, fallbacks = asyncio.run(scenario())
    for (text, result), sampling in zip(first, SAMPLING, strict=True):
        assert text == result.text and result.usage.completion_tokens == sampling["max_tokens"]
    for (expected, _), (text, result) in pairs:
        assert text == expected == result.text
    # One GenerateMultiplexed call was tried, then every request went as a Generate call.
    assert calls[MULTIPLEXED] == 1
    assert calls["/radixfair.v1.WorkerService/Generate"] == len(first) + len(pairs)
    warnings = [r for r in caplog.records if "does not implement GenerateMultiplexed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert fallbacks == 1.0


async def refuse_at_open(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "this worker refuses multiplexed calls")
    yield b""  # never reached: a generator, as the handler must be


async def close_at_once(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    return
    yield b""  # never reached: a generator that ends at once (status OK, no message)


def opens_allowed(elapsed_s: float) -> int:
    """The most calls the reopen schedule lets one endpoint open in ``elapsed_s``: the first at once,
    the n-th (n >= 2) no sooner than reopen_delay(1) + ... + reopen_delay(n - 1) after it."""
    opens, waited = 1, 0.0
    while waited + reopen_delay(opens) <= elapsed_s:
        waited += reopen_delay(opens)
        opens += 1
    return opens


@pytest.mark.parametrize("refusal", [refuse_at_open, close_at_once], ids=["refused", "closed"])
def test_a_worker_whose_multiplexed_call_fails_at_its_open_costs_calls_by_the_backoff_not_by_requests(
    signed_worker, tiny_model_dir, refusal
):
    # Its health checks pass (they reach the real worker), so it keeps coming back into rotation and
    # requests keep being routed to it. The bound is a count, not CPU time: on a shared 2-core box the
    # test process's CPU (router, clients and this server together) says little, while the number of
    # calls the worker was asked to open is exactly what grew with the requests (one per failed
    # request or so) and what the reopen schedule bounds, whatever the request rate.
    clients, rounds = 8, 6

    async def scenario():
        async with old_contract_worker(signed_worker.address, refusal) as broken:
            config = configured(tiny_model_dir, [broken.address], "multiplexed", wait_for_worker_s=0.5)
            async with running_router(config) as running:
                loop = asyncio.get_running_loop()
                began = loop.time()

                async def client() -> list[BaseException]:
                    errors = []
                    for _ in range(rounds):
                        with pytest.raises(grpc.aio.AioRpcError) as failure:
                            await text_of(running, [500, 501, 502], max_tokens=2)
                        errors.append(failure.value)
                    return errors

                # Bounded: every request must end (a hang fails here, it is not a measurement).
                errors = await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 120)
                elapsed = loop.time() - began
                worker = running.registry.all()[0].worker_id
                return (
                    [e for batch in errors for e in batch],
                    broken.calls.get(MULTIPLEXED, 0),
                    elapsed,
                    worker,
                )

    errors, opens, elapsed, worker = asyncio.run(scenario())
    assert len(errors) == clients * rounds
    named = [e for e in errors if f"worker {worker}" in e.details() and "multiplexed call" in e.details()]
    for error in errors:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        # The failures also take the worker out of rotation for a while (its health); a request that
        # arrives then is told no worker is available, as with any unhealthy pool. How many arrive then
        # depends on the machine's load, so only the kinds of answer are asserted, and that the failed
        # open reaches the client in words.
        assert error in named or "no healthy worker" in error.details(), error.details()
    assert named
    assert 1 <= opens <= opens_allowed(elapsed), (opens, elapsed)
    assert opens < len(errors) // 4


@given(failures=st.integers(1, 10_000))
def test_the_reopen_delay_starts_short_doubles_and_is_capped(failures):
    delay, after = reopen_delay(failures), reopen_delay(failures + 1)
    assert reopen_delay(1) <= delay <= after <= min(2 * delay, REOPEN_CAP_S)


def test_a_worker_that_accepts_the_call_again_is_served_on_one_call_after_the_backoff(
    signed_worker, tiny_model_dir
):
    async def scenario():
        refusing = True
        async with grpc.aio.insecure_channel(signed_worker.address) as upstream:
            relay = upstream.stream_stream(MULTIPLEXED)

            async def sometimes(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
                if refusing:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
                async for reply in relay(requests, metadata=_passed_on(context)):
                    yield reply

            async with old_contract_worker(signed_worker.address, sometimes) as worker:
                config = configured(tiny_model_dir, [worker.address], "multiplexed", wait_for_worker_s=0.5)
                async with running_router(config) as running:
                    refused = []
                    for _ in range(3):
                        with pytest.raises(grpc.aio.AioRpcError) as failure:
                            await text_of(running, [600, 601, 602], max_tokens=2)
                        refused.append(failure.value.code())
                    refusing = False
                    served = None
                    for _ in range(200):  # until the backoff lets a call open (well under a second)
                        try:
                            served = await text_of(running, [600, 601, 602], max_tokens=2, ignore_eos=True)
                            break
                        except grpc.aio.AioRpcError:
                            await asyncio.sleep(0.05)
                    opens_before = worker.calls[MULTIPLEXED]
                    after = [
                        await text_of(running, [610 + n, 601, 602], max_tokens=3, ignore_eos=True)
                        for n in range(5)
                    ]
                    return refused, served, after, worker.calls[MULTIPLEXED] - opens_before

    refused, served, after, opens_after = asyncio.run(scenario())
    assert refused == [grpc.StatusCode.UNAVAILABLE] * 3
    assert served is not None and served[1].usage.completion_tokens == 2
    assert all(result.usage.completion_tokens == 3 and text == result.text for text, result in after)
    assert opens_after == 0  # the call that served stays open and carries every later request
