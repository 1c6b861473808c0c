"""The whole stack on one machine: Redis, a router and N workers, as child processes.

Used by ``radixfair up``. Order matters: Redis first (the router's ledger);
then the model is resolved (the first worker converts the packaged
checkpoint once, so workers are not racing to write the same cache); then
the router, with the model directory as its tokenizer; then the workers,
which register with the router and heartbeat. Ready means the router's
health check says SERVING and its status lists every worker healthy.
Stopping goes in reverse and never leaves a child behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixfair.auth import ApiKeyConfig, bearer_metadata
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer, free_loopback_port
from radixfair.v1 import router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

PACKAGED_MODEL = "smollm2-135m-instruct"
DEFAULT_CACHE_DIR = Path("~/.cache/radixfair/models")


@dataclass(frozen=True)
class LocalStackConfig:
    run_dir: Path
    model: str = PACKAGED_MODEL
    cache_dir: Path = DEFAULT_CACHE_DIR
    workers: int = 2
    router_port: int = 50051
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


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


class LocalStack:
    """Starts and stops the local stack; ``address`` is the router's host:port."""

    def __init__(self, config: LocalStackConfig) -> None:
        self._config = config
        self._redis: RedisServer | None = None
        self._children: list[_Child] = []
        self.address = f"127.0.0.1:{config.router_port}"
        self.redis_url = config.redis_url

    def start(self) -> None:
        cfg = self._config
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.redis_url:
                self._redis = RedisServer(RedisLaunchConfig(persistent=True)).start()
                self.redis_url = self._redis.url
                log.info("redis-server on %s", self.redis_url)
            worker_ports = [free_loopback_port() for _ in range(cfg.workers)]
            model_dir = self._model_dir()
            if model_dir is None:
                # Let the first worker convert the packaged model before anything needs it.
                self._start_worker(0, worker_ports[0])
                self._wait_for_health(self._children[-1], f"127.0.0.1:{worker_ports[0]}")
                model_dir = cfg.cache_dir.expanduser() / cfg.model
            self._start_router(model_dir)
            self._wait_for_health(self._children[-1], self.address)
            for index, port in enumerate(worker_ports):
                if not any(c.name == f"worker-{index}" for c in self._children):
                    self._start_worker(index, port)
            self._wait_for_workers()
        except BaseException:
            self.stop()
            raise

    def describe(self) -> dict[str, object]:
        return {
            "router": self.address,
            "redis": self.redis_url,
            "policy": self._config.policy,
            "workers": self._config.workers,
            "clients": {k.client_id: {"api_key": k.key, "weight": k.weight} for k in self._config.api_keys},
            "logs": str(self._config.run_dir),
            "pids": {c.name: c.process.pid for c in self._children},
        }

    def first_exited(self) -> _Child | None:
        return next((c for c in self._children if c.process.poll() is not None), None)

    def stop(self) -> None:
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

    def _start_router(self, model_dir: Path) -> None:
        cfg = self._config
        router_config = {
            "host": "127.0.0.1",
            "port": cfg.router_port,
            "tokenizer_dir": str(model_dir),
            "policy": {"name": cfg.policy, "quantum": cfg.quantum},
            "ledger": {"store": "redis", "redis_url": self.redis_url},
            "auth": {
                "api_keys": [
                    {"key": k.key, "client_id": k.client_id, "weight": k.weight} for k in cfg.api_keys
                ]
            },
        }
        if cfg.router_config_file is not None:
            # The file decides policy and tuning; the launcher's own fields win as flags.
            del router_config["policy"]
            # Workers started here register themselves; nothing else is scraped on fixed ports.
            router_config.update({"registry": {"workers": []}, "metrics_port": 0})
            args = ["--config", str(cfg.router_config_file), *_set_args(_flatten(router_config))]
        else:
            path = cfg.run_dir / "router.yaml"
            path.write_text(yaml.safe_dump(router_config))
            args = ["--config", str(path)]
        self._spawn("router", "radixfair_router", [*args, *_set_args(cfg.router_settings)])

    def _start_worker(self, index: int, port: int) -> None:
        cfg = self._config
        settings: dict[str, object] = {
            "model": cfg.model,
            "cache_dir": str(cfg.cache_dir),
            "port": port,
            "worker_id": f"worker-{index}",
            "router_address": self.address,
            # N workers on one host cannot share a fixed metrics port.
            "metrics_port": 0,
            **cfg.worker_settings,
        }
        base = ["--config", str(cfg.worker_config_file)] if cfg.worker_config_file is not None else []
        self._spawn(f"worker-{index}", "radixfair_worker", [*base, *_set_args(settings)])

    def _spawn(self, name: str, module: str, args: list[str]) -> None:
        log_path = self._config.run_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._children.append(_Child(name, process, log_path))
        log.info("started %s (pid %d), log %s", name, process.pid, log_path)

    def _wait_for_health(self, child: _Child, address: str) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_s
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with {child.process.returncode}; see {child.log_path}"
                )
            if _is_serving(address):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{child.name} not serving on {address}; see {child.log_path}")

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_s
        key = self._config.api_keys[0].key
        while time.monotonic() < deadline:
            exited = self.first_exited()
            if exited is not None:
                raise RuntimeError(
                    f"{exited.name} exited with {exited.process.returncode}; see {exited.log_path}"
                )
            with grpc.insecure_channel(self.address) as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                try:
                    status = stub.GetStatus(
                        router_pb2.GetStatusRequest(), metadata=bearer_metadata(key), timeout=2
                    )
                    if sum(w.healthy for w in status.workers) >= self._config.workers:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.3)
        raise TimeoutError(f"workers did not all register with the router; logs in {self._config.run_dir}")


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


def _is_serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
