"""A worker restarted on its address is back in rotation promptly (issue 12 point 9, router side).

gRPC's default reconnect backoff grows towards 120 s while a worker is down, so a worker down for
a while was seen again only after up to 17 s. The bound below is derived from the configured
intervals (reconnect backoff cap 1 s, health checks every 0.2 s with a 1 s timeout), generously.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.processes import ServiceProcess, start_service
from support.router_stack import WORKER_SETTINGS, router_config, running_router, wait_until, worker_id

BACK_WITHIN_S = 8.0
# Long enough for the default backoff to have grown past a second (it then lands by luck).
DOWN_FOR_S = 6.0


def restart_worker(model_dir: Path, log_dir: Path, port: int) -> ServiceProcess:
    """A new worker process on the old one's port, with its id; returns once it serves."""
    settings = {"model": str(model_dir), "port": port, "worker_id": f"worker-{port}", **WORKER_SETTINGS}
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return start_service("radixfair_worker", args, f"127.0.0.1:{port}", log_dir / "restarted.log")


def test_a_worker_restarted_after_a_long_outage_is_back_in_rotation_promptly(
    spawn_workers, tiny_model_dir, tmp_path
):
    [worker] = spawn_workers(1)
    port = int(worker.address.rsplit(":", 1)[1])
    restarted = []

    async def scenario():
        async with running_router(router_config(tiny_model_dir, [worker])) as running:
            worker.kill()
            await wait_until(lambda: not running.registry.healthy(), "worker out of rotation")
            await asyncio.sleep(DOWN_FOR_S)  # the outage; the channel keeps retrying meanwhile
            # Returns once the new process answers its own health check on the same address.
            restarted.append(await asyncio.to_thread(restart_worker, tiny_model_dir, tmp_path, port))
            await wait_until(lambda: bool(running.registry.healthy()), "worker back", timeout_s=BACK_WITHIN_S)
            return [w.worker_id for w in running.registry.healthy()]

    try:
        healthy = asyncio.run(scenario())
    finally:
        for process in restarted:
            process.stop()
    assert healthy == [worker_id(worker)]
