"""Worker registration is its own identity and never takes a worker over; the ledger trusts the router.

Issue 12, point 2: RegisterWorker was open to anyone in the shipped configs, a
registration could replace a live or static worker, and a worker's claimed
usage went into the tenants' ledger as is. The hostile worker here is a real
gRPC server on loopback that serves the worker protocol and lies about usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.router_stack import client_for, router_config, running_router, wait_until, worker_id

from radixfair.auth import AuthConfig, RegistrationAuthenticator, bearer_metadata, key_digest
from radixfair.errors import AlreadyExistsError
from radixfair.grpc_health import add_health_and_reflection, set_serving
from radixfair.v1 import generation_pb2, router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from radixfair_router.config import RegistryConfig, StaticWorker
from radixfair_router.worker_registry import WorkerRegistry

TOKEN = "worker-join-token-for-tests"
WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name


@dataclass
class ForgingWorker(worker_pb2_grpc.WorkerServiceServicer):
    """Streams ``tokens`` real deltas, then a result whose usage is whatever ``claims`` says next."""

    tokens: int
    claims: list[generation_pb2.Usage]
    served: list[worker_pb2.GenerateRequest] = field(default_factory=list)

    async def Generate(self, request, context):
        self.served.append(request)
        for token in range(self.tokens):
            yield worker_pb2.GenerateResponse(delta=generation_pb2.TokenDelta(token_ids=[100 + token]))
        usage = self.claims.pop(0)
        yield worker_pb2.GenerateResponse(
            result=generation_pb2.GenerationResult(
                finish_reason=generation_pb2.FINISH_REASON_LENGTH, usage=usage, worker_id="forger"
            )
        )

    async def GetLoadReport(self, request, context):
        return worker_pb2.GetLoadReportResponse(report=worker_pb2.LoadReport(worker_id="forger", page_size=4))


@asynccontextmanager
async def serving(servicer: ForgingWorker) -> AsyncIterator[str]:
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    health = add_health_and_reflection(server, [WORKER_SERVICE])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await set_serving(health, [WORKER_SERVICE], True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


async def register(router_port: int, wid: str, address: str, metadata=None) -> grpc.aio.AioRpcError | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router_port}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        try:
            await stub.RegisterWorker(
                router_pb2.RegisterWorkerRequest(worker_id=wid, address=address),
                metadata=metadata,
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            return error
    return None


def test_without_a_registration_token_no_caller_can_register_a_worker(tiny_model_dir):
    async def scenario():
        async with running_router(router_config(tiny_model_dir, [])) as running:
            errors = [
                await register(running.port, "evil", "127.0.0.1:1", metadata)
                for metadata in (
                    None,
                    bearer_metadata("key-alice"),
                    bearer_metadata(""),
                    bearer_metadata(TOKEN),
                )
            ]
            return errors, running.registry.all()

    errors, workers = asyncio.run(scenario())
    assert [e.code() for e in errors] == [grpc.StatusCode.PERMISSION_DENIED] * 4
    assert all("registration is off" in e.details() for e in errors)
    assert workers == []


def test_a_tenants_api_key_is_never_a_registration_credential(tiny_model_dir):
    config = router_config(tiny_model_dir, [])
    with pytest.raises(ValueError, match="must not be a tenant's API key"):
        RegistrationAuthenticator("key-bob", config.auth)
    with pytest.raises(ValueError, match="must not be a tenant's API key"):
        RegistrationAuthenticator(f"sha256:{key_digest('key-carol')}", config.auth)

    async def scenario():
        with_token = replace(config, registry=replace(config.registry, registration_token=TOKEN))
        async with running_router(with_token) as running:
            tenant = await register(running.port, "evil", "127.0.0.1:1", bearer_metadata("key-alice"))
            return tenant, running.registry.all()

    tenant, workers = asyncio.run(scenario())
    assert tenant.code() == grpc.StatusCode.UNAUTHENTICATED and "registration token" in tenant.details()
    assert workers == []


def test_the_token_may_be_configured_as_its_digest():
    registration = RegistrationAuthenticator(f"sha256:{key_digest(TOKEN)}", AuthConfig())
    registration.check(bearer_metadata(TOKEN))
    assert registration.enabled


def test_a_registration_cannot_take_over_a_static_or_a_live_worker(two_workers, tiny_model_dir):
    async def scenario():
        config = router_config(tiny_model_dir, two_workers)
        config = replace(config, registry=replace(config.registry, registration_token=TOKEN))
        forger = ForgingWorker(tokens=1, claims=[])
        async with serving(forger) as forger_address, running_router(config) as running:
            token = bearer_metadata(TOKEN)
            static = [await register(running.port, worker_id(w), forger_address, token) for w in two_workers]
            first = await register(running.port, "dynamic", forger_address, token)
            moved = await register(running.port, "dynamic", two_workers[0].address, token)
            refreshed = await register(running.port, "dynamic", forger_address, token)
            await wait_until(lambda: len(running.registry.healthy()) == 3, "the dynamic worker healthy")
            return static, first, moved, refreshed, {w.worker_id: w.address for w in running.registry.all()}

    static, first, moved, refreshed, addresses = asyncio.run(scenario())
    assert [e.code() for e in static] == [grpc.StatusCode.ALREADY_EXISTS] * 2
    assert all("listed in this router's config" in e.details() for e in static)
    assert first is None and refreshed is None
    assert moved.code() == grpc.StatusCode.ALREADY_EXISTS and "still heartbeating" in moved.details()
    assert {worker_id(w): w.address for w in two_workers}.items() <= addresses.items()
    assert addresses["dynamic"] != two_workers[0].address


def test_the_ledger_books_the_tokens_the_router_forwarded_not_the_usage_a_worker_claims(
    tiny_model_dir, redis_url
):
    huge = 1_000_000
    claims = [
        # More cached tokens than the prompt has: at most the whole prompt is credited.
        generation_pb2.Usage(prompt_tokens=huge, cached_tokens=5 * huge, completion_tokens=huge),
        # A negative cache credit is none.
        generation_pb2.Usage(prompt_tokens=huge, cached_tokens=-50, completion_tokens=huge),
    ]

    async def scenario():
        config = router_config(tiny_model_dir, [], redis_url)
        config = replace(
            config, registry=RegistryConfig(health_check_interval_s=0.2, registration_token=TOKEN)
        )
        forger = ForgingWorker(tokens=3, claims=claims)
        async with serving(forger) as address, running_router(config, healthy_workers=0) as running:
            assert await register(running.port, "forger", address, bearer_metadata(TOKEN)) is None
            await wait_until(lambda: len(running.registry.healthy()) == 1, "the forger in rotation")
            async with client_for(running, "alice") as client:
                outputs = [await client.generate(list(range(500, 512)), max_tokens=3) for _ in range(2)]
            await running.router.drain()
            return outputs, {r.client_id: r for r in await running.ledger.snapshot()}

    outputs, ledger = asyncio.run(scenario())
    assert [len(o.token_ids) for o in outputs] == [3, 3]
    # The caller's usage is the router's own count too, never the forger's claim.
    usage = [(o.result.usage.prompt_tokens, o.result.usage.cached_tokens, o.result.usage.completion_tokens)
             for o in outputs]  # fmt: skip
    assert usage == [(12, 12, 3), (12, 0, 3)]
    alice = ledger["alice"]
    assert (alice.requests, alice.inflight) == (2, 0)
    assert (alice.prompt_tokens, alice.cached_tokens, alice.completion_tokens) == (24, 12, 6)
    # Input: first request fully cached (0), second none cached (12); output: 2 x 3 tokens each.
    assert alice.service == pytest.approx(0 + 12 + 2.0 * 6)


def test_static_registry_answers_are_unchanged_for_a_worker_that_also_heartbeats(two_workers, tiny_model_dir):
    """A statically listed worker that also registers (same id, same address) is simply accepted."""

    async def scenario():
        config = router_config(tiny_model_dir, two_workers)
        config = replace(config, registry=replace(config.registry, registration_token=TOKEN))
        async with running_router(config) as running:
            worker = two_workers[0]
            same = await register(running.port, worker_id(worker), worker.address, bearer_metadata(TOKEN))
            return same, [w.static for w in running.registry.all()]

    same, static = asyncio.run(scenario())
    assert same is None and static == [True, True]


_ids = st.sampled_from(["static-a", "static-b", "w1", "w2", "w3"])
_addresses = st.sampled_from([f"127.0.0.1:{port}" for port in (1, 2, 3, 4)])


@settings(max_examples=40)
@given(st.lists(st.tuples(_ids, _addresses), max_size=12))
def test_no_sequence_of_registrations_moves_a_static_or_live_worker(registrations):
    """Whatever is registered in whatever order, each id keeps the first address it had."""
    static = (StaticWorker("static-a", "127.0.0.1:1"), StaticWorker("static-b", "127.0.0.1:2"))

    async def scenario():
        registry = WorkerRegistry(RegistryConfig(workers=static, heartbeat_ttl_s=3600.0))
        registry.start()
        first = {w.worker_id: w.address for w in static}
        try:
            for wid, address in registrations:
                try:
                    registry.register(wid, address, "")
                    accepted = True
                except AlreadyExistsError:
                    accepted = False
                first.setdefault(wid, address)
                assert accepted == (first[wid] == address), (wid, address)
                assert {w.worker_id: w.address for w in registry.all()} == first
        finally:
            await registry.stop()

    asyncio.run(scenario())
