"""Redis, N workers and M routers as child processes that the soak can kill, freeze and restart.

Only entry points (``python -m radixfair_worker|radixfair_router``), config keys and the gRPC
contract are relied on. Each child keeps its port across restarts, so the routers list the workers
statically (no registration token) and a restarted router is found at the same address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.engine.serving_bench import _is_serving
from radixfair.auth import ApiKeyConfig
from radixfair.config_loading import build
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer, free_loopback_port
from radixfair_router.config import RouterConfig

STARTUP_TIMEOUT_S = 300.0


@dataclass
class Child:
    """One service process, restartable with the same command (same port, same id)."""

    name: str
    command: list[str]
    address: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # signals sent to it reach it alone
            )

    def wait_serving(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not _is_serving(self.address):
            if self.process is None or self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not start serving on {self.address}; see {self.log_path}"
                )
            time.sleep(0.2)

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        """kill -9, as a crash: nothing is flushed or released."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGCONT)  # a frozen child cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass(frozen=True)
class StackConfig:
    model_dir: Path
    run_dir: Path
    workers: int = 3
    routers: int = 2
    tenant_keys: tuple[ApiKeyConfig, ...] = ()
    operator_key: ApiKeyConfig = ApiKeyConfig("chaos-operator-key", "operator", 1.0, operator=True)
    # The router's own defaults for health checks and stream limits (a frozen worker's streams end
    # when it leaves rotation, by the default silence bound); only the lease is shortened, so a
    # killed router's replica state lapses within a soak's fault window.
    router_settings: dict[str, object] = field(
        default_factory=lambda: {"ledger": {"router_lease_ttl_s": 5.0}}
    )
    worker_settings: dict[str, object] = field(
        default_factory=lambda: {
            "torch_threads": 1,
            "engine.page_size": 16,
            # Below the worker's digest limit (4096 page hashes), so a load report lists every
            # cached page and free + cached = total at idle unless pages leaked.
            "engine.num_pages": 512,
            "engine.max_running_requests": 16,
            "engine.max_batched_tokens": 512,
        }
    )

    def router_config(self) -> RouterConfig:
        """The routers' settings as the router reads them (ledger aside), for the bounds they imply."""
        settings = {**self.router_settings, "ledger": {"store": "memory"}}
        return build(RouterConfig, settings, "chaos router settings")


class ChaosStack:
    """Starts Redis, the workers, then the routers; ``stop`` ends them all (routers first)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(RedisLaunchConfig(persistent=True))
        self.workers = [self._worker(i) for i in range(config.workers)]
        self.routers = [self._router(i) for i in range(config.routers)]

    def start(self) -> ChaosStack:
        self.redis.start()
        for child in self.workers:
            child.start()
        for child in self.workers:
            child.wait_serving()
        for index, child in enumerate(self.routers):
            self._write_router_config(index)
            child.start()
        for child in self.routers:
            child.wait_serving()
        return self

    def stop(self) -> None:
        for child in [*self.routers, *self.workers]:
            child.stop()
        self.redis.stop()

    def _worker(self, index: int) -> Child:
        port = free_loopback_port()
        worker_id = f"worker-{index}"
        flags = {
            "model": str(self.config.model_dir),
            "host": "127.0.0.1",
            "port": port,
            "worker_id": worker_id,
            "metrics_port": 0,
            **self.config.worker_settings,
        }
        args = [arg for key, value in flags.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
        command = [sys.executable, "-m", "radixfair_worker", *args]
        return Child(worker_id, command, f"127.0.0.1:{port}", self.config.run_dir / f"{worker_id}.log")

    def _router(self, index: int) -> Child:
        port = free_loopback_port()
        path = self.config.run_dir / f"router-{index}.yaml"
        command = [sys.executable, "-m", "radixfair_router", "--config", str(path)]
        return Child(
            f"router-{index}", command, f"127.0.0.1:{port}", self.config.run_dir / f"router-{index}.log"
        )

    def _write_router_config(self, index: int) -> None:
        cfg = self.config
        keys = [*cfg.tenant_keys, cfg.operator_key]
        router = self.routers[index]
        config = {
            "host": "127.0.0.1",
            "port": int(router.address.rsplit(":", 1)[1]),
            "router_id": router.name,
            "tokenizer_dir": str(cfg.model_dir),
            "metrics_port": 0,
            "policy": {"name": "d2lpm"},
            "auth": {
                "api_keys": [
                    {"key": k.key, "client_id": k.client_id, "weight": k.weight, "operator": k.operator}
                    for k in keys
                ]
            },
            # Static: every router lists every worker; registration stays off (no token).
            "registry": {"workers": [{"worker_id": w.name, "address": w.address} for w in self.workers]},
            "ledger": {"store": "redis", "redis_url": self.redis.url},
        }
        _merge(config, cfg.router_settings)
        (cfg.run_dir / f"router-{index}.yaml").write_text(yaml.safe_dump(config))


def _merge(base: dict[str, object], extra: dict[str, object]) -> None:
    """Deep-merges ``extra`` into ``base`` (nested dicts merged, anything else replaced)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)  # type: ignore[arg-type]
        else:
            base[key] = value
