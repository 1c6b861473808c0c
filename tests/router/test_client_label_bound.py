"""Every per-client Prometheus label stops at the configured bound, on router and worker alike.

With ``metrics.max_client_labels`` = N and N + k clients served, every metric family carrying a
``client`` label shows at most N + 1 values (the first N clients' ids and "other"), read from the
real /metrics endpoints: two routers (round robin, which sends every client to both workers, and
D2LPM with a quantum of one token, so a client's third admission, its deficit spent on both
workers, counts refills) in front of two real
workers (DLPM, which reports deficits, and VTC, which reports virtual counters).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from support.metrics_scrape import Scrape, scrape
from support.ports import free_port
from support.router_stack import router_config, running_router, start_worker_process

from radixfair.auth import ApiKeyConfig, AuthConfig
from radixfair.client import ClientConfig, RouterClient
from radixfair.metrics import OTHER_CLIENTS, MetricsConfig

BOUND = 2
CLIENTS = [f"tenant-{n}" for n in range(BOUND + 3)]

# The per-client families each service must show (so the bound is checked where it matters).
ROUTER_FAMILIES = (
    "radixfair_router_requests_total",
    "radixfair_router_tokens_total",
    "radixfair_router_client_service_total",
    "radixfair_router_time_to_first_token_seconds_count",
    "radixfair_router_inter_token_seconds_count",
)
WORKER_FAMILIES = (
    "radixfair_worker_requests_total",
    "radixfair_worker_tokens_total",
    "radixfair_worker_client_service",
    "radixfair_worker_time_to_first_token_seconds_count",
    "radixfair_worker_inter_token_latency_seconds_count",
)


def client_labels(metrics: Scrape) -> dict[str, set[str]]:
    """Per sample name carrying a ``client`` label, the values it takes."""
    found: dict[str, set[str]] = {}
    for name, labels in metrics.samples:
        client = dict(labels).get("client")
        if client is not None:
            found.setdefault(name, set()).add(client)
    return found


def test_n_plus_k_clients_give_at_most_n_plus_one_client_labels_on_every_metric(
    tiny_model_dir: Path, tmp_path: Path, redis_url: str
):
    worker_metrics = [free_port(), free_port()]
    overrides = [
        {"metrics_port": worker_metrics[0], "metrics.max_client_labels": BOUND},
        {
            "metrics_port": worker_metrics[1],
            "metrics.max_client_labels": BOUND,
            "engine.scheduler.policy": "vtc",
        },
    ]
    with ThreadPoolExecutor(2) as pool:
        workers = list(pool.map(lambda o: start_worker_process(tiny_model_dir, tmp_path, **o), overrides))
    try:
        scrapes = asyncio.run(
            _serve_every_client_and_scrape(workers, tiny_model_dir, redis_url, worker_metrics)
        )
    finally:
        for worker in workers:
            worker.stop()
    labelled = [client_labels(metrics) for metrics in scrapes]
    for found in labelled:
        assert found, "no metric with a client label was scraped"
        for name, values in found.items():
            assert len(values) <= BOUND + 1, (name, sorted(values))
    router_a, router_b, dlpm_worker, vtc_worker = labelled
    # Every client went through each service, so each family shows the bound exactly, "other" included.
    for name in ROUTER_FAMILIES:
        assert OTHER_CLIENTS in router_a[name] and len(router_a[name]) == BOUND + 1, name
    assert len(router_b["radixfair_router_d2lpm_refills_total"]) == BOUND + 1
    for found in (dlpm_worker, vtc_worker):
        for name in WORKER_FAMILIES:
            assert OTHER_CLIENTS in found[name] and len(found[name]) == BOUND + 1, name
    assert len(dlpm_worker["radixfair_worker_dlpm_deficit"]) == BOUND + 1
    assert len(vtc_worker["radixfair_worker_vtc_counter"]) == BOUND + 1
    # The first clients each service saw keep their own label.
    assert set(CLIENTS[:BOUND]) <= router_a["radixfair_router_requests_total"]
    assert set(CLIENTS[:BOUND]) <= dlpm_worker["radixfair_worker_requests_total"]


async def _serve_every_client_and_scrape(
    workers, tiny_model_dir: Path, redis_url: str, worker_metrics: list[int]
):
    """Serves every client through two routers (round robin, then D2LPM), then scrapes all four services."""
    auth = AuthConfig(tuple(ApiKeyConfig(f"key-{cid}", cid, 1.0) for cid in CLIENTS))
    router_ports = [free_port(), free_port()]

    def configured(policy: str, metrics_port: int, **options: object):
        config = router_config(tiny_model_dir, workers, redis_url, policy=policy, **options)
        return replace(config, auth=auth, metrics_port=metrics_port, metrics=MetricsConfig(BOUND))

    round_robin = configured("round_robin", router_ports[0])
    d2lpm = configured("d2lpm", router_ports[1], quantum=1.0)
    async with running_router(round_robin) as spread, running_router(d2lpm) as refilling:
        for running, requests in ((spread, 2), (refilling, 3)):
            for cid in CLIENTS:
                config = ClientConfig(f"127.0.0.1:{running.port}", f"key-{cid}")
                async with RouterClient(config) as client:
                    for n in range(requests):
                        await client.generate(f"{cid} asks {n}", max_tokens=3, ignore_eos=True)
            await running.router.drain()
        # The workers' per-client gauges are set when a load report is made (the routers ask often):
        # scraped once each shows the BOUND + 1 labels every client served gives it, not after a fixed sleep.
        urls = [f"http://127.0.0.1:{port}/metrics" for port in [*router_ports, *worker_metrics]]
        gauges = {urls[2]: "radixfair_worker_dlpm_deficit", urls[3]: "radixfair_worker_vtc_counter"}
        for url, gauge in gauges.items():
            await _wait_for_labels(url, gauge, BOUND + 1)
        return [await asyncio.to_thread(scrape, url) for url in urls]


async def _wait_for_labels(url: str, name: str, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len((await asyncio.to_thread(scrape, url)).label_values(name, "client")) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: fewer than {count} client labels on {name} after {timeout_s} s")
        await asyncio.sleep(0.05)
