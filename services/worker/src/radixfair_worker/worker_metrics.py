"""Prometheus metrics of one worker, on the worker's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from radixfair.metrics import LATENCY_BUCKETS


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "radixfair_worker_requests", "Finished requests", ["client", "finish_reason"], registry=registry
        )
        self.tokens = Counter(
            "radixfair_worker_tokens",
            "Tokens by kind: prompt, cached (prompt tokens served from cache), completion",
            ["client", "kind"],
            registry=registry,
        )
        self.ttft = Histogram(
            "radixfair_worker_time_to_first_token_seconds",
            "Arrival to first token",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inter_token = Histogram(
            "radixfair_worker_inter_token_latency_seconds",
            "Gap between streamed tokens",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge("radixfair_worker_queue_depth", "Waiting requests", registry=registry)
        self.running = Gauge("radixfair_worker_running_requests", "Requests in the batch", registry=registry)
        self.free_pages = Gauge("radixfair_worker_free_kv_pages", "Free KV pages", registry=registry)
        self.cache_hit_rate = Gauge(
            "radixfair_worker_cache_hit_rate",
            "Prompt tokens served from cache / prompt tokens",
            registry=registry,
        )
        self.deficit = Gauge(
            "radixfair_worker_dlpm_deficit", "DLPM deficit per client", ["client"], registry=registry
        )
        self.quantum = Gauge("radixfair_worker_dlpm_quantum", "DLPM quantum Q", registry=registry)
        self.refills = Gauge(
            "radixfair_worker_dlpm_refills",
            "DLPM refills so far; many per admission mean Q is small",
            registry=registry,
        )
        self.virtual_counter = Gauge(
            "radixfair_worker_vtc_counter", "VTC virtual counter per client", ["client"], registry=registry
        )
        self.client_service = Gauge(
            "radixfair_worker_client_service",
            "Weighted tokens served per client",
            ["client"],
            registry=registry,
        )
