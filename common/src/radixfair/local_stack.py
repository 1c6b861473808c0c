"""The whole stack on one machine: Redis, a router and N workers, as child processes.

Used by ``radixfair up``. Order matters: Redis first (the router's ledger);
then the model is resolved (the first worker converts the packaged
checkpoint once, so workers are not racing to write the same cache); then
the router, with the model directory as its tokenizer; then the workers,
which register with the router and heartbeat. Ready means the router's
health check says SERVING and its status lists every worker healthy.
Stopping goes in reverse and never leaves a child behind.

With ``tls``, every hop is TLS: a CA of the stack's own is made in the run dir
(stack_certificates.py); the router and the workers serve with its server
certificate, the workers require the router's client certificate (only the
stack's router may call them), the workers register over TLS, and the stack's
own health checks go over TLS too. A tenant connects with the CA file. With
``tls_client_certificates`` the router requires a client certificate from every
caller (mutual TLS on client -> router too) and the stack makes one for the user,
from a clients' CA that the workers do not trust.

Before anything starts, the configuration is checked as the children will
read it (policy names, config fields, the router's port), so a mistake is one
line at once rather than a child's traceback later. A child that exits while
the stack starts is such a mistake (StackStartError, with the child's own last
line); once serving, a child that exits is restarted with backoff by
``supervise()``, as a process manager would.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixfair.auth import ApiKeyConfig, bearer_metadata
from radixfair.config_loading import ConfigError, load_config
from radixfair.listening import ListenError, ensure_port_free
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer, free_loopback_port
from radixfair.stack_certificates import StackCertificateError, StackCertificates
from radixfair.supervisor import RestartPolicy, Supervisor
from radixfair.tls import TlsConfig, open_channel
from radixfair.v1 import router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

PACKAGED_MODEL = "smollm2-135m-instruct"
# What a router logs once it serves (radixfair_router.app): how `up` knows a router sharing the port is up.
ROUTER_SERVING = "router serving on"
DEFAULT_CACHE_DIR = Path("~/.cache/radixfair/models")


@dataclass(frozen=True)
class LocalStackConfig:
    run_dir: Path
    model: str = PACKAGED_MODEL
    cache_dir: Path = DEFAULT_CACHE_DIR
    workers: int = 2
    # Router processes serving router_port together (SO_REUSEPORT) on one Redis ledger; the first
    # also serves the HTTP API.
    routers: int = 1
    router_port: int = 50051
    # The router's OpenAI-compatible HTTP API; 0 turns it off.
    router_http_port: int = 8000
    policy: str = "d2lpm"
    quantum: float = 4096.0
    # Empty: start a private redis-server on a free loopback port.
    redis_url: str = ""
    api_keys: tuple[ApiKeyConfig, ...] = ()
    # Extra settings, dotted keys as in `--set`: router and worker configs.
    router_settings: dict[str, object] = field(default_factory=dict)
    worker_settings: dict[str, object] = field(default_factory=dict)
    # Base config files, e.g. deploy/config/router.yaml and worker.yaml: the same files the
    # containers read. The launcher then only sets what it owns (addresses, Redis, keys).
    router_config_file: Path | None = None
    worker_config_file: Path | None = None
    startup_timeout_s: float = 900.0
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    # TLS on every hop, with certificates made for this stack in run_dir/tls (see the module doc).
    tls: bool = False
    # With tls: the router requires client certificates; the stack makes one in run_dir/tls.
    tls_client_certificates: bool = False

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"workers must be 0 or more, got {self.workers}")
        if self.routers < 1:
            raise ConfigError(f"routers must be 1 or more, got {self.routers}")
        if not 0 < self.router_port < 65536:
            raise ConfigError(f"the router port must be 1-65535, got {self.router_port}")
        if not 0 <= self.router_http_port < 65536 or self.router_http_port == self.router_port:
            raise ConfigError(
                f"the router's HTTP port must be 0 (off) or 1-65535 and not the gRPC port, "
                f"got {self.router_http_port}"
            )
        if self.tls_client_certificates and not self.tls:
            raise ConfigError("client certificates (--client-certs) need TLS (--tls)")


class StackStartError(RuntimeError):
    """The stack could not start; the message is one line naming the child and its own error."""


@dataclass
class _Child:
    """A service child process; restartable with the same command (same port, same id)."""

    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def alive(self) -> bool:
        return self.process.poll() is None

    def exit_reason(self) -> str:
        return f"exited with {self.process.returncode} (log {self.log_path})"

    def restart(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                # Its own process group: a terminal's Ctrl-C reaches `up`, which stops the children in
                # order, rather than every child at once (which the supervisor would see as crashes).
                start_new_session=True,
                # And if `up` itself is killed outright, the child is told to stop too.
                preexec_fn=_stop_with_parent,
            )
        log.info("started %s (pid %d), log %s", self.name, self.process.pid, self.log_path)

    def last_line(self) -> str:
        """The child's last log line: its own one-line error when it refused to start."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""


@dataclass
class SupervisedRedis:
    """The stack's own redis-server as a supervised child."""

    name: str
    server: RedisServer

    def alive(self) -> bool:
        return self.server.running

    def exit_reason(self) -> str:
        return "exited"

    def restart(self) -> None:
        # Same port and data directory (append-only file): the router reconnects to the same ledger.
        self.server.restart()
        log.info("started redis-server on %s", self.server.url)


class LocalStack:
    """Starts and stops the local stack; ``address`` is the router's host:port."""

    def __init__(self, config: LocalStackConfig) -> None:
        self._config = config
        self._redis: RedisServer | None = None
        self._children: list[_Child] = []
        self._supervisor = Supervisor(config.restart)
        self.address = f"127.0.0.1:{config.router_port}"
        # The workers' own identity for RegisterWorker, made per stack; never a tenant's key.
        self._registration_token = secrets.token_urlsafe(32)
        # Signs each forwarded request's tenant identity (router -> worker), so a process that can
        # reach a worker's port cannot pose as a tenant; made per stack, like the token above.
        self._identity_secret = secrets.token_urlsafe(32)
        self._worker_addresses: list[str] = []
        self.redis_url = config.redis_url
        self.certificates = (
            StackCertificates(config.run_dir / "tls", config.tls_client_certificates) if config.tls else None
        )
        # How the stack reaches its own services (health checks, status): over TLS with the client
        # certificate when TLS is on, since the workers require one.
        self._probe = self.certificates.calling(True) if self.certificates is not None else TlsConfig()

    def check(self) -> None:
        """Raises StackStartError for a configuration the children would refuse; starts nothing."""
        try:
            ensure_port_free("127.0.0.1", self._config.router_port, "the router")
            ensure_port_free("127.0.0.1", self._config.router_http_port, "the router's HTTP API")
            # Placeholders for what exists only once started: the model directory and Redis.
            placeholder_redis = self.redis_url or "redis://127.0.0.1:6379/0"
            args = self._router_config_args(Path("model"), placeholder_redis)
            # A file the launcher wrote is no name to show the user; theirs is.
            _check_router_config(args, None if self._config.router_config_file else "router config")
            _check_worker_config(self._config.worker_config_file, self._worker_settings(0, 0))
        except (ConfigError, ListenError, OSError) as error:
            raise StackStartError(str(error)) from None
        except ModuleNotFoundError as error:
            raise StackStartError(f"radixfair up needs the {error.name} package installed") from None

    def start(self) -> None:
        cfg = self._config
        self.check()
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        if self.certificates is not None:
            try:
                self.certificates.create()
            except (StackCertificateError, OSError) as error:
                raise StackStartError(str(error)) from None
            log.info("TLS on every hop; the stack's CA is %s", self.certificates.ca_file)
        try:
            if not self.redis_url:
                self._redis = RedisServer(RedisLaunchConfig(persistent=True)).start()
                self.redis_url = self._redis.url
                log.info("redis-server on %s", self.redis_url)
            worker_ports = [free_loopback_port() for _ in range(cfg.workers)]
            self._worker_addresses = [f"127.0.0.1:{port}" for port in worker_ports]
            model_dir = self._model_dir()
            if model_dir is None:
                # Let the first worker convert the packaged model before anything needs it.
                self._start_worker(0, worker_ports[0])
                self._wait_for_health(self._children[-1], f"127.0.0.1:{worker_ports[0]}")
                model_dir = cfg.cache_dir.expanduser() / cfg.model
            self._start_router(model_dir)
            self._wait_for_health(self._children[-1], self.address)
            for index in range(1, cfg.routers):
                # The port answers already (the first router): each further one is ready once it says so.
                self._start_router(model_dir, index)
                self._wait_for_log(self._children[-1], ROUTER_SERVING)
            for index, port in enumerate(worker_ports):
                if not any(c.name == f"worker-{index}" for c in self._children):
                    self._start_worker(index, port)
            self._wait_for_workers()
        except BaseException:
            self.stop()
            raise
        if self._redis is not None:
            self._supervisor.watch(SupervisedRedis("redis", self._redis))
        for child in self._children:
            self._supervisor.watch(child)

    def supervise(self) -> None:
        """Restarts any child that has exited (after its backoff); call it periodically once started."""
        self._supervisor.check()

    @property
    def http_api(self) -> str:
        """Base URL of the router's OpenAI-compatible HTTP API; empty when it is off."""
        port = self._config.router_http_port
        scheme = "https" if self.certificates is not None else "http"
        return f"{scheme}://127.0.0.1:{port}/v1" if port else ""

    def describe(self) -> dict[str, object]:
        return {
            "router": self.address,
            "http_api": self.http_api,
            "redis": self.redis_url,
            "policy": self._config.policy,
            "workers": self._config.workers,
            "routers": self._config.routers,
            "clients": {k.client_id: {"api_key": k.key, "weight": k.weight} for k in self._config.api_keys},
            "logs": str(self._config.run_dir),
            "pids": {c.name: c.process.pid for c in self._children},
            "worker_addresses": list(self._worker_addresses),
            # The CA file a client trusts (radixfair generate --ca-cert); empty: plaintext.
            "ca_file": str(self.certificates.ca_file) if self.certificates is not None else "",
            # The client certificate and key the router requires (--client-cert/--client-key); empty: none.
            **self._client_certificate(),
        }

    def _client_certificate(self) -> dict[str, str]:
        if self.certificates is None or not self.certificates.client_certificates:
            return {"client_cert": "", "client_key": ""}
        identity = self.certificates.client_identity
        return {"client_cert": str(identity.cert), "client_key": str(identity.key)}

    def first_exited(self) -> _Child | None:
        return next((c for c in self._children if c.process.poll() is not None), None)

    def stop(self) -> None:
        self._supervisor.forget()
        for child in reversed(self._children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in reversed(self._children):
            try:
                child.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(timeout=5)
        self._children.clear()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def _model_dir(self) -> Path | None:
        candidate = Path(self._config.model).expanduser()
        return candidate if candidate.is_dir() else None

    def _start_router(self, model_dir: Path, index: int = 0) -> None:
        args = self._router_config_args(model_dir, self.redis_url, index)
        self._spawn(f"router-{index}" if index else "router", "radixfair_router", args)

    def _router_config_args(self, model_dir: Path, redis_url: str, index: int = 0) -> list[str]:
        """Router ``index``'s command-line arguments: a config file, or the base file plus --set flags."""
        cfg = self._config
        router_config: dict[str, object] = {
            "host": "127.0.0.1",
            "port": cfg.router_port,
            # One HTTP port on the host: the first router serves it.
            "http_port": 0 if index else cfg.router_http_port,
            "tokenizer_dir": str(model_dir),
            "policy": {"name": cfg.policy, "quantum": cfg.quantum},
            "ledger": {"store": "redis", "redis_url": redis_url},
            "auth": {
                "api_keys": [
                    {"key": k.key, "client_id": k.client_id, "weight": k.weight} for k in cfg.api_keys
                ]
            },
            "registry": {"registration_token": self._registration_token},
            "forward": {"identity_secret": self._identity_secret},
        }
        if cfg.routers > 1:
            # A worker registers and heartbeats over one connection, so with one router process; every
            # router lists the stack's workers instead and health-checks them itself.
            router_config["share_port"] = True
            router_config["registry"]["workers"] = [  # type: ignore[index]
                {"worker_id": f"worker-{i}", "address": a} for i, a in enumerate(self._worker_addresses)
            ]
        if self.certificates is not None:
            # Callers need the CA (and, with client certificates, one of their own); the router
            # presents the stack's internal client certificate to the workers.
            router_config["tls"] = asdict(self.certificates.serving())
            router_config["registry"]["tls"] = asdict(self.certificates.calling(True))  # type: ignore[index]
        if cfg.router_config_file is not None:
            # The file decides policy and tuning; the launcher's own fields win as flags.
            del router_config["policy"]
            # Workers started here register themselves (and are listed with several routers); nothing
            # else is scraped on fixed ports.
            registry = {"workers": [], **router_config["registry"]}  # type: ignore[dict-item]
            router_config.update({"registry": registry, "metrics_port": 0})
            args = ["--config", str(cfg.router_config_file), *_set_args(_flatten(router_config))]
        else:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            path = cfg.run_dir / (f"router-{index}.yaml" if index else "router.yaml")
            path.write_text(yaml.safe_dump(router_config))
            args = ["--config", str(path)]
        return [*args, *_set_args(cfg.router_settings)]

    def _start_worker(self, index: int, port: int) -> None:
        cfg = self._config
        base = ["--config", str(cfg.worker_config_file)] if cfg.worker_config_file is not None else []
        args = [*base, *_set_args(self._worker_settings(index, port))]
        self._spawn(f"worker-{index}", "radixfair_worker", args)

    def _worker_settings(self, index: int, port: int) -> dict[str, object]:
        cfg = self._config
        return {
            "model": cfg.model,
            "cache_dir": str(cfg.cache_dir),
            # One host: workers listen on loopback only, whatever a base worker config says.
            "host": "127.0.0.1",
            "port": port,
            "worker_id": f"worker-{index}",
            "router_address": self.address,
            "router_token": self._registration_token,
            "identity_secret": self._identity_secret,
            # N workers on one host cannot share a fixed metrics port.
            "metrics_port": 0,
            # N workers on one host share its cores: each takes its share of torch threads, since
            # oversubscribed OpenMP threads spin against each other (on 2 cores, 2 workers at 2
            # threads each made a 40-token answer take 35 s instead of 5 s).
            "torch_threads": worker_torch_threads(os.cpu_count() or 1, max(self._config.workers, 1)),
            **self._worker_tls_settings(),
            **cfg.worker_settings,
        }

    def _worker_tls_settings(self) -> dict[str, object]:
        """A worker serves TLS to callers with the stack's internal client certificate and registers over
        TLS, presenting that certificate (a router requiring client certificates asks for one)."""
        if self.certificates is None:
            return {}
        serving = self.certificates.serving_internal()
        registering = self.certificates.calling(with_client_certificate=True)
        return {
            **{f"tls.{key}": value for key, value in asdict(serving).items()},
            **{f"router_tls.{key}": value for key, value in asdict(registering).items()},
        }

    def _spawn(self, name: str, module: str, args: list[str]) -> None:
        log_path = self._config.run_dir / f"{name}.log"
        self._children.append(_Child(name, [sys.executable, "-m", module, *args], log_path))

    def _wait_for_health(self, child: _Child, address: str) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_s
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise _start_failure(child)
            if _is_serving(address, self._probe):
                return
            time.sleep(0.2)
        raise StackStartError(f"{child.name} not serving on {address} in time; see {child.log_path}")

    def _wait_for_log(self, child: _Child, marker: str) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_s
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise _start_failure(child)
            if marker in child.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise StackStartError(f"{child.name} did not start serving in time; see {child.log_path}")

    def _sees_workers(self) -> bool:
        """Whether the router answering a new connection lists every worker healthy."""
        key = self._config.api_keys[0].key
        with open_channel(
            self.address, self._probe, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            try:
                status = stub.GetStatus(
                    router_pb2.GetStatusRequest(), metadata=bearer_metadata(key), timeout=2
                )
            except grpc.RpcError:
                return False
            return sum(w.healthy for w in status.workers) >= self._config.workers

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_s
        while time.monotonic() < deadline:
            exited = self.first_exited()
            if exited is not None:
                raise _start_failure(exited)
            # Each probe on its own connection, so with several routers the kernel spreads the probes
            # over them: every one must see every worker.
            if all(self._sees_workers() for _ in range(4 * self._config.routers - 3)):
                return
            time.sleep(0.3)
        raise StackStartError(f"workers did not all register with the router; logs in {self._config.run_dir}")


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start_failure(child: _Child) -> StackStartError:
    return StackStartError(
        f"{child.name} exited with {child.process.returncode} while starting: "
        f"{child.last_line() or 'no output'} (log {child.log_path})"
    )


def _check_router_config(args: list[str], where: str | None) -> None:
    """Loads the router's config from ``args`` as radixfair-router will; ConfigError if it would refuse it."""
    # Imported here: this package must not depend on a service's at import time, and the
    # router package is torch-free, so `up` can check its config in this process.
    from radixfair_router.config import RouterConfig

    path, overrides = _read_config_args(args)
    load_config(RouterConfig, path, overrides=overrides, where=where)


def _check_worker_config(path: Path | None, settings: dict[str, object]) -> None:
    """Loads a worker's config as radixfair-worker will, and builds its scheduling policy (torch-free)."""
    from radixfair_engine.scheduler.registry import build_policy
    from radixfair_worker.config import WorkerConfig

    try:
        config = load_config(WorkerConfig, path, overrides=settings, where=None if path else "worker config")
        build_policy(config.engine.scheduler)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"worker engine.scheduler: {error}") from None


def _read_config_args(args: list[str]) -> tuple[Path | None, dict[str, object]]:
    path = Path(args[args.index("--config") + 1]) if "--config" in args else None
    overrides: dict[str, object] = {}
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--set":
            key, _, text = value.partition("=")
            overrides[key] = yaml.safe_load(text)
    return path, overrides


def _flatten(settings: dict[str, object], prefix: str = "") -> dict[str, object]:
    """{"ledger": {"redis_url": u}} -> {"ledger.redis_url": u}; lists stay whole."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _set_args(settings: dict[str, object]) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def _is_serving(address: str, tls: TlsConfig) -> bool:
    try:
        with open_channel(address, tls) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def default_router_processes(cpus: int, worker_device: str) -> int:
    """Router processes for ``radixfair up`` when ``--routers`` is not given.

    A router relays every message of every stream in one Python thread, so one process relays at
    most about a core's worth: ~20-28k output tokens/s at 256 streams on the H200 host (8 processes
    used 3.8 cores at 81k tok/s, bench/results/serving_gpu_h200_s8_routers8.md; one alone peaked at
    ~28k). A GPU worker decodes ~90k tok/s there, so GPU workers get up to 8 routers, half the cores
    at most; a CPU worker's few thousand tokens/s need one, and its cores are the engine's.
    """
    if not worker_device.startswith("cuda"):
        return 1
    return max(1, min(8, cpus // 2))


def worker_torch_threads(cpus: int, workers: int) -> int:
    """Torch intra-op threads for each of ``workers`` workers sharing ``cpus`` cores (at least 1)."""
    return max(1, cpus // workers)
