"""Serving throughput and latency: the engine in-process, the worker over gRPC, and router + Redis + worker.

N concurrent streaming clients (grpc.aio, one stream and one connection per client, all at once) each
send requests back to back (enough rounds for ``--min-requests`` per cell). Two workloads, both with
``ignore_eos`` so every request generates exactly ``--new-tokens``:

- ``unique``: random ``--prompt-len``-token prompts, nothing shared;
- ``shared_prefix``: one ``--prefix-len``-token prefix per cell plus ``--suffix-len`` unique tokens.

Paths, each on the same shapes and the same engine settings:

- ``in_process``: the worker's own engine builder and config, driven by ``Engine.submit/step`` in this
  process (no gRPC): the ceiling the serving path is measured against;
- ``worker``: ``WorkerService.Generate`` straight to the worker process;
- ``router``: ``RouterService.Generate`` through a router process with a real redis-server ledger;
- ``http`` (only with ``--paths ... http``): the same router's OpenAI-compatible HTTP API, streamed
  as server-sent events (bench/serving_http_client.py): HTTP streaming against gRPC, front door only.

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

    .venv/bin/python bench/serving_bench.py --quick                      # CPU, ~3 min on 2 cores
    python3 bench/serving_bench.py --shape smollm2-135m --device cuda --dtype bfloat16 \\
        --backend triton --tokenizer-dir DIR --concurrency 1 32 128 256   # GPU, random weights
    python3 bench/serving_bench.py --model-dir /path/to/smollm2 ...       # a real model

Writes ``<out-dir>/serving_<tag>.json`` (aggregates only) and ``serving_<tag>.md``; ``--raw FILE``
also writes per-request records (not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import RESULTS_DIR, environment, markdown_table  # noqa: E402
from bench.smollm2_shape import SMOLLM2_135M_HF_CONFIG  # noqa: E402
from radixfair.auth import ApiKeyConfig, bearer_metadata  # noqa: E402
from radixfair.client import build_prompt, build_sampling  # noqa: E402
from radixfair.local_stack import LocalStack, LocalStackConfig  # noqa: E402
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer, free_loopback_port  # noqa: E402
from radixfair.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402

PATHS = ("in_process", "worker", "router", "http")
WORKLOADS = ("unique", "shared_prefix")
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
STATUS_POLL_S = 0.25
STARTUP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RequestSpec:
    request_id: str
    client: int
    prompt: list[int]
    max_tokens: int


@dataclass
class RequestRecord:
    """What one client saw of one request (times in time.monotonic seconds)."""

    request_id: str
    start: float
    end: float = 0.0
    first: float | None = None
    tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ok: bool = False
    error: str = ""
    last: float | None = None
    token_gaps: list[float] = field(default_factory=list)
    message_gaps: list[float] = field(default_factory=list)

    def on_tokens(self, count: int, now: float) -> None:
        """A message (or engine step output) carrying ``count`` new tokens arrived at ``now``."""
        if not count:
            return
        if self.last is None:
            self.first = now
        else:
            self.message_gaps.append(now - self.last)
            self.token_gaps.extend([(now - self.last) / count] * count)
        self.tokens += count
        self.last = now


# ---- workloads --------------------------------------------------------------------------------


def cell_requests(args: argparse.Namespace, workload: str, concurrency: int, seed: int) -> list[RequestSpec]:
    """``rounds`` requests per client, each prompt unique past the (per-cell) shared prefix."""
    rounds = max(1, -(-args.min_requests // concurrency))
    rng = np.random.default_rng(seed)
    prefix = rng.integers(1000, 40000, args.prefix_len).tolist() if workload == "shared_prefix" else []
    unique_len = args.suffix_len if workload == "shared_prefix" else args.prompt_len
    return [
        RequestSpec(
            f"s{seed}-c{client}-r{r}",
            client,
            prefix + rng.integers(1000, 40000, unique_len).tolist(),
            args.new_tokens,
        )
        for r in range(rounds)
        for client in range(concurrency)
    ]


def cell_seed(path: str, workload: str, concurrency: int, warmup: bool = False) -> int:
    return (
        1_000_000 * (1 + PATHS.index(path))
        + 1000 * (1 + WORKLOADS.index(workload))
        + concurrency
        + (100_000 if warmup else 0)  # above any concurrency
    )


def by_client(specs: Sequence[RequestSpec]) -> dict[int, list[RequestSpec]]:
    out: dict[int, list[RequestSpec]] = {}
    for spec in specs:
        out.setdefault(spec.client, []).append(spec)
    return out


# ---- clients over gRPC ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    path: str  # "worker" or "router"
    address: str
    keys: tuple[str, ...]  # API key of tenant i (router path)
    timeout_s: float
    # Router replicas sharing one Redis ledger (--routers): client i talks to replica i mod n.
    replicas: tuple[str, ...] = ()

    def address_for(self, client: int) -> str:
        return self.replicas[client % len(self.replicas)] if self.replicas else self.address


async def stream_one(target: Target, stub: object, spec: RequestSpec) -> RequestRecord:
    tenant = spec.client % len(target.keys)
    prompt = build_prompt(spec.prompt)
    sampling = build_sampling(max_tokens=spec.max_tokens, ignore_eos=True)
    record = RequestRecord(spec.request_id, time.monotonic())
    if target.path == "worker":
        request = worker_pb2.GenerateRequest(
            request_id=spec.request_id, client_id=f"tenant-{tenant}", prompt=prompt, sampling=sampling
        )
        call = stub.Generate(request, timeout=target.timeout_s)  # type: ignore[attr-defined]
    else:
        request = router_pb2.RouterServiceGenerateRequest(
            request_id=spec.request_id, prompt=prompt, sampling=sampling
        )
        metadata = bearer_metadata(target.keys[tenant])
        call = stub.Generate(request, metadata=metadata, timeout=target.timeout_s)  # type: ignore[attr-defined]
    try:
        async for message in call:
            now = time.monotonic()
            if message.HasField("delta"):
                record.on_tokens(len(message.delta.token_ids), now)
            elif message.HasField("result"):
                usage = message.result.usage
                record.prompt_tokens, record.cached_tokens = usage.prompt_tokens, usage.cached_tokens
                record.ok = usage.completion_tokens == spec.max_tokens == record.tokens
                if not record.ok:
                    record.error = f"completion_tokens {usage.completion_tokens}, streamed {record.tokens}"
    except grpc.aio.AioRpcError as error:
        record.error = f"{error.code().name}: {error.details()}"
    record.end = time.monotonic()
    return record


async def run_clients(
    target: Target, specs: Sequence[RequestSpec], ready: object = None
) -> list[RequestRecord]:
    """One channel (own connection) and one stream at a time per client; all clients at once."""
    stub_type = (
        worker_pb2_grpc.WorkerServiceStub if target.path == "worker" else router_pb2_grpc.RouterServiceStub
    )
    clients = by_client(specs)
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = {c: grpc.aio.insecure_channel(target.address_for(c), options=options) for c in clients}
    try:
        # Bounded: a wrong address would otherwise wait for a connection forever.
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels.values())), 60)
        if ready is not None:  # a multiprocessing barrier: start with the other client processes
            await asyncio.to_thread(ready.wait, 300)  # type: ignore[attr-defined]

        async def client(index: int) -> list[RequestRecord]:
            stub = stub_type(channels[index])
            return [await stream_one(target, stub, spec) for spec in clients[index]]

        results = await asyncio.gather(*(client(c) for c in clients))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels.values()))
    return [r for records in results for r in records]


def _client_process(target: Target, specs: list[RequestSpec], ready: object, results: object) -> None:
    try:
        records = asyncio.run(run_clients(target, specs, ready))
        results.put(("ok", [asdict(r) for r in records]))  # type: ignore[attr-defined]
    except BaseException as error:  # the parent must hear of it, or it would wait for this share
        ready.abort()  # type: ignore[attr-defined]
        results.put(("error", f"{type(error).__name__}: {error}"))  # type: ignore[attr-defined]
        raise


async def run_cell_grpc(target: Target, specs: list[RequestSpec], procs: int) -> list[RequestRecord]:
    """Spreads the clients over ``procs`` processes so the load generator is not the bottleneck."""
    clients = sorted(by_client(specs))
    procs = max(1, min(procs, len(clients)))
    if procs == 1:
        return await run_clients(target, specs)
    ctx = mp.get_context("spawn")  # the parent holds gRPC (and maybe CUDA) state: never fork it
    ready, results = ctx.Barrier(procs), ctx.Queue()
    shares = [{c for c in clients if c % procs == p} for p in range(procs)]
    children = [
        ctx.Process(
            target=_client_process, args=(target, [s for s in specs if s.client in share], ready, results)
        )
        for share in shares
    ]
    for child in children:
        child.start()
    rounds = max(len(s) for s in by_client(specs).values())
    try:
        collected = [
            await asyncio.to_thread(results.get, True, target.timeout_s * rounds + 120) for _ in children
        ]
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    failures = [payload for kind, payload in collected if kind == "error"]
    if failures:
        raise RuntimeError(f"a client process failed: {failures[0]}")
    return [RequestRecord(**r) for _, batch in collected for r in batch]


class DegradedWatch:
    """Counts the router's flips into degraded mode by polling GetStatus while a cell runs."""

    def __init__(self, address: str, key: str) -> None:
        self._address, self._key = address, key
        self.transitions = 0
        self.polls = 0
        self.poll_errors = 0
        self.connected_at_end: bool | None = None

    async def run(self, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self._address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            previous = True
            while True:
                try:
                    status = await stub.GetStatus(
                        router_pb2.GetStatusRequest(), metadata=bearer_metadata(self._key), timeout=5
                    )
                    self.polls += 1
                    if previous and not status.shared_state_connected:
                        self.transitions += 1
                    previous = self.connected_at_end = status.shared_state_connected
                except grpc.aio.AioRpcError:
                    self.poll_errors += 1
                if stop.is_set():
                    return
                try:
                    await asyncio.wait_for(stop.wait(), STATUS_POLL_S)
                except TimeoutError:
                    pass


# ---- the engine in-process --------------------------------------------------------------------


def build_in_process_engine(settings: dict[str, object]) -> object:
    """The worker's engine, built by the worker's builder from the worker's config and settings."""
    import torch

    from radixfair.config_loading import load_config
    from radixfair_worker.config import WorkerConfig
    from radixfair_worker.engine_builder import build_engine
    from radixfair_worker.model_store import resolve_model_dir

    config = load_config(WorkerConfig, env={}, overrides=settings)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    return build_engine(config.engine, resolve_model_dir(config.model, Path(config.cache_dir))).engine


def run_cell_in_process(engine: object, specs: list[RequestSpec], tenants: int) -> list[RequestRecord]:
    """Closed loop like the gRPC clients: each client submits its next request when one finishes."""
    from radixfair_worker.request import Request, SamplingConfig

    queues = {c: list(reversed(s)) for c, s in by_client(specs).items()}
    live: dict[int, tuple[int, RequestRecord]] = {}

    def submit(client: int) -> None:
        spec = queues[client].pop()
        sampling = SamplingConfig(max_tokens=spec.max_tokens, ignore_eos=True)
        request = Request(spec.request_id, f"tenant-{client % tenants}", list(spec.prompt), sampling)
        live[id(request)] = (client, RequestRecord(spec.request_id, time.monotonic()))
        engine.submit(request)  # type: ignore[attr-defined]

    for client in queues:
        submit(client)
    done: list[RequestRecord] = []
    while engine.has_work():  # type: ignore[attr-defined]
        outputs = engine.step()  # type: ignore[attr-defined]
        now = time.monotonic()
        for out in outputs:
            client, record = live[id(out.request)]
            record.on_tokens(len(out.new_token_ids), now)
            if out.finished:
                request = out.request
                record.end = now
                record.prompt_tokens = len(request.prompt_ids)
                record.cached_tokens = request.num_cached_tokens
                record.ok = record.tokens == len(request.output_ids) == request.sampling.max_tokens
                done.append(record)
                del live[id(request)]
                if queues[client]:
                    submit(client)
    return done


# ---- aggregation and report -------------------------------------------------------------------


def summarize(records: Sequence[RequestRecord]) -> dict[str, object]:
    ok = [r for r in records if r.ok]
    wall = max(r.end for r in records) - min(r.start for r in records) if records else 0.0
    ttft = [1e3 * (r.first - r.start) for r in ok if r.first is not None]
    token_gaps = [1e3 * g for r in ok for g in r.token_gaps]
    message_gaps = [1e3 * g for r in ok for g in r.message_gaps]
    prompt = sum(r.prompt_tokens for r in ok)

    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    return {
        "requests": len(records),
        "completed": len(ok),
        "errors": sorted({r.error for r in records if r.error})[:5],
        "output_tokens": sum(r.tokens for r in ok),
        "wall_s": wall,
        "out_tok_s": sum(r.tokens for r in ok) / wall if wall else None,
        "req_s": len(ok) / wall if wall else None,
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p99_ms": pct(ttft, 99),
        "itl_p99_ms": pct(token_gaps, 99),
        "itl_mean_ms": float(np.mean(token_gaps)) if token_gaps else None,
        "message_gap_p99_ms": pct(message_gaps, 99),
        "cache_hit_rate": sum(r.cached_tokens for r in ok) / prompt if prompt else None,
    }


COLUMNS = [
    "path",
    "workload",
    "concurrency",
    "completed",
    "out_tok_s",
    "vs_in_process",
    "req_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p99_ms",
    "cache_hit_rate",
    "degraded_transitions",
]


def add_ratios(rows: list[dict[str, object]]) -> None:
    base = {(r["workload"], r["concurrency"]): r["out_tok_s"] for r in rows if r["path"] == "in_process"}
    for row in rows:
        reference = base.get((row["workload"], row["concurrency"]))
        row["vs_in_process"] = row["out_tok_s"] / reference if reference and row["out_tok_s"] else None


DERIVED_COLUMNS = [
    "path",
    "concurrency",
    "shared_vs_unique_tok_s",
    "router_added_ttft_p50_ms",
    "router_added_itl_mean_ms",
    "router_vs_worker_tok_s",
    "http_vs_grpc_tok_s",
    "http_added_ttft_p50_ms",
]


def derived_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """What issue 11's targets compare: shared prefix against unique, and the router against the worker."""
    cell = {(r["path"], r["workload"], r["concurrency"]): r for r in rows}
    out = []
    for path, workload, concurrency in cell:
        if workload != "unique":
            continue
        unique, shared = cell[(path, "unique", concurrency)], cell.get((path, "shared_prefix", concurrency))
        row: dict[str, object] = {"path": path, "concurrency": concurrency}
        row["shared_vs_unique_tok_s"] = _ratio(shared and shared["out_tok_s"], unique["out_tok_s"])
        worker = cell.get(("worker", "unique", concurrency))
        if path == "router" and worker is not None:
            row["router_added_ttft_p50_ms"] = _difference(unique["ttft_p50_ms"], worker["ttft_p50_ms"])
            row["router_added_itl_mean_ms"] = _difference(unique["itl_mean_ms"], worker["itl_mean_ms"])
            row["router_vs_worker_tok_s"] = _ratio(unique["out_tok_s"], worker["out_tok_s"])
        if path == "http":
            from bench.serving_http_client import http_vs_grpc  # here: it imports this module

            row.update(http_vs_grpc(unique, cell.get(("router", "unique", concurrency))))
        out.append(row)
    return out


def _source_differs_from_commit() -> bool | None:
    """Whether this script has changes not in the commit the report names (None: no git here)."""
    try:
        diff = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", Path(__file__).name], cwd=Path(__file__).parent
        )
    except OSError:
        return None
    return {0: False, 1: True}.get(diff.returncode)


def _ratio(a: object, b: object) -> float | None:
    return a / b if isinstance(a, float) and isinstance(b, float) and b else None


def _difference(a: object, b: object) -> float | None:
    return a - b if isinstance(a, float) and isinstance(b, float) else None


def write_report(args: argparse.Namespace, rows: list[dict[str, object]], meta: dict[str, object]) -> Path:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(("torch", "grpcio", "protobuf", "triton", "transformers", "redis"))
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    env["bench_source_differs_from_commit"] = _source_differs_from_commit()
    name = f"serving_{args.tag}"
    (out_dir / f"{name}.json").write_text(
        json.dumps(
            {**env, "command": command, **meta, "rows": rows, "derived": derived_rows(rows)},
            indent=2,
            default=str,
        )
    )
    machine = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)  # type: ignore[union-attr]
    lines = [
        f"# {name}",
        "",
        f"{env['date']} · {machine['processor']} ({machine['cpus']} cpus,"  # type: ignore[index]
        f" load {machine['load_average']}) · GPU: {machine['gpu'] or 'none'}"  # type: ignore[index]
        f" · Python {env['python']} · {versions} · commit {env['git_commit']}",
        "",
        f"`{command}`",
        "",
        markdown_table(rows, COLUMNS),
        "",
        "Unique-prompt cells against each other: shared_prefix over unique tokens/s per path, and what the",
        "router adds to the worker path (TTFT p50, mean inter-token time, tokens/s ratio):",
        "",
        markdown_table(derived_rows(rows), DERIVED_COLUMNS),
        "",
        str(meta["notes"]),
    ]
    failed = [r for r in rows if r["completed"] != r["requests"]]
    if failed:
        lines += ["", "Requests that did not complete (first errors of each cell):", ""]
        lines += [f"- {r['path']}/{r['workload']}/{r['concurrency']}: {r['errors']}" for r in failed]
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


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
    from radixfair_worker.model_store import PACKAGED_MODEL, resolve_model_dir

    return resolve_model_dir(PACKAGED_MODEL, Path(cache_dir))


def worker_settings(args: argparse.Namespace, model_dir: Path) -> dict[str, object]:
    """One set of settings: the worker process gets them as --set flags, the in-process engine as config."""
    longest = max(args.prompt_len, args.prefix_len + args.suffix_len) + args.new_tokens
    top = max(args.concurrency)
    running = min(top, args.max_running)
    batched = max(2048 if args.device == "cuda" else 512, running)
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
        self, settings: dict[str, object], worker_id: str, logs: Path, startup_timeout_s: float
    ) -> None:
        port = free_loopback_port()
        self.address, self.worker_id = f"127.0.0.1:{port}", worker_id
        log_path = logs / f"{worker_id}.log"
        flags = {**settings, "port": port, "worker_id": worker_id, "metrics_port": 0}
        args = [arg for key, value in flags.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "radixfair_worker", *args], stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + startup_timeout_s
        while not _is_serving(self.address):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker did not start serving on {self.address}; see {log_path}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)


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


@contextlib.contextmanager
def started_paths(args: argparse.Namespace, settings: dict[str, object], logs: Path) -> Iterator[Paths]:
    """The in-process engine, then the worker processes, then Redis + a router in front of them.

    The router lists the workers statically, as deploy/config/router.yaml does, so the worker path
    (straight to the first worker) and the router path are served by the same worker processes.
    Everything is stopped on the way out, the router first.
    """
    keys = tuple(f"serving-bench-key-{i}" for i in range(args.tenants))
    paths = Paths()
    with contextlib.ExitStack() as running:
        if "in_process" in args.paths:
            paths.engine = build_in_process_engine(settings)
        workers: list[WorkerProcess] = []
        for index in range(args.workers if {"worker", "router", "http"} & set(args.paths) else 0):
            workers.append(WorkerProcess(settings, f"worker-{index}", logs, STARTUP_TIMEOUT_S))
            running.callback(workers[-1].stop)
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
    """One cell; ``results`` None is a warm-up (its own prompts, nothing recorded)."""
    seed = cell_seed(path, workload, concurrency, warmup=results is None)
    specs = cell_requests(args, workload, concurrency, seed)
    procs = args.client_procs if concurrency > 16 else 1
    degraded = None
    if path == "in_process":
        records = run_cell_in_process(paths.engine, specs, args.tenants)
    elif path == "worker":
        assert paths.worker is not None
        records = await run_cell_grpc(paths.worker, specs, procs)
    elif path == "http":
        from bench.serving_http_client import run_cell_http  # here: it imports this module

        assert paths.http is not None
        records = await run_cell_http(paths.http, specs, procs)
    else:
        assert paths.router is not None and paths.router_log is not None
        watch, stop = DegradedWatch(paths.router.address, paths.router.keys[0]), asyncio.Event()
        warnings_before = _count_warnings(paths.router_log)
        poller = asyncio.create_task(watch.run(stop))
        try:
            records = await run_cell_grpc(paths.router, specs, procs)
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
    if results is not None:
        results.add(path, workload, concurrency, records, degraded)


class Results:
    """Rows so far; the report is rewritten after every cell, so a run cut short still leaves one."""

    def __init__(self, args: argparse.Namespace, meta: dict[str, object]) -> None:
        self._args, self._meta, self._started = args, meta, time.monotonic()
        self.rows: list[dict[str, object]] = []
        self.raw: dict[str, list[dict[str, object]]] = {}

    def add(
        self, path: str, workload: str, concurrency: int, records: list[RequestRecord], degraded: dict | None
    ) -> None:
        row: dict[str, object] = {
            "path": path,
            "workload": workload,
            "concurrency": concurrency,
            **summarize(records),
            "degraded_transitions": degraded["transitions"] if degraded else None,
            "degraded": degraded,
        }
        self.rows.append(row)
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
    return " ".join(
        [
            f"Model: {model}; {args.device}/{args.dtype}, {args.backend} kernels.",
            f"unique = {args.prompt_len}-token prompts; shared_prefix = one {args.prefix_len}-token prefix",
            f"per cell + {args.suffix_len} unique tokens; {args.new_tokens} new tokens each, ignore_eos.",
            "Each of `concurrency` clients streams its requests back to back (requests per client, by",
            f"concurrency: {rounds}). out_tok_s and req_s over the cell's wall time, first request sent to",
            "last result. TTFT and inter-token time (itl: a message of k tokens counts as k gaps of gap/k)",
            "as the client sees them; in_process sees tokens when Engine.step returns them.",
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
