"""Prometheus metrics of one worker, on the worker's own registry."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from radixfair.metrics import LATENCY_BUCKETS


class BatchHistogram:
    """A Prometheus histogram observed one batch of values at a time.

    Token latencies arrive once per engine step for every running request; one
    vectorized pass per batch replaces a locked ``Histogram.observe`` per token.
    Exposed exactly like a prometheus_client Histogram (``_bucket``, ``_count``, ``_sum``).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.array(sorted(buckets), dtype=np.float64)
        # One count per finite bound, then the +Inf bucket.
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        # /metrics is served from another thread.
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Sequence[float]) -> None:
        if not values:
            return
        array = np.asarray(values, dtype=np.float64)
        # Bucket i counts values <= bound i, so a value equal to a bound belongs to that bound.
        counts = np.bincount(np.searchsorted(self._bounds, array, side="left"), minlength=len(self._counts))
        total = float(array.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [(floatToGoString(b), float(c)) for b, c in zip(self._bounds, cumulative[:-1])]
        buckets.append(("+Inf", float(cumulative[-1])))
        yield HistogramMetricFamily(self._name, self._documentation, buckets=buckets, sum_value=total)


class WorkerMetrics:
    """Every metric the worker exports; the histograms are observed once per engine batch."""

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
        # Both measured where the serving front receives a step's batch from the engine.
        self.ttft = BatchHistogram(
            "radixfair_worker_time_to_first_token_seconds",
            "Arrival to first token",
            LATENCY_BUCKETS,
            registry,
        )
        self.inter_token = BatchHistogram(
            "radixfair_worker_inter_token_latency_seconds",
            "Gap between a request's tokens",
            LATENCY_BUCKETS,
            registry,
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
