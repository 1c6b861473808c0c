"""Serving throughput and latency: the engine in-process, the worker over gRPC, and router + Redis + worker.

N concurrent streaming clients (grpc.aio, one stream and one connection per client, all at once) each
send requests back to back (enough rounds for ``--min-requests`` per cell; with ``--cell-duration-s D``
instead for D seconds, a closed loop whose tokens/s, requests/s and TTFT are taken over the steady
window from every client's first token to D, so neither the ramp nor the tail counts). Two workloads,
both with ``ignore_eos`` so every request generates exactly ``--new-tokens``:

- ``unique``: random ``--prompt-len``-token prompts, nothing shared;
- ``shared_prefix``: one ``--prefix-len``-token prefix per cell plus ``--suffix-len`` unique tokens.

Paths, each on the same shapes and the same engine settings:

- ``in_process``: the worker's own engine builder and config, driven by ``Engine.submit/step`` in this
  process (no gRPC): the ceiling the serving path is measured against;
- ``worker``: ``WorkerService.Generate`` straight to the worker process;
- ``router``: ``RouterService.Generate`` through a router process with a real redis-server ledger;
- ``http`` (only with ``--paths ... http``): the same router's OpenAI-compatible HTTP API, streamed
  as server-sent events (bench/engine/serving_http_client.py): HTTP streaming against gRPC, front door only.

Workers are started as ``python -m radixfair_worker --set ...``; Redis and the router (``python -m
radixfair_router``) through ``radixfair.local_stack``, the router listing the workers statically. So
only entry points, config keys and the gRPC contract are relied on (the in-process path also uses the
worker's ``build_engine`` and ``Engine.submit/step``). Prompts differ per path and cell, so no cell hits
a prefix cached by another; the paths run in turn within each cell, so load drift hits all alike.

Reported per cell: output tokens/s and requests/s over the cell's wall time, TTFT p50/p99 and
inter-token p99 seen by the client (a message carrying k tokens counts as k gaps of gap/k; the raw
message gap p99 is in the JSON), the prompt cache hit rate (cached / prompt tokens, from each result's
usage), and for the router the degraded-mode transitions (GetStatus.shared_state_connected polled
every 0.25 s: a degraded spell lasts at least the ledger's reconnect interval, 0.5 s by default) and the
router log's "shared state store unreachable" warnings as a cross-check.

    .venv/bin/python bench/engine/serving_bench.py --quick                      # CPU, ~3 min on 2 cores
    python3 bench/engine/serving_bench.py --shape smollm2-135m --device cuda --dtype bfloat16 \\
        --backend triton --tokenizer-dir DIR --concurrency 1 32 128 256   # GPU, random weights
    python3 bench/engine/serving_bench.py --model-dir /path/to/smollm2 ...       # a real model

Writes ``<out-dir>/serving_<tag>.json`` (aggregates only) and ``serving_<tag>.md``; ``--raw FILE``
also writes per-request records (not committed).

This file is the orchestration (processes, cells, the CLI); the load is bench/engine/serving_clients.py, the
in-process ceiling bench/engine/serving_in_process.py, the figures and report bench/engine/serving_report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# The parts, re-exported: the profilers, the HTTP client and the GPU scripts use them through here.
from bench.engine.engine_occupancy import (  # noqa: E402
    SCHED_FIELDS,
    STEADY_ROLES,
    WORKER_LOOP_EVERY,
    OccupancyProbe,
    engine_reader,
    engine_stats,
    scraped_stats,
    worker_reader,
)
from bench.engine.process_cpu import CellCpu, engine_loop_sched  # noqa: E402
from bench.engine.process_cpu import sample as process_cpu_sample  # noqa: E402
from bench.engine.serving_clients import (  # noqa: E402, F401
    PATHS,
    STATUS_POLL_S,
    WORKLOADS,
    ClosedLoop,
    DegradedWatch,
    RequestRecord,
    RequestSpec,
    Target,
    by_client,
    cell_requests,
    cell_seed,
    run_cell_grpc,
    stream_one,
    timed_cell,
)
from bench.engine.serving_in_process import build_in_process_engine, run_cell_in_process  # noqa: E402, F401
from bench.engine.serving_report import (  # noqa: E402, F401
    COLUMNS,
    add_ratios,
    steady_window,
    summarize,
    write_report,
)
from bench.report import RESULTS_DIR  # noqa: E402
from bench.smollm2_shape import SMOLLM2_135M_HF_CONFIG  # noqa: E402
from radixfair.auth import ApiKeyConfig, bearer_metadata  # noqa: E402
from radixfair.local_stack import LocalStack, LocalStackConfig  # noqa: E402
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer, free_loopback_port  # noqa: E402
from radixfair.v1 import router_pb2, router_pb2_grpc  # noqa: E402

SHAPES = {
    "smollm2-135m": SMOLLM2_135M_HF_CONFIG,
    # A 2-layer model of the same vocabulary: the CPU runs measure the serving path, not the math.
    "tiny": {
        **SMOLLM2_135M_HF_CONFIG,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    },
}
QUICK = {
    "shape": "tiny",
    "concurrency": [1, 4, 16],
    "prompt_len": 32,
    "prefix_len": 128,
    "suffix_len": 16,
    "new_tokens": 16,
    "min_requests": 8,
    "warmup_requests": 2,
    "torch_threads": 1,
    "tag": "cpu_quick",
}
DEGRADED_WARNING = "shared state store unreachable"
STARTUP_TIMEOUT_S = 600.0


# ---- setup ------------------------------------------------------------------------------------


def prepare_model(args: argparse.Namespace, work_dir: Path) -> Path:
    """The model directory the worker and the in-process engine load (random weights unless --model-dir)."""
    if args.model_dir:
        return Path(args.model_dir)
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer_dir = Path(args.tokenizer_dir) if args.tokenizer_dir else packaged_model_dir(args.cache_dir)
    config = dict(SHAPES[args.shape])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config))
    target = work_dir / f"{args.shape}-random"
    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(config))
    for source in tokenizer_dir.iterdir():
        if source.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(source, target / source.name)
    return target


def packaged_model_dir(cache_dir: str) -> Path:
    from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir

    return resolve_model_dir(PACKAGED_MODEL, Path(cache_dir))


def worker_settings(args: argparse.Namespace, model_dir: Path) -> dict[str, object]:
    """One set of settings: the worker process gets them as --set flags, the in-process engine as config."""
    longest = max(args.prompt_len, args.prefix_len + args.suffix_len) + args.new_tokens
    top = max(args.concurrency)
    running = min(top, args.max_running)
    # On the GPU a 256-stream wave re-arrives at once (equal lengths): at 2,048 tokens a step its
    # 32k prefill tokens took 16 eager steps, the TTFT tail (serving_gpu_h200_s7 against _batched8192:
    # worker TTFT p99 409 -> 283 ms unique, 591 -> 386 shared, tokens/s up on both).
    batched = max(8192 if args.device == "cuda" else 512, running)
    pages = max(512, 2 * -(-(top * longest + args.prefix_len) // 16))
    settings: dict[str, object] = {
        "model": str(model_dir),
        "torch_threads": args.torch_threads,
        "engine.device": args.device,
        "engine.dtype": args.dtype,
        "engine.backend": args.backend,
        "engine.page_size": 16,
        "engine.num_pages": pages,
        "engine.max_running_requests": running,
        "engine.max_batched_tokens": batched,
        "engine.max_waiting_requests": top * 2 + args.warmup_requests,
        "engine.cuda_graph_max_batch": running,
    }
    return {**settings, **parse_sets(args.worker_set)}


def parse_sets(items: Sequence[str]) -> dict[str, object]:
    """``key=value`` pairs, values read as YAML like the services' own ``--set``."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


class WorkerProcess:
    """``python -m radixfair_worker`` with the bench's settings, started and stopped by the bench."""

    def __init__(
        self,
        settings: dict[str, object],
        worker_id: str,
        logs: Path,
        startup_timeout_s: float,
        entry: Sequence[str] = ("-m", "radixfair_worker"),
        wait: bool = True,
    ) -> None:
        """``entry``: what follows the interpreter on the command line (a probed worker passes a script).

        ``wait`` False: returns once started; ``wait_until_serving`` then waits for it to serve.
        """
        port, metrics_port = free_loopback_port(), free_loopback_port()
        self.address, self.worker_id = f"127.0.0.1:{port}", worker_id
        # Its engine loop's step counters are read from here (engine_occupancy.scraped_stats).
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        log_path = logs / f"{worker_id}.log"
        self._log_path, self._startup_timeout_s = log_path, startup_timeout_s
        flags = {**settings, "port": port, "worker_id": worker_id, "metrics_port": metrics_port}
        args = [arg for key, value in flags.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [sys.executable, *entry, *args], stdout=log_file, stderr=subprocess.STDOUT
            )
        self._started = time.monotonic()
        if wait:
            self.wait_until_serving()

    def wait_until_serving(self) -> None:
        deadline = self._started + self._startup_timeout_s
        while not _is_serving(self.address):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker did not start serving on {self.address}; see {self._log_path}")
            time.sleep(0.3)

    def stop(self) -> None:
        stop_process(self._process)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it has not exited within 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _is_serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


# ---- the run ----------------------------------------------------------------------------------


@dataclass
class Paths:
    """What each path's cells run against."""

    engine: object | None = None
    worker: Target | None = None
    router: Target | None = None
    router_log: Path | None = None
    http: Target | None = None  # address: the router's HTTP API base URL
    worker_addresses: tuple[str, ...] = ()
    worker_metrics_urls: tuple[str, ...] = ()


@contextlib.contextmanager
def started_paths(args: argparse.Namespace, settings: dict[str, object], logs: Path) -> Iterator[Paths]:
    """The worker processes and the in-process engine, then Redis + a router in front of the workers.

    The workers start first and boot while the in-process engine is built (all of them at once:
    their start-up is most of a small run's time); none is measured before every path is up.

    The router lists the workers statically, as deploy/config/router.yaml does, so the worker path
    (straight to the first worker) and the router path are served by the same worker processes.
    Everything is stopped on the way out, the router first.
    """
    keys = tuple(f"serving-bench-key-{i}" for i in range(args.tenants))
    paths = Paths()
    with contextlib.ExitStack() as running:
        workers: list[WorkerProcess] = []
        for index in range(args.workers if {"worker", "router", "http"} & set(args.paths) else 0):
            workers.append(WorkerProcess(settings, f"worker-{index}", logs, STARTUP_TIMEOUT_S, wait=False))
            running.callback(workers[-1].stop)
        if "in_process" in args.paths:
            paths.engine = build_in_process_engine(settings)
        for worker in workers:
            worker.wait_until_serving()
        paths.worker_addresses = tuple(w.address for w in workers)
        paths.worker_metrics_urls = tuple(w.metrics_url for w in workers)
        if "worker" in args.paths:
            paths.worker = Target("worker", workers[0].address, keys, args.request_timeout_s)
        if {"router", "http"} & set(args.paths):
            static = [{"worker_id": w.worker_id, "address": w.address} for w in workers]
            redis_url = ""  # LocalStack's own: appendonly with appendfsync always
            if args.redis_persistence == "none":
                # As the shipped deployments run it (Helm and compose default to no persistence):
                # an fsync per ledger write is a disk's latency, not the router's.
                redis = RedisServer(RedisLaunchConfig(persistent=False)).start()
                running.callback(redis.stop)
                redis_url = redis.url
            stack_config = LocalStackConfig(
                run_dir=logs / "stack",
                model=str(settings["model"]),
                workers=0,
                router_port=free_loopback_port(),
                router_http_port=free_loopback_port() if "http" in args.paths else 0,
                policy=args.policy,
                api_keys=tuple(ApiKeyConfig(k, f"tenant-{i}", 1.0) for i, k in enumerate(keys)),
                router_settings={"registry.workers": static, **parse_sets(args.router_set)},
                startup_timeout_s=STARTUP_TIMEOUT_S,
                redis_url=redis_url,
            )
            stack = LocalStack(stack_config)
            stack.start()
            running.callback(stack.stop)
            wait_for_healthy_workers(stack.address, keys[0], len(workers))
            replicas = [stack.address]
            for index in range(1, args.routers):
                # Further router processes on the same Redis ledger and workers, as replicas behind
                # a load balancer are: workers=0 starts only a router.
                replica = LocalStack(
                    replace(
                        stack_config,
                        run_dir=logs / f"stack-router-{index}",
                        router_port=free_loopback_port(),
                        router_http_port=0,
                        redis_url=stack.redis_url,
                    )
                )
                replica.start()
                running.callback(replica.stop)
                wait_for_healthy_workers(replica.address, keys[0], len(workers))
                replicas.append(replica.address)
            paths.router = Target(
                "router",
                stack.address,
                keys,
                args.request_timeout_s,
                tuple(replicas) if args.routers > 1 else (),
            )
            paths.router_log = logs / "stack" / "router.log"
            paths.http = Target("http", stack.http_api, keys, args.request_timeout_s)
        yield paths


def wait_for_healthy_workers(address: str, key: str, count: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.GetStatus(
                    router_pb2.GetStatusRequest(), metadata=bearer_metadata(key), timeout=5
                )
                if sum(w.healthy for w in status.workers) >= count:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise RuntimeError(f"the router at {address} did not see {count} healthy worker(s)")


async def run_all(args: argparse.Namespace, paths: Paths, results: Results) -> None:
    """Warm-up of every path, then every cell, the paths in turn within each workload and concurrency.

    Interleaved so that load drift on a shared machine hits every path alike.
    """
    for workload in args.workloads:
        for path in args.paths:
            await run_cell(args, paths, path, workload, args.warmup_requests, None)
    for workload in args.workloads:
        for concurrency in args.concurrency:
            for path in args.paths:
                await run_cell(args, paths, path, workload, concurrency, results)


async def run_cell(
    args: argparse.Namespace,
    paths: Paths,
    path: str,
    workload: str,
    concurrency: int,
    results: Results | None,
) -> None:
    """One cell; ``results`` None is a warm-up (its own prompts, nothing recorded).

    With ``--cell-duration-s`` a measured cell is timed (serving_clients.ClosedLoop): every client
    streams requests back to back for that long; a warm-up keeps its count of requests.
    """
    seed = cell_seed(path, workload, concurrency, warmup=results is None)
    plan: ClosedLoop | None = None
    if args.cell_duration_s and results is not None:
        plan = timed_cell(args, workload, concurrency, seed)
        specs = [plan.spec(client, 0) for client in range(concurrency)]
    else:
        specs = cell_requests(args, workload, concurrency, seed)
    procs = args.client_procs if concurrency > 16 else 1
    degraded = None
    cpu = CellCpu()
    cpu.start()
    probe, close_probe = _occupancy_probe(paths, path)
    if path == "in_process":
        records = run_cell_in_process(paths.engine, specs, args.tenants, plan)
    elif path == "worker":
        assert paths.worker is not None
        records = await run_cell_grpc(paths.worker, specs, procs, plan)
    elif path == "http":
        from bench.engine.serving_http_client import (
            run_cell_http,  # here: it needs httpx, only for the http path
        )

        assert paths.http is not None
        records = await run_cell_http(paths.http, specs, procs, plan)
    else:
        assert paths.router is not None and paths.router_log is not None
        watch, stop = DegradedWatch(paths.router.address, paths.router.keys[0]), asyncio.Event()
        warnings_before = _count_warnings(paths.router_log)
        poller = asyncio.create_task(watch.run(stop))
        try:
            records = await run_cell_grpc(paths.router, specs, procs, plan)
        finally:
            stop.set()
            await poller
        degraded = {
            "transitions": watch.transitions,
            "log_warnings": _count_warnings(paths.router_log) - warnings_before,
            "connected_at_end": watch.connected_at_end,
            "status_polls": watch.polls,
            "status_poll_errors": watch.poll_errors,
        }
    probe.stop()
    close_probe()
    ok = [r for r in records if r.ok]
    window = steady_window(ok, args.cell_duration_s) if plan is not None else None
    cores = {**cpu.stop(), **probe.summary(window)}
    if results is not None:
        results.add(path, workload, concurrency, records, degraded, cores)


def _occupancy_probe(paths: Paths, path: str) -> tuple[OccupancyProbe, Callable[[], None]]:
    """A started probe of the batch that serves ``path``'s cell, and what closes its channels."""
    read_loop = _loop_reader(paths, path)
    if path == "in_process":
        return OccupancyProbe(engine_reader(paths.engine), read_loop).start(), lambda: None
    read, close = worker_reader(paths.worker_addresses[:1] if path == "worker" else paths.worker_addresses)
    return OccupancyProbe(read, read_loop, WORKER_LOOP_EVERY).start(), close


def _loop_reader(paths: Paths, path: str) -> Callable[[], dict[str, float]]:
    """Reads the StepStats of the engine(s) serving ``path``'s cell, and the serving roles' CPU so far."""
    if path == "in_process":
        # The cell steps the engine on this thread (run_cell_in_process); the probe reads from its own.
        loop_thread = threading.get_native_id()
        return lambda: engine_stats(paths.engine, loop_thread)
    urls = paths.worker_metrics_urls[:1] if path == "worker" else paths.worker_metrics_urls

    def read() -> dict[str, float]:
        cpu = process_cpu_sample()
        on_cpu, waiting = engine_loop_sched()
        return {
            **scraped_stats(urls),
            **{f"cpu_{role}": cpu.get(role, 0.0) for role in STEADY_ROLES},
            **dict(zip(SCHED_FIELDS, (on_cpu, waiting))),
        }

    return read


class Results:
    """Rows so far; the report is rewritten after every cell, so a run cut short still leaves one."""

    def __init__(self, args: argparse.Namespace, meta: dict[str, object]) -> None:
        self._args, self._meta, self._started = args, meta, time.monotonic()
        self.rows: list[dict[str, object]] = []
        self.raw: dict[str, list[dict[str, object]]] = {}

    def add(
        self,
        path: str,
        workload: str,
        concurrency: int,
        records: list[RequestRecord],
        degraded: dict | None,
        cores: dict[str, float | None],
    ) -> None:
        row: dict[str, object] = {
            "path": path,
            "workload": workload,
            "concurrency": concurrency,
            **summarize(records, self._args.cell_duration_s),
            "degraded_transitions": degraded["transitions"] if degraded else None,
            "degraded": degraded,
            **cores,
        }
        self.rows.append(row)
        if self._args.raw:  # per-request records (a timed cell's run to ~10^6 message times): only if asked
            self.raw[f"{path}/{workload}/{concurrency}"] = [asdict(r) for r in records]
        self.write()
        print(json.dumps({k: row.get(k) for k in COLUMNS}), file=sys.stderr, flush=True)

    def write(self) -> Path:
        add_ratios(self.rows)
        if self._args.raw:
            Path(self._args.raw).write_text(json.dumps(self.raw))
        meta = {**self._meta, "total_wall_s": time.monotonic() - self._started}
        return write_report(self._args, self.rows, meta)


def _count_warnings(log_path: Path) -> int:
    try:
        return log_path.read_text(errors="replace").count(DEGRADED_WARNING)
    except OSError:
        return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"CPU preset: {QUICK}")
    parser.add_argument("--tag", default="run", help="results go to serving_<tag>.{json,md}")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--raw", default="", help="also write per-request records here (JSON)")
    parser.add_argument("--logs-dir", default="", help="keep the router's and workers' logs here")
    # http is asked for by name: it needs the router's HTTP stack and httpx where the bench runs.
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=[p for p in PATHS if p != "http"])
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 32, 128, 256, 512])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--prefix-len", type=int, default=1024)
    parser.add_argument("--suffix-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--min-requests", type=int, default=32, help="per cell; clients repeat to reach it")
    parser.add_argument(
        "--cell-duration-s",
        type=float,
        default=0.0,
        help="timed cells: each client streams requests back to back for this long, and tokens/s, "
        "requests/s and TTFT are taken over the steady window (every stream running, to the end of "
        "the duration); 0: --min-requests per cell, over the cell's wall time",
    )
    parser.add_argument("--warmup-requests", type=int, default=16, help="per path and workload, not measured")
    parser.add_argument("--model-dir", default="", help="a real model directory (default: random weights)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m", help="random-weight shape")
    parser.add_argument(
        "--tokenizer-dir", default="", help="tokenizer for random weights (default: packaged)"
    )
    parser.add_argument("--cache-dir", default="~/.cache/radixfair/models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--max-running", type=int, default=256)
    parser.add_argument("--torch-threads", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (worker path: the first)")
    parser.add_argument(
        "--routers",
        type=int,
        default=1,
        help="router processes on one Redis ledger; the router path's clients spread over them",
    )
    parser.add_argument("--policy", default="d2lpm")
    parser.add_argument(
        "--redis-persistence",
        choices=("none", "always"),
        default="none",
        help="the ledger's redis-server: none (the shipped deployments' default) or appendfsync always",
    )
    parser.add_argument("--tenants", type=int, default=4, help="API keys the clients are spread over")
    parser.add_argument(
        "--client-procs", type=int, default=1, help="load-generator processes above 16 streams"
    )
    parser.add_argument("--request-timeout-s", type=float, default=600.0)
    parser.add_argument("--worker-set", action="append", default=[], help="extra worker setting key=value")
    parser.add_argument("--router-set", action="append", default=[], help="extra router setting key=value")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="radixfair-serving-"))
    model_dir = prepare_model(args, work_dir)
    settings = worker_settings(args, model_dir)
    results = Results(
        args,
        {
            "config": {k: v for k, v in vars(args).items() if k not in ("out_dir", "raw")},
            "model": str(model_dir) if args.model_dir else f"random weights, shape {args.shape}",
            "worker_settings": {k: v for k, v in settings.items() if k != "model"},
            "notes": notes(args),
        },
    )
    logs = Path(args.logs_dir) if args.logs_dir else work_dir / "logs"
    try:
        with started_paths(args, settings, logs) as paths:
            asyncio.run(run_all(args, paths, results))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    path = results.write()
    print(path.read_text())
    return path


def notes(args: argparse.Namespace) -> str:
    model = args.model_dir or f"random weights, {args.shape} shape"
    rounds = {c: max(1, -(-args.min_requests // c)) for c in args.concurrency}
    if args.cell_duration_s:
        cells = [
            "Each cell is timed: each of `concurrency` clients streams requests back to back for",
            f"{args.cell_duration_s:g} s (closed loop, a new request as soon as its last one ends).",
            "out_tok_s, req_s and TTFT over the steady window: from the moment every client has its",
            "first token (ramp_s after the first request) to the end of the duration (window_s long),",
            "so neither the ramp nor the tail's drain counts; out_tok_s_wall is over the whole cell.",
        ]
    else:
        cells = [
            "Each of `concurrency` clients streams its requests back to back (requests per client, by",
            f"concurrency: {rounds}). out_tok_s and req_s over the cell's wall time, first request sent to",
            "last result.",
        ]
    return " ".join(
        [
            f"Model: {model}; {args.device}/{args.dtype}, {args.backend} kernels.",
            f"unique = {args.prompt_len}-token prompts; shared_prefix = one {args.prefix_len}-token prefix",
            f"per cell + {args.suffix_len} unique tokens; {args.new_tokens} new tokens each, ignore_eos.",
            *cells,
            "TTFT and inter-token time (itl: a message of k tokens counts as k gaps of gap/k)",
            "as the client sees them; in_process sees tokens when Engine.step returns them, and (as the",
            "worker's engine) makes no text: the worker's front detokenizes in its own process.",
            "worker_ttft_p99_ms / worker_queue_p99_ms: the worker's own figures in each result's",
            "timings (arrival in the worker's front to the first token on the engine's host / to",
            "admission into a batch); in_process: the same from the Request's stamps.",
            "vs_in_process: out_tok_s over the in-process engine's on the same workload and concurrency.",
            "degraded_transitions: the router's flips into degraded mode, seen by polling GetStatus every",
            f"{STATUS_POLL_S} s (the JSON also counts the router log's warnings). The worker path talks to",
            f"the first of {args.workers} worker process(es); the router path goes through {args.routers}",
            f"router process(es) on one real redis-server ledger (persistence: {args.redis_persistence};",
            "client i on replica i mod n), listing those",
            "workers statically and polling their load throughout, as in service. Cells run interleaved",
            "(each workload and concurrency: every path in turn), so load drift on a shared machine hits",
            "all paths alike.",
        ]
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # A `timeout` on the GPU machine sends SIGTERM: unwind, so the stack's children are stopped.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    report = json.loads(main().with_suffix(".json").read_text())
    # A cell with failed requests measured something else than the serving path: say so in the status.
    sys.exit(1 if any(r["completed"] != r["requests"] for r in report["rows"]) else 0)
