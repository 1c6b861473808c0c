"""What the dispatch-ahead tests read after a scenario: the router's hit/miss counts, and how many
requests each real worker finished once both are idle (an early call left running would finish there)."""

from __future__ import annotations

from radixfair_router.app import RunningRouter
from support.metrics_scrape import scrape
from support.router_stack import wait_until


def dispatch_ahead_counts(running: RunningRouter) -> dict[str, float | None]:
    """radixfair_router_dispatch_ahead_total by outcome (None: never counted)."""
    counted = running.metrics.registry.get_sample_value
    return {o: counted("radixfair_router_dispatch_ahead_total", {"outcome": o}) for o in ("hit", "miss")}


async def finished_once_idle(metrics_urls: dict[str, str], client: str) -> dict[str, float]:
    """Per worker id, the client's requests finished by length, read once no worker runs or queues any.

    The workers' gauges move with the load reports a router watches: call it while a router runs.
    """

    def idle() -> bool:
        return all(_busy(url) == 0 for url in metrics_urls.values())

    await wait_until(idle, "every worker idle")
    return {
        worker: scrape(url).value("radixfair_worker_requests_total", client=client, finish_reason="length")
        for worker, url in metrics_urls.items()
    }


def _busy(url: str) -> float:
    metrics = scrape(url)
    return metrics.value("radixfair_worker_running_requests") + metrics.value("radixfair_worker_queue_depth")
