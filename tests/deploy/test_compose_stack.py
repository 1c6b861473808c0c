"""`docker compose --profile cpu up -d --build`, for real: the README's one-box deployment, built and run.

The images are built from the repo's Dockerfiles on a local Debian bookworm base (there is no
registry here: scripts/container_engine.sh makes the base and starts the engine), and Redis,
nginx and Prometheus are local stand-ins from Debian's packages (deploy/local/). The OTel
Collector and Jaeger are left out of this run (no Debian package); tracing is tested elsewhere.
The GPU profile cannot run here: tests/deploy/test_compose_file.py validates it with `config`.

The tests run in file order against one stack, as an operator would: serve, look, kill a worker,
restart, tear down. Built layers stay in the engine's cache, so a second run rebuilds only what
changed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from compose_project import (
    BASE_IMAGE,
    BUILD_INPUTS_IMAGE,
    ComposeProject,
    cpu_seconds,
    cpu_used_since,
    http_json,
    prepare_engine,
    wait_for,
)
from deploy_support import MAKE_ENV
from support.ports import free_port

from radixfair.client import GenerationOutput, RouterClient
from radixfair.tokenization import ChatTurn

# Generous hard caps only: the build runs once per module, and a fresh machine builds everything.
pytestmark = pytest.mark.timeout(3600)

PROJECT = "radixfair-stack-test"
KEYS = {"alice": "stack-test-alice-key", "bob": "stack-test-bob-key"}
OPERATOR_KEY = "stack-test-operator-key"
SERVING = ("redis", "router-1", "router-2", "router-lb", "worker-cpu-1", "worker-cpu-2", "distiller")
SCRAPED = {"router-1:9451", "router-2:9451", "worker-1:9461", "worker-2:9461", "distiller:9471"}
HERE = Path(__file__).resolve().parent
DIRECT_WORKER_CALL = HERE / "direct_worker_call.py"
WORKER_METRICS = HERE / "fetch_url.py"
# Bursts sent after a worker rejoins until one request lands on it.
REJOIN_BURSTS = 5
# Requests in flight at once, split by nginx over the two routers. Each prompt is mostly its own
# words (the chat template is below the policy's cache_threshold of it), so each router places
# them by load and a burst reaches every worker in rotation. Small: on a 2-core box shared with
# other work, 12 at once starved the workers' health answers past the routers' limit.
BURST = 4


@dataclass(frozen=True)
class Stack:
    project: ComposeProject
    router_address: str
    prometheus_url: str

    def prometheus_query(self, query: str) -> dict[str, float]:
        """{instance: value} of an instant query."""
        reply = http_json(f"{self.prometheus_url}/api/v1/query?query={urllib.parse.quote(query)}")
        return {row["metric"]["instance"]: float(row["value"][1]) for row in reply["data"]["result"]}


def write_env_file(path: Path, router_port: int, prometheus_port: int) -> None:
    """What a user writes from .env.example: keys, ports, and here the local base image."""
    keys = ", ".join(f"{{key: {key}, client_id: {client}, weight: 1.0}}" for client, key in KEYS.items())
    operator = f"{{key: {OPERATOR_KEY}, client_id: operator, weight: 1.0, operator: true}}"
    path.write_text(
        f"RADIXFAIR_AUTH__API_KEYS=[{keys}, {operator}]\n"
        f"KEYS_ENV_FILE={path}\n"
        "IMAGE_TAG=stack-test\n"
        f"PYTHON_IMAGE={BASE_IMAGE}\n"
        f"BUILD_INPUTS_IMAGE={BUILD_INPUTS_IMAGE}\n"
        f"ROUTER_PORT={router_port}\n"
        f"PROMETHEUS_PORT={prometheus_port}\n"
        f"JAEGER_UI_PORT={free_port()}\n"
        "REDIS_APPENDONLY=no\n"
    )
    # The routers' and workers' shared secrets, as a user gets them.
    subprocess.run(["bash", str(MAKE_ENV), str(path)], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("compose-stack")
    # Where the set-up's time and CPU went, kept beside the logs for bench/compose_cold_build.py;
    # never asserted.
    phases: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    started, cpu_before = time.monotonic(), cpu_seconds()
    env = prepare_engine(timeout_s=900, log=run_dir / "engine.log")
    phases["engine, base image and build inputs"] = time.monotonic() - started
    cpu["engine, base image and build inputs"] = cpu_used_since(cpu_before)
    router_port, prometheus_port = free_port(), free_port()
    env_file = run_dir / ".env"
    write_env_file(env_file, router_port, prometheus_port)
    project = ComposeProject(PROJECT, env_file, env)
    # A run killed half-way leaves its project behind; start from nothing.
    project.purge()
    # The images first, so their time is seen apart from model-init's: every image at once
    # (compose 1.29 builds one after another without --parallel), so the stand-ins' apt layer
    # runs beside the Python installs and every build reads the same sources; BuildKit runs a
    # step several builds share once. Then the README's command, which finds every image built.
    started, cpu_before = time.monotonic(), cpu_seconds()
    project.run("build", "--parallel", timeout_s=2700, log=run_dir / "build.log")
    phases["build (all images at once)"] = time.monotonic() - started
    cpu["build (all images at once)"] = cpu_used_since(cpu_before)
    started, cpu_before = time.monotonic(), cpu_seconds()
    project.run("up", "-d", "--build", timeout_s=1800, log=run_dir / "up.log")
    phases["up -d --build (model-init, starting the stack)"] = time.monotonic() - started
    cpu["up -d --build (model-init, starting the stack)"] = cpu_used_since(cpu_before)
    started, cpu_before = time.monotonic(), cpu_seconds()
    project.wait_healthy(SERVING, timeout_s=600)
    phases["up to every service healthy"] = time.monotonic() - started
    cpu["up to every service healthy"] = cpu_used_since(cpu_before)
    (run_dir / "phases.json").write_text(json.dumps(phases, indent=1))
    # When each container started and its last health checks (when it turned healthy), for
    # reading the start-up's critical path; never asserted.
    (run_dir / "health.txt").write_text(project.started_and_checked())
    # model-init's own log (it has finished): the one-time conversion is on every service's path.
    (run_dir / "model-init.log").write_text(
        project.run("logs", "--no-color", "--timestamps", "model-init", timeout_s=60)
    )
    (run_dir / "cpu.json").write_text(json.dumps(cpu, indent=1))
    yield Stack(project, f"127.0.0.1:{router_port}", f"http://127.0.0.1:{prometheus_port}")
    # Every service's log, for a failure's post-mortem (pytest keeps the last runs' tmp dirs).
    logs = project.run("logs", "--no-color", "--timestamps", timeout_s=120)
    (run_dir / "compose.log").write_text(logs)
    project.run("down", "-v", "--remove-orphans", timeout_s=300)


async def chat(address: str, api_key: str, prompts: list[str]) -> list[GenerationOutput]:
    """All ``prompts`` at once through one client, as chat completions of a few tokens."""
    async with RouterClient.connect(address, api_key, timeout_s=180.0) as client:
        return await asyncio.gather(
            *(client.generate([ChatTurn("user", prompt)], max_tokens=4) for prompt in prompts)
        )


def burst(stack: Stack, tag: str) -> set[str]:
    """Workers that served a burst of distinct chats; every chat must complete."""
    prompts = [f"{tag} {i}: " + " ".join(f"w{i}x{j}" for j in range(24)) for i in range(BURST)]
    outputs = asyncio.run(chat(stack.router_address, KEYS["alice"], prompts))
    assert all(o.result is not None and o.result.usage.completion_tokens > 0 for o in outputs)
    return {o.result.worker_id for o in outputs if o.result is not None}


def test_two_tenants_get_chat_completions_through_the_published_port(stack: Stack) -> None:
    outputs = {
        client: asyncio.run(chat(stack.router_address, key, [f"Hello from {client}. Say hi."]))[0]
        for client, key in KEYS.items()
    }

    for client, output in outputs.items():
        assert output.result is not None, client
        assert output.result.usage.completion_tokens > 0 and output.text, client
        assert output.result.worker_id in ("worker-1", "worker-2"), client

    async def tenants() -> dict[str, int]:
        async with RouterClient.connect(stack.router_address, OPERATOR_KEY) as client:
            status = await client.status()
        return {c.client_id: c.requests for c in status.clients}

    served = asyncio.run(tenants())
    assert served.get("alice", 0) >= 1 and served.get("bob", 0) >= 1, served


def test_prometheus_scrapes_every_service(stack: Stack) -> None:
    def scraped() -> dict[str, str] | None:
        targets = http_json(f"{stack.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
        health = {t["labels"]["instance"]: t["health"] for t in targets}
        return health if set(health) == SCRAPED and set(health.values()) == {"up"} else None

    # Scrapes every 2 s here (deploy/local/compose.standins.yml; 15 s in deploy/compose/prometheus.yml).
    assert set(wait_for("every target scraped and up", scraped, timeout_s=120)) == SCRAPED


def test_both_router_replicas_serve_behind_nginx(stack: Stack) -> None:
    assert burst(stack, "replicas") <= {"worker-1", "worker-2"}

    def both_routers_counted() -> dict[str, float] | None:
        served = stack.prometheus_query("sum by (instance) (radixfair_router_requests_total)")
        routers = {i: n for i, n in served.items() if i.startswith("router-")}
        return routers if len(routers) == 2 and all(n > 0 for n in routers.values()) else None

    served = wait_for("requests counted on both routers", both_routers_counted, timeout_s=120)
    assert set(served) == {"router-1:9451", "router-2:9451"}


def healthy_workers_per_router(stack: Stack, expected: float) -> dict[str, float] | None:
    """Both routers' radixfair_router_healthy_workers gauge, once both equal ``expected``."""
    gauges = stack.prometheus_query("radixfair_router_healthy_workers")
    routers = {i: v for i, v in gauges.items() if i.startswith("router-")}
    return routers if len(routers) == 2 and set(routers.values()) == {expected} else None


def worker_served_requests(stack: Stack, worker: str) -> float:
    """Requests the worker itself counts as finished (its own /metrics, read inside the network)."""
    url = f"http://{worker}:9461/metrics"
    text = stack.project.exec_python("router-1", WORKER_METRICS, url, timeout_s=60)
    rows = [line.split() for line in text.splitlines() if line.startswith("radixfair_worker_requests_total{")]
    return sum(float(row[-1]) for row in rows)


def test_a_killed_worker_leaves_the_stack_serving_and_rejoins_after_start(stack: Stack) -> None:
    stack.project.run("kill", "worker-cpu-1", timeout_s=120)

    assert burst(stack, "killed") == {"worker-2"}
    wait_for("both routers see one worker", lambda: healthy_workers_per_router(stack, 1.0), timeout_s=120)

    stack.project.run("start", "worker-cpu-1", timeout_s=120)
    stack.project.wait_healthy(["worker-cpu-1"], timeout_s=420)
    # The routers take worker-1 back on their next health check of it.
    wait_for("both routers see two workers", lambda: healthy_workers_per_router(stack, 2.0), timeout_s=120)
    # A fresh process: whatever it counts, it served after rejoining.
    assert worker_served_requests(stack, "worker-1") == 0

    # Serving again, not only counted healthy: chats are routed to it (the restarted worker has
    # the smaller cache, which D2LPM prefers for a cache miss at equal load) and it counts them.
    served: set[str] = set()
    for attempt in range(REJOIN_BURSTS):
        served |= burst(stack, f"rejoined {attempt}")
        if "worker-1" in served:
            break
    assert "worker-1" in served, served
    assert worker_served_requests(stack, "worker-1") >= 1


def test_a_worker_refuses_an_unsigned_generate_while_the_routers_serve(stack: Stack) -> None:
    # From inside the compose network, straight to the worker's port, bypassing the routers.
    codes = json.loads(stack.project.exec_python("router-1", DIRECT_WORKER_CALL, "worker-2:50061"))

    assert codes == {"unsigned": "UNAUTHENTICATED", "wrong_secret": "UNAUTHENTICATED", "signed": "OK"}
    assert burst(stack, "signed") <= {"worker-1", "worker-2"}


def model_file_identity(stack: Stack) -> str:
    """Inode and modification time of the converted weights on the project's model volume."""
    return stack.project.docker(
        "run",
        "--rm",
        "-v",
        f"{PROJECT}_models:/models:ro",
        BASE_IMAGE,
        "stat",
        "-c",
        "%i %Y %s",
        "/models/smollm2-135m-instruct/model.safetensors",
    ).strip()


def test_the_model_volume_survives_a_restart(stack: Stack) -> None:
    before = model_file_identity(stack)

    stack.project.run("down", timeout_s=300)
    assert stack.project.labelled("container") == []
    stack.project.run("up", "-d", timeout_s=600)
    stack.project.wait_healthy(SERVING, timeout_s=600)

    # model-init found the converted model and wrote nothing: the very file, untouched.
    assert model_file_identity(stack) == before
    assert burst(stack, "restarted") <= {"worker-1", "worker-2"}


def test_down_with_volumes_removes_everything(stack: Stack) -> None:
    assert stack.project.labelled("volume"), "the stack made no volume to remove"

    stack.project.run("down", "-v", "--remove-orphans", timeout_s=300)

    assert stack.project.labelled("container") == []
    assert stack.project.labelled("volume") == []
    assert stack.project.labelled("network") == []
