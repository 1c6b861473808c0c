"""A worker back on its address is readmitted within the reconnect backoff cap (issue 12, point 9).

gRPC's default reconnect backoff grows by 1.6x per failed connection attempt towards 120 s, and a
health check on a channel in backoff fails at once without trying to connect, so a worker that
came back after a long outage was seen again only after up to 17 s. The registry caps the backoff
at ``RECONNECT_BACKOFF_CAP_S``.

The test makes the backoff grow and then brings the worker back right after a failed attempt, so
the next attempt is exactly one backoff away. A gate listens on the dead worker's port: it
accepts each of the router's connection attempts and closes it (a failed handshake, which grows
the backoff) and, from the ``ATTEMPTS``-th on, relays connections to a live worker. Nothing is
timed: how long readmission took is counted in the registry's failed health checks after the
gate opened. With the cap the next attempt comes within cap x 1.2 (gRPC's jitter), so at most
ceil(cap x 1.2 / check interval) + 1 checks fail; without it the gap after ATTEMPTS failed
attempts is at least 0.8 x 1.6^(ATTEMPTS - 1) s (5.2 s: 26 checks at the test's 0.2 s interval).
"""

from __future__ import annotations

import asyncio
import math

from support.router_stack import router_config, running_router, wait_until, worker_id

from radixfair_router.worker_registry import RECONNECT_BACKOFF_CAP_S

ATTEMPTS = 5
GRPC_BACKOFF_JITTER = 0.2


class PortGate:
    """A TCP listener on ``port``: closes the first ``attempts`` connections, then relays to ``target``."""

    def __init__(self, port: int, target_port: int, attempts: int, on_open) -> None:
        self.port, self.target_port, self.attempts, self.on_open = port, target_port, attempts, on_open
        self.refused = 0
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for pipe in self.pipes:
            pipe.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refused < self.attempts:
            self.refused += 1
            if self.refused == self.attempts:
                self.on_open()  # the next connection is relayed
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(source, sink))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


def test_a_worker_back_after_its_backoff_grew_is_readmitted_within_the_backoff_cap(
    spawn_workers, two_workers, tiny_model_dir
):
    # The killed worker is the test's own; the gate relays to one of the session's, which stays up.
    [down], standby = spawn_workers(1), two_workers[0]
    port = int(down.address.rsplit(":", 1)[1])
    config = router_config(tiny_model_dir, [down])
    interval = config.registry.health_check_interval_s
    allowed = math.ceil(RECONNECT_BACKOFF_CAP_S * (1 + GRPC_BACKOFF_JITTER) / interval) + 1

    async def scenario():
        async with running_router(config) as running:
            endpoint = running.registry.get(worker_id(down))
            failed_when_open: list[int] = []
            down.kill()
            gate = PortGate(
                port,
                int(standby.address.rsplit(":", 1)[1]),
                ATTEMPTS,
                lambda: failed_when_open.append(endpoint.failures),
            )
            await gate.start()
            try:
                await wait_until(lambda: failed_when_open, "the router's connection attempts", timeout_s=120)
                assert not endpoint.healthy
                last_failures = [endpoint.failures]

                def readmitted() -> bool:
                    if not endpoint.healthy:
                        last_failures[0] = endpoint.failures
                    return endpoint.healthy

                await wait_until(readmitted, "worker readmitted", timeout_s=120)
            finally:
                await gate.stop()
            return last_failures[0] - failed_when_open[0]

    failed_after_open = asyncio.run(scenario())
    assert failed_after_open <= allowed, (failed_after_open, allowed)
