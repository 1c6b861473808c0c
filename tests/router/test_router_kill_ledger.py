"""A router killed with SIGKILL mid-stream leaves the ledger exact: every output token its clients
received is booked in Redis (write-ahead: a message is booked before it is relayed), and the
surviving router takes the dead one's requests in flight back.

The doomed router runs in its own process with ``output_charge_interval_s`` far above the test's
length, so nothing booked on a timer can make the ledger right: only booking before relaying can.
Its worker is frozen (SIGSTOP) after a few messages per stream, so at the kill no message is
between its booking and the client (where write-ahead books one message the client never saw).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import grpc
import redis
from support.router_stack import client_for, router_config, running_router, wait_until

from radixfair.client import ClientConfig, RouterClient
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer

STREAMS = 3
MESSAGES_BEFORE_FREEZE = 3
LEASE_TTL_S = 1.0

_DOOMED_ROUTER = textwrap.dedent(
    """
    import asyncio, sys
    from dataclasses import replace
    from pathlib import Path
    from types import SimpleNamespace
    from support.router_stack import router_config, wait_until
    from radixfair_router.app import start_router

    async def main():
        redis_url, tokenizer_dir, worker_address, lease_ttl_s = sys.argv[1:5]
        config = router_config(Path(tokenizer_dir), [SimpleNamespace(address=worker_address)], redis_url,
                               policy="round_robin", output_charge_interval_s=3600.0,
                # Each message booked just before it is relayed (no credit ahead), so the ledger
                # equals what the clients got; the credit's bound is tests/router/test_output_credit.py.
                output_book_ahead_tokens=0)
        config = replace(
            config,
            ledger=replace(config.ledger, router_lease_ttl_s=float(lease_ttl_s)),
            # Its streams must stay open when the frozen worker leaves rotation: the kill ends them.
            forward=replace(config.forward, stream_idle_timeout_s=3600.0, unhealthy_stream_silence_s=3600.0),
        )
        running = await start_router(config)
        await wait_until(lambda: running.registry.healthy(), "worker healthy")
        print(running.port, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def completion_tokens(plain: redis.Redis, client_id: str) -> int:
    return round(float(plain.hget(f"radixfair:client:{client_id}", "completion_tokens") or 0))


def inflight(plain: redis.Redis, client_id: str) -> int:
    return round(float(plain.hget(f"radixfair:client:{client_id}", "inflight") or 0))


def test_a_router_killed_mid_stream_has_booked_every_output_token_its_clients_received(
    spawn_workers, tiny_model_dir, redis_url
):
    [worker] = spawn_workers(1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [redis_url, str(tiny_model_dir), worker.address, str(LEASE_TTL_S)]
    doomed = subprocess.Popen(
        [sys.executable, "-c", _DOOMED_ROUTER, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    plain = redis.Redis.from_url(redis_url)
    survivor_config = router_config(tiny_model_dir, [worker], redis_url, policy="round_robin")
    survivor_config = replace(
        survivor_config, ledger=replace(survivor_config.ledger, router_lease_ttl_s=LEASE_TTL_S)
    )

    async def scenario():
        received = [0] * STREAMS
        messages = [0] * STREAMS
        async with running_router(survivor_config) as survivor:
            # One request through the survivor starts its ledger's lease (and reclaim) loop.
            async with client_for(survivor, "bob") as bob:
                await bob.generate("survivor", max_tokens=1, ignore_eos=True)
            assert doomed.stdout is not None
            port = int(await asyncio.to_thread(doomed.stdout.readline))
            async with RouterClient(ClientConfig(f"127.0.0.1:{port}", "key-alice", max_attempts=1)) as client:

                async def read(index: int) -> grpc.StatusCode:
                    try:
                        async for message in client.stream(
                            f"killed router story {index}", max_tokens=100_000, ignore_eos=True
                        ):
                            received[index] += len(message.delta.token_ids)
                            messages[index] += 1
                    except grpc.aio.AioRpcError as error:
                        return error.code()
                    return grpc.StatusCode.OK

                readers = [asyncio.create_task(read(i)) for i in range(STREAMS)]
                await wait_until(
                    lambda: min(messages) >= MESSAGES_BEFORE_FREEZE, "a few messages on every stream"
                )
                worker.process.send_signal(signal.SIGSTOP)
                # Booked before relayed, so the ledger reaches what the client got once the
                # frozen worker's last messages are through (on a timer-booked router it never does).
                try:
                    await wait_until(
                        lambda: completion_tokens(plain, "alice") == sum(received),
                        "the ledger catches up with the client",
                        timeout_s=10.0,
                    )
                except TimeoutError:
                    pass  # the assertion below reports the difference
                before_kill = completion_tokens(plain, "alice"), sum(received), inflight(plain, "alice")
                doomed.send_signal(signal.SIGKILL)
                await asyncio.to_thread(doomed.wait)
                codes = await asyncio.gather(*readers)
            # The survivor takes the dead router's requests in flight back once its lease lapses.
            await wait_until(lambda: inflight(plain, "alice") == 0, "the dead router's lease reclaimed")
        return received, codes, before_kill

    try:
        received, codes, before_kill = asyncio.run(scenario())
    finally:
        worker.process.send_signal(signal.SIGCONT)
        doomed.kill()
        doomed.wait()
    assert before_kill[2] == STREAMS  # the streams were open on the doomed router when it died
    assert codes == [grpc.StatusCode.UNAVAILABLE] * STREAMS
    assert all(count > 0 for count in received)
    assert completion_tokens(plain, "alice") == sum(received)


def test_streams_flowing_when_redis_goes_away_finish_and_the_reconciled_ledger_books_what_they_sent(
    two_workers, tiny_model_dir
):
    redis_server = RedisServer(RedisLaunchConfig(persistent=True)).start()
    try:

        async def scenario():
            config = router_config(tiny_model_dir, two_workers, redis_server.url)
            async with running_router(config) as running, client_for(running, "carol") as client:
                received = [0] * STREAMS
                results = []

                async def read(index: int) -> None:
                    async for message in client.stream(
                        f"redis outage story {index}", max_tokens=40, ignore_eos=True
                    ):
                        received[index] += len(message.delta.token_ids)
                        if message.HasField("result"):
                            results.append(message.result)
                        if received[index] and redis_server.running:
                            redis_server.stop_process()  # mid-stream: bookings in flight fail over

                # A bound, not a measurement: streams that stall on the lost Redis fail here, not hang.
                await asyncio.wait_for(asyncio.gather(*(read(i) for i in range(STREAMS))), 120)
                degraded = not running.ledger.shared
                redis_server.start()
                await running.router.drain()
                await wait_until(lambda: running.ledger.shared, "ledger reconnected", timeout_s=10)
                carol = next(r for r in await running.ledger.snapshot() if r.client_id == "carol")
            return received, results, degraded, carol

        received, results, degraded, carol = asyncio.run(scenario())
    finally:
        redis_server.stop()
    assert degraded
    assert [r.usage.completion_tokens for r in results] == [40] * STREAMS and received == [40] * STREAMS
    assert carol.completion_tokens == sum(received) and carol.inflight == 0
