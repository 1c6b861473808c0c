"""Prometheus metrics of one worker, on the worker's own registry."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from radixfair.loop_lag import loop_lag_histogram
from radixfair.metrics import (
    LATENCY_BUCKETS,
    REQUEST_DURATION_BUCKETS,
    ClientLabels,
    PerClient,
    PerClientGauge,
)
from radixfair_engine.engine_outputs import StepStats


class EngineStepCounters:
    """The engine loop's cumulative step counters (``StepStats``), as of its last published state.

    The engine process keeps them; they reach the front with every load report, so a scrape
    reads them as fresh as the last report (the routers ask several times a second). Rates over a
    scrape interval give the steps per second, the mean batch (rows per step), the share of steps
    that prefill, and the share of the loop's time spent waiting for the device.
    """

    _FAMILIES = (
        ("radixfair_worker_engine_steps", "Engine steps launched", "steps"),
        ("radixfair_worker_engine_prefill_steps", "Engine steps with a prefill chunk", "prefill_steps"),
        ("radixfair_worker_engine_sampled_rows", "Tokens sampled by engine steps", "sampled_rows"),
        ("radixfair_worker_engine_step_seconds", "Wall seconds of the engine loop inside steps", "step_s"),
        (
            "radixfair_worker_engine_device_wait_seconds",
            "Seconds the engine loop waited on the device for sampled tokens",
            "device_wait_s",
        ),
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self._stats = StepStats()
        registry.register(self)

    def update(self, stats: StepStats) -> None:
        self._stats = stats

    def describe(self) -> Iterator[CounterMetricFamily]:
        return self.collect()

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self._stats
        for name, documentation, field_name in self._FAMILIES:
            yield CounterMetricFamily(name, documentation, value=getattr(stats, field_name))


class BatchHistogram:
    """A Prometheus histogram observed one batch of values at a time.

    Token latencies arrive once per engine step for every running request; one
    vectorized pass per batch replaces a locked ``Histogram.observe`` per token.
    Exposed exactly like a prometheus_client Histogram (``_bucket``, ``_count``, ``_sum``).
    With ``clients``, every value carries its client's row and each row is exposed
    under its ``client`` label (bounded by ``ClientLabels``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
        clients: ClientLabels | None = None,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._clients = clients
        self._bounds = np.array(sorted(buckets), dtype=np.float64)
        rows = clients.rows if clients is not None else 1
        # Per row: one count per finite bound, then the +Inf bucket.
        self._counts = np.zeros((rows, len(self._bounds) + 1), dtype=np.int64)
        self._sums = np.zeros(rows, dtype=np.float64)
        # /metrics is served from another thread.
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Sequence[float], rows: Sequence[int] | None = None) -> None:
        """``rows[i]`` is the client row of ``values[i]`` (``ClientLabels.row``); none: row 0."""
        if not values:
            return
        array = np.asarray(values, dtype=np.float64)
        # Bucket i counts values <= bound i, so a value equal to a bound belongs to that bound.
        buckets = np.searchsorted(self._bounds, array, side="left")
        width = self._counts.shape[1]
        if rows is None:
            counts = np.bincount(buckets, minlength=width)[None, :]
            sums = np.array([array.sum()])
        else:
            row_array = np.asarray(rows, dtype=np.int64)
            cells = np.bincount(row_array * width + buckets, minlength=self._counts.size)
            counts = cells.reshape(self._counts.shape)
            sums = np.bincount(row_array, weights=array, minlength=len(self._sums))
        with self._lock:
            self._counts += counts
            self._sums += sums

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts, axis=1)
            sums = self._sums.copy()
        if self._clients is None:
            yield HistogramMetricFamily(
                self._name, self._documentation, buckets=self._buckets(cumulative[0]), sum_value=sums[0]
            )
            return
        family = HistogramMetricFamily(self._name, self._documentation, labels=["client"])
        for row in np.flatnonzero(cumulative[:, -1]):
            label = self._clients.name(int(row))
            family.add_metric([label], self._buckets(cumulative[row]), float(sums[row]))
        yield family

    def _buckets(self, cumulative: np.ndarray) -> list[tuple[str, float]]:
        buckets = [(floatToGoString(b), float(c)) for b, c in zip(self._bounds, cumulative[:-1])]
        buckets.append(("+Inf", float(cumulative[-1])))
        return buckets


class WorkerMetrics:
    """Every metric the worker exports; the histograms are observed once per engine batch."""

    def __init__(self, registry: CollectorRegistry, max_client_labels: int = 64) -> None:
        self.registry = registry
        # Bounds the client label of every per-client metric below (metrics.max_client_labels):
        # each is a PerClient (or a BatchHistogram on the same labels), so no series is ever made
        # per client id beyond the bound.
        self.client_labels = clients = ClientLabels(max_client_labels)
        self.requests = PerClient(
            Counter, "radixfair_worker_requests", "Finished requests", clients, registry, ["finish_reason"]
        )
        self.tokens = PerClient(
            Counter,
            "radixfair_worker_tokens",
            "Tokens by kind: prompt, cached (prompt tokens served from cache), completion",
            clients,
            registry,
            ["kind"],
        )
        # Both measured where the serving front receives a step's batch from the engine.
        self.ttft = BatchHistogram(
            "radixfair_worker_time_to_first_token_seconds",
            "Arrival to first token, by client",
            LATENCY_BUCKETS,
            registry,
            self.client_labels,
        )
        self.inter_token = BatchHistogram(
            "radixfair_worker_inter_token_latency_seconds",
            "Gap between a request's tokens, by client",
            LATENCY_BUCKETS,
            registry,
            self.client_labels,
        )
        # Observed once per request, when it ends.
        self.request_duration = Histogram(
            "radixfair_worker_request_duration_seconds",
            "Generate call, from arrival to its last message, by outcome (ok, error, cancelled)",
            ["outcome"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_time = Histogram(
            "radixfair_worker_queue_time_seconds",
            "Arrival to first admission into the running batch",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "radixfair_worker_rejected_requests",
            "Requests answered with an error status, by reason (invalid_argument, queue_full, ...)",
            ["reason"],
            registry=registry,
        )
        self.cancelled = Counter(
            "radixfair_worker_cancelled_requests",
            "Requests whose caller hung up before their result",
            registry=registry,
        )
        self.preemptions = Counter(
            "radixfair_worker_preemptions",
            "Preemptions of requests (pages taken back, recomputed later), counted as requests finish",
            registry=registry,
        )
        self.queue_depth = Gauge("radixfair_worker_queue_depth", "Waiting requests", registry=registry)
        self.running = Gauge("radixfair_worker_running_requests", "Requests in the batch", registry=registry)
        self.free_pages = Gauge("radixfair_worker_free_kv_pages", "Free KV pages", registry=registry)
        self.total_pages = Gauge("radixfair_worker_total_kv_pages", "KV pages in the pool", registry=registry)
        self.cached_pages = Gauge(
            "radixfair_worker_cached_kv_pages",
            "KV pages held by the prefix cache (reusable by later requests)",
            registry=registry,
        )
        self.cache_hit_rate = Gauge(
            "radixfair_worker_cache_hit_rate",
            "Prompt tokens served from cache / prompt tokens",
            registry=registry,
        )
        self.deficit = PerClientGauge(
            "radixfair_worker_dlpm_deficit",
            "DLPM deficit per client (other: the sum over the clients beyond the label bound)",
            clients,
            registry,
        )
        self.quantum = Gauge("radixfair_worker_dlpm_quantum", "DLPM quantum Q", registry=registry)
        self.loop_lag = loop_lag_histogram("worker", registry)
        self.engine_steps = EngineStepCounters(registry)
        self.refills = Gauge(
            "radixfair_worker_dlpm_refills",
            "DLPM refills so far; many per admission mean Q is small",
            registry=registry,
        )
        self.virtual_counter = PerClientGauge(
            "radixfair_worker_vtc_counter",
            "VTC virtual counter per client (other: the largest over the clients beyond the label bound)",
            clients,
            registry,
            fold=max,
        )
        self.client_service = PerClientGauge(
            "radixfair_worker_client_service",
            "Weighted tokens served per client (other: the sum over the clients beyond the label bound)",
            clients,
            registry,
        )
