"""Worker configuration: frozen dataclasses built once at start-up and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from radixfair.metrics import MetricsConfig
from radixfair.tls import TlsConfig
from radixfair.tracing import TracingConfig
from radixfair_engine.config import EngineConfig

# The GIL switch intervals a config may set besides 0: CPython's resolution is 1 us, and a thread that
# keeps the GIL for seconds would starve the others.
MIN_SWITCH_INTERVAL_S = 1e-6
MAX_SWITCH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs; see deploy/config/ for examples."""

    # Served model: a directory with config.json, model.safetensors and
    # tokenizer files, or "smollm2-135m-instruct" for the packaged checkpoint.
    model: str = "smollm2-135m-instruct"
    # Name that routers and callers use for this model; empty means the
    # model directory's name.
    model_name: str = ""
    # Where converted checkpoints are cached.
    cache_dir: Path = Path("~/.cache/radixfair/models")
    worker_id: str = ""
    # Loopback by default: a worker is called only by routers, so a config for one host never
    # opens it on every interface; containers and pods set their own network's address.
    host: str = "127.0.0.1"
    port: int = 50061
    # TLS of the worker's gRPC port: cert_file and key_file; with ca_file and
    # require_client_cert only callers with a certificate from that CA (the routers) get in.
    tls: TlsConfig = field(default_factory=TlsConfig)
    # Address this worker advertises to the router; empty means host:port.
    advertise_address: str = ""
    # Router to register with and heartbeat to; empty means static listing.
    router_address: str = ""
    heartbeat_seconds: float = 2.0
    # Sent as "authorization: Bearer <token>" when registering; must match the
    # router's registry.registration_token.
    router_token: str = ""
    # TLS of the registration channel to router_address (ca_file, optional client certificate).
    router_tls: TlsConfig = field(default_factory=TlsConfig)
    # Prometheus /metrics port; 0 disables it.
    metrics_port: int = 0
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # CPU threads for torch's intra-op pool; 0 keeps torch's default (one per core).
    # On a machine shared with other busy processes, fewer threads avoid spinning.
    torch_threads: int = 0
    # The engine process's GIL switch interval (sys.setswitchinterval), seconds; 0 keeps Python's
    # 5 ms. The engine loop lets the GIL go at every device call that releases it; its pipe threads
    # (submits in, step batches out) take it then, and the loop waits for it back until they block
    # or this interval passes. 0.2 ms beat 5 ms in every round at 256 streams on the H200 (worker
    # path, ms a step 3.35 / 4.78 against 3.58 / 5.12, unique / shared prefix, medians:
    # bench/results/serving_gpu_h200_s10_switch_ab.md).
    engine_switch_interval_s: float = 0.0002
    # The same for the serving front's process (its event loop, batch reader and command sender).
    front_switch_interval_s: float = 0.0
    # How the engine process takes commands and sends step batches: "threads" (a receiving and a
    # sending thread beside the engine loop) or "inline" (the loop alone, non-blocking pipe writes:
    # no other thread ever holds the GIL the loop needs). "inline" is unmeasured on the GPU yet.
    engine_pipe_io: str = "threads"
    engine: EngineConfig = field(default_factory=EngineConfig)
    tracing: TracingConfig = field(default_factory=lambda: TracingConfig(service_name="radixfair-worker"))
    # The serving front detokenizes requests with no stop strings (their text decides nothing in
    # the engine), so detokenizing costs the engine's step nothing for them; false keeps all text
    # in the engine process.
    detokenize_in_front: bool = True
    # Secret shared with the routers (their forward.identity_secret): Generate then serves only
    # requests whose tenant identity a router signed, others get UNAUTHENTICATED. Empty trusts
    # every caller's client_id and weight (keep the port private, or require client certificates).
    identity_secret: str = ""

    def __post_init__(self) -> None:
        for name in ("engine_switch_interval_s", "front_switch_interval_s"):
            interval = getattr(self, name)
            # CPython holds the interval in whole microseconds: under 1 us, infinite or past its range
            # it becomes 0 (a switch at every check); NaN would pass a plain sign check unapplied.
            if not (interval == 0 or MIN_SWITCH_INTERVAL_S <= interval <= MAX_SWITCH_INTERVAL_S):
                raise ValueError(
                    f"{name} must be 0 (Python's default) or {MIN_SWITCH_INTERVAL_S} to "
                    f"{MAX_SWITCH_INTERVAL_S} seconds, got {interval}"
                )
        if self.engine_pipe_io not in ("threads", "inline"):
            raise ValueError(f"engine_pipe_io must be 'threads' or 'inline', got {self.engine_pipe_io!r}")
