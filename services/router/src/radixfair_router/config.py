"""Router configuration: frozen dataclasses built once at start-up and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from radixfair.auth import AuthConfig
from radixfair.config_loading import unknown_choice
from radixfair.metrics import MetricsConfig
from radixfair.tls import TlsConfig
from radixfair.tracing import TracingConfig


@dataclass(frozen=True)
class CostConfig:
    """Weights of service, as in VTC and DLPM: input tokens computed, output tokens generated."""

    input_token_weight: float = 1.0
    output_token_weight: float = 2.0
    # Fraction of input_token_weight charged for a prompt token served from cache (paper: 0).
    cached_token_weight: float = 0.0


@dataclass(frozen=True)
class PolicyConfig:
    """The routing policy by name (policies/registry.py) and its parameters; checks its own values.

    The name is checked by RouterConfig and build_policy, which read the registry: the policies
    import this module, so it cannot import them.
    """

    # One of the names in policies/registry.py.
    name: str = "d2lpm"
    # D2LPM quantum Q per (client, worker), in weighted tokens of service.
    quantum: float = 4096.0
    # Load balance thresholds (cache_aware and d2lpm): the system counts as
    # imbalanced when max_load - min_load > balance_abs_threshold and
    # max_load > balance_rel_threshold * min_load. d2lpm treats a worker whose
    # load exceeds min_load + balance_abs_threshold as over the threshold.
    balance_abs_threshold: int = 8
    balance_rel_threshold: float = 1.5
    # cache_aware: below this fraction of the prompt matched, pick the worker
    # with the smallest approximate cache instead of the longest match.
    # d2lpm: a match below it ranks a worker with the cold ones (smaller cache, then load).
    cache_threshold: float = 0.3
    # global_vtc, d2lpm_gated: requests in flight per healthy worker from this router;
    # beyond that they wait and are released in VTC order. 0 disables the gate.
    vtc_slots_per_worker: int = 4
    # Output tokens of running streams are booked to the ledger together, every
    # this many seconds (one pipelined round trip), not per message.
    output_charge_interval_s: float = 0.05
    # With a Redis ledger each stream books this many output tokens ahead of relaying them
    # (output_credit.py): a message the credit covers is relayed without a ledger round trip, and a
    # router killed mid-stream has over-booked at most this much (plus one message) per stream.
    # 0 (the default) books every message just before relaying it, so a router kill leaves the
    # ledger equal to what clients received (issue 12's chaos soak checks exactly that); a
    # deployment that trades a bounded over-charge on a crash for one Redis round trip less on
    # the first token sets it (16 covers a typical first message and its top-ups).
    output_book_ahead_tokens: int = 0

    def __post_init__(self) -> None:
        if self.quantum <= 0:
            raise ValueError("policy.quantum must be positive")
        if self.output_book_ahead_tokens < 0:
            raise ValueError("policy.output_book_ahead_tokens must be 0 or more")


@dataclass(frozen=True)
class ApproxTreeConfig:
    # Bound on tokens held by the router's approximate radix tree.
    max_tokens: int = 1_000_000
    # A worker's report overrides the tree for a prefix the router routed
    # more than this long before the report was taken.
    report_grace_s: float = 2.0


@dataclass(frozen=True)
class StaticWorker:
    worker_id: str
    address: str
    model: str = ""


@dataclass(frozen=True)
class RegistryConfig:
    workers: tuple[StaticWorker, ...] = ()
    # A registered worker that does not heartbeat within this leaves rotation.
    heartbeat_ttl_s: float = 6.0
    # Workers that register themselves (RegisterWorker) must send
    # "authorization: Bearer <token>"; the token (or "sha256:<hex>" of it) is the
    # workers' own identity and must not be a tenant's API key. Empty turns
    # registration off: only the workers listed above are used.
    registration_token: str = ""
    health_check_interval_s: float = 0.5
    health_check_timeout_s: float = 1.0
    # Consecutive failed checks before a worker leaves rotation.
    unhealthy_after_failures: int = 2
    load_report_interval_s: float = 0.5
    # TLS of the router's channels to workers: ca_file is the CA the workers' certificates
    # chain to; cert_file and key_file are the router's client certificate, for workers that
    # require one. A worker address must be a name its certificate holds (or set server_name).
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class LedgerConfig:
    # "redis" (shared by all router replicas) or "memory" (in-process, one
    # router only; chosen explicitly, never as a fallback).
    store: str = "redis"
    redis_url: str = ""
    key_prefix: str = "radixfair"
    # Per-operation socket timeout; a slower Redis counts as down.
    redis_timeout_s: float = 1.0
    # While degraded, how often to try Redis again.
    reconnect_interval_s: float = 0.5
    # Pings in a row that must succeed before a degraded router trusts Redis again.
    reconnect_stable_checks: int = 3
    # Connections to Redis; calls beyond that wait up to redis_pool_wait_s for one.
    redis_max_connections: int = 64
    redis_pool_wait_s: float = 10.0
    # This router's requests in flight live in Redis under a lease renewed while it
    # runs; a router dead for this long has them taken back by any other router.
    router_lease_ttl_s: float = 10.0


# The values of ForwardConfig.worker_transport.
WORKER_TRANSPORTS = ("per_request", "multiplexed")


@dataclass(frozen=True)
class ForwardConfig:
    # Attempts on different workers when one fails before its first token.
    max_attempts: int = 3
    # A stream that sends nothing for this long is failed, so no call hangs.
    stream_idle_timeout_s: float = 120.0
    # A stream of a worker out of rotation (frozen, unreachable) is ended once it has been
    # silent this long. Unset (the default), it is what the health checks took to give up on
    # the worker, registry.unhealthy_after_failures x registry.health_check_timeout_s (2 s with
    # the defaults): a frozen worker has been silent at least that long when it leaves rotation,
    # so its streams end then (or within one check timeout), while a worker that was merely slow
    # to answer checks keeps every stream that sent anything in that time. See
    # RouterConfig.unhealthy_stream_silence_s.
    unhealthy_stream_silence_s: float | None = None
    # With no healthy worker, how long a request waits for one to appear.
    wait_for_worker_s: float = 2.0
    # Prompts whose message is larger than this (serialized bytes: text, chat turns or
    # token ids) are refused before tokenizing; tokenizing runs off the event loop.
    max_prompt_bytes: int = 1 << 20
    # Secret shared with the workers (their identity_secret): each forwarded request carries an
    # HMAC of its tenant id, weight and request id, so a worker serves no caller posing as a
    # tenant (radixfair.caller_identity). Empty: requests go unsigned.
    identity_secret: str = ""
    # At most one message per stream per this many seconds after the first token: what the worker
    # sends in between goes out as one message (coalesced, text byte-identical), booked once. Each
    # relayed message costs the router two gRPC operations (the worker's read, the client's write);
    # a stream whose deltas are gathered over two decode steps costs one write per two tokens
    # (bench/results/router_relay_cpu_*.md). The first token and the result are never held. 0 (the
    # default): every worker message is relayed as soon as it is booked.
    stream_interval_s: float = 0.0
    # Start the worker call on the worker the admission will most likely choose while the
    # admission's Redis round trip runs (admission_forecast.py), so the round trip (~1 ms) leaves the
    # time to first token. The admission still decides: nothing is relayed before it, and a call on
    # a worker it did not choose is cancelled (radixfair_router_dispatch_ahead{outcome="miss"}).
    # With the in-process ledger the admission is local and this has no effect.
    dispatch_ahead: bool = True
    # How requests reach a worker. "per_request" (the default): one Generate call each.
    # "multiplexed": one GenerateMultiplexed call per worker carries all of this router's requests to
    # it, and each worker message holds a step's output of all of them, so the router reads one
    # message a step per worker instead of one per request (multiplexed_worker_call.py; a worker that
    # answers UNIMPLEMENTED, one not yet upgraded, is served per request). Retries, booking and stream
    # limits are the same either way.
    worker_transport: str = "per_request"

    def __post_init__(self) -> None:
        if self.stream_interval_s < 0:
            raise ValueError("forward.stream_interval_s must be 0 or more")
        if self.worker_transport not in WORKER_TRANSPORTS:
            raise ValueError(
                f"forward.worker_transport must be one of {', '.join(WORKER_TRANSPORTS)}, "
                f"not {self.worker_transport!r}"
            )


@dataclass(frozen=True)
class RouterConfig:
    """Everything a router process needs."""

    host: str = "127.0.0.1"
    port: int = 50051
    # Directory with tokenizer.json and tokenizer_config.json of the served
    # model, so the router's tree is over the same tokens the workers cache.
    tokenizer_dir: Path = Path("")
    # Model name callers use; empty accepts any.
    model_name: str = ""
    router_id: str = ""
    metrics_port: int = 0
    # Port of the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models),
    # on ``host``, next to the gRPC port and through the same dispatch path; 0 turns it off.
    http_port: int = 0
    # Serve ``port`` together with the other router processes of this host that ask too (SO_REUSEPORT).
    share_port: bool = False
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # TLS of the router's gRPC port (callers): cert_file and key_file; with ca_file and
    # require_client_cert, callers must present a certificate signed by that CA (mutual TLS).
    tls: TlsConfig = field(default_factory=TlsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    costs: CostConfig = field(default_factory=CostConfig)
    tree: ApproxTreeConfig = field(default_factory=ApproxTreeConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tracing: TracingConfig = field(default_factory=lambda: TracingConfig(service_name="radixfair-router"))

    @property
    def unhealthy_stream_silence_s(self) -> float:
        """Seconds a stream of a worker out of rotation may be silent before the router ends it.

        forward.unhealthy_stream_silence_s when set; otherwise the time the health checks need to
        declare an unresponsive worker out: unhealthy_after_failures checks that each timed out.
        """
        if self.forward.unhealthy_stream_silence_s is not None:
            return self.forward.unhealthy_stream_silence_s
        return self.registry.unhealthy_after_failures * self.registry.health_check_timeout_s

    def __post_init__(self) -> None:
        # Imported here: the policies import this module (see PolicyConfig).
        from radixfair_router.policies.registry import POLICIES

        if self.policy.name not in POLICIES:
            raise ValueError(unknown_choice("routing policy", self.policy.name, POLICIES))
        if self.ledger.store not in ("redis", "memory"):
            raise ValueError(f"ledger.store must be 'redis' or 'memory', not {self.ledger.store!r}")
        if self.ledger.store == "redis" and not self.ledger.redis_url:
            raise ValueError("ledger.store is 'redis' but ledger.redis_url is empty")
        if self.unhealthy_stream_silence_s <= 0:
            raise ValueError(
                "forward.unhealthy_stream_silence_s must be positive (unset, it is "
                "registry.unhealthy_after_failures x registry.health_check_timeout_s)"
            )
