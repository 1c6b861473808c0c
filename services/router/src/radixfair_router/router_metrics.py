"""Prometheus metrics of one router, on its own registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from radixfair.loop_lag import loop_lag_histogram
from radixfair.metrics import LATENCY_BUCKETS, REQUEST_DURATION_BUCKETS, ClientLabels, PerClient


class RouterMetrics:
    """Requests, tokens, latency, queue depth, cache hits and per-client service."""

    def __init__(self, registry: CollectorRegistry, max_client_labels: int = 64) -> None:
        self.registry = registry
        # Bounds the client label of every per-client metric below (metrics.max_client_labels):
        # each is a PerClient, so no series is ever made per client id beyond the bound.
        self.client_labels = clients = ClientLabels(max_client_labels)
        self.requests = PerClient(
            Counter,
            "radixfair_router_requests",
            "Requests by client and outcome",
            clients,
            registry,
            ("outcome",),
        )
        self.tokens = PerClient(
            Counter,
            "radixfair_router_tokens",
            "Tokens by client and kind (prompt, cached, completion)",
            clients,
            registry,
            ["kind"],
        )
        self.ttft = PerClient(
            Histogram,
            "radixfair_router_time_to_first_token_seconds",
            "From arrival at the router to the first token sent back, by client",
            clients,
            registry,
            buckets=LATENCY_BUCKETS,
        )
        self.inter_token = PerClient(
            Histogram,
            "radixfair_router_inter_token_seconds",
            "Between consecutive token deltas of one stream, by client",
            clients,
            registry,
            buckets=LATENCY_BUCKETS,
        )
        self.request_duration = Histogram(
            "radixfair_router_request_duration_seconds",
            "Generate call, from arrival to its last message, by outcome (ok, error, cancelled)",
            ["outcome"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "radixfair_router_rejected_requests",
            "Requests answered with an error status, by reason (invalid_argument, no_worker, ...)",
            ["reason"],
            registry=registry,
        )
        self.loop_lag = loop_lag_histogram("router", registry)
        self.cancelled = Counter(
            "radixfair_router_cancelled_requests",
            "Requests whose caller hung up before their result",
            registry=registry,
        )
        self.healthy_workers = Gauge(
            "radixfair_router_healthy_workers", "Workers in rotation (healthy)", registry=registry
        )
        self.decisions = Counter(
            "radixfair_router_routing_decisions",
            "Routing decisions by policy, reason and worker",
            ["policy", "reason", "worker"],
            registry=registry,
        )
        self.dispatch_ahead = Counter(
            "radixfair_router_dispatch_ahead",
            "Worker calls started before their admission returned, by outcome: hit (the admission chose"
            " that worker) or miss (it chose another; the call was cancelled)",
            ["outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "radixfair_router_retries",
            "Requests moved to another worker before their first token",
            registry=registry,
        )
        self.transport_fallbacks = Counter(
            "radixfair_router_worker_transport_fallbacks",
            "Times a worker answered UNIMPLEMENTED to GenerateMultiplexed (forward.worker_transport:"
            " multiplexed), so its requests went as Generate calls, by worker",
            ["worker"],
            registry=registry,
        )
        self.refills = PerClient(
            Counter, "radixfair_router_d2lpm_refills", "D2LPM refill rounds by client", clients, registry
        )
        self.client_service = PerClient(
            Counter,
            "radixfair_router_client_service",
            "Weighted tokens of service booked by this router, by client",
            clients,
            registry,
        )
        self.queue_depth = Gauge(
            "radixfair_router_worker_queue_depth",
            "Waiting requests reported by each worker",
            ["worker"],
            registry=registry,
        )
        self.queue_depth_router = Gauge(
            "radixfair_router_queue_depth", "Requests held at this router's admission gate", registry=registry
        )
        self.inflight = Gauge(
            "radixfair_router_worker_inflight",
            "This router's requests on each worker",
            ["worker"],
            registry=registry,
        )
        self.worker_cache_hit_rate = Gauge(
            "radixfair_router_worker_cache_hit_rate",
            "Prompt cache hit rate reported by each worker",
            ["worker"],
            registry=registry,
        )
        self.quantum = Gauge("radixfair_router_d2lpm_quantum", "D2LPM quantum Q", registry=registry)
        self.degraded_transitions = Gauge(
            "radixfair_router_shared_state_degraded_transitions",
            "Times this router's ledger left Redis for local state (0 with a healthy Redis)",
            registry=registry,
        )
        self.shared_state = Gauge(
            "radixfair_router_shared_state_connected",
            "1 while the Redis ledger is reachable",
            registry=registry,
        )

    def track(self, healthy_workers: Callable[[], int], shared_state: Callable[[], bool]) -> None:
        """State gauges read at every scrape, so they are current whenever they are seen
        (the ledger's connection changes inside any call that touches Redis)."""
        self.healthy_workers.set_function(lambda: float(healthy_workers()))
        self.shared_state.set_function(lambda: 1.0 if shared_state() else 0.0)
