"""What the router adds to one stream's latency, phase by phase: worker-direct against router -> worker.

One worker process (tiny random Llama, as ``bench/serving_bench.py --quick``), one redis-server and
router processes in front of it, all on loopback. One client sends requests one at a time, in turn to
each target, so load drift hits all alike:

- ``worker``: ``WorkerService.Generate`` straight to the worker (the baseline);
- ``router``: ``python -m radixfair_router`` as deployed, on a redis-server started as the serving
  bench's ``LocalStack`` starts it (``appendfsync always``: every write is on disk before Redis replies);
- ``router_probed``: the same router code in a child of this script with probes around its phases
  (the ``--serve-router`` mode below: timestamps only, no behaviour changed), same Redis;
- ``router_probed_nofsync`` (with ``--redis-modes always no``): the probed router on a Redis without
  persistence, to see what the disk costs the admission and the write-ahead booking.

Probe timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on the
host), so the client's send and receive times and the router's phase times line up. Per request,
the router's time to first token splits into: inbound hop (client send -> servicer entered), front
(auth, span), tokenize queue / run / return (the thread-pool hop of ``validate_off_loop``), model
check, waiting for a healthy worker, the decision (tree estimate, the ledger's admission: one Redis
script, the rest of the D2LPM choice), forward set-up (span, trace metadata, identity signature,
request message), the worker call (router -> worker hop plus the worker's own time to first token),
the write-ahead booking of the first message, the relay to gRPC, and the outbound hop (router ->
client). The worker's own part is compared with the worker-direct TTFT. Per later message: the
router's residence time (read from the worker -> handed to gRPC) and its write-ahead booking wait.

    .venv/bin/python bench/router_overhead.py                     # CPU, ~1-2 min
    .venv/bin/python bench/router_overhead.py --tag cpu_after     # a second run, e.g. after a change
    OVERHEAD=1 bash bench/gpu_serving_session.sh                  # also on the GPU machine (see there)

Writes ``<out-dir>/router_overhead_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import serving_bench  # noqa: E402
from bench.report import RESULTS_DIR, environment, markdown_table, regenerating_command  # noqa: E402
from radixfair.auth import bearer_metadata  # noqa: E402
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer, free_loopback_port  # noqa: E402
from radixfair.v1 import router_pb2, router_pb2_grpc, worker_pb2_grpc  # noqa: E402

API_KEY = "router-overhead-key"
IDENTITY_SECRET = "router-overhead-identity"


# ---- the probed router (child process) --------------------------------------------------------


class _Probes:
    """Timestamps of named events, in order; at one stream the requests do not overlap."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        self.events.append((name, time.monotonic()))

    def around(self, owner: object, attribute: str, name: str) -> None:
        """Marks ``name:start`` / ``name:end`` around an async method or function of ``owner``."""
        original = getattr(owner, attribute)
        mark = self.mark

        @functools.wraps(original)
        async def wrapped(*args: object, **kwargs: object) -> object:
            mark(f"{name}:start")
            try:
                return await original(*args, **kwargs)
            finally:
                mark(f"{name}:end")

        setattr(owner, attribute, wrapped)

    def around_sync(self, owner: object, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)
        mark = self.mark

        @functools.wraps(original)
        def wrapped(*args: object, **kwargs: object) -> object:
            mark(f"{name}:start")
            try:
                return original(*args, **kwargs)
            finally:
                mark(f"{name}:end")

        setattr(owner, attribute, wrapped)


class _ReadProbe:
    """A worker call whose ``read`` marks when each message came in; everything else passes through."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, probes: _Probes) -> None:
        self._call, self._probes = call, probes

    async def read(self) -> object:
        message = await self._call.read()
        self._probes.mark("worker_read")
        return message

    def __getattr__(self, name: str) -> object:
        return getattr(self._call, name)


def install_probes(probes: _Probes) -> None:
    """Wraps the router's phases with timestamps (the router's code itself is not changed)."""
    from radixfair_router import cache_view as cache_view_module
    from radixfair_router import dispatch_core, ledger, live_streams, prompt_encoding, request_router, server
    from radixfair_router import worker_registry as registry_module

    mark = probes.mark
    servicer = server.RouterServicer
    generate = servicer.Generate

    async def probed_generate(self, request, context):  # noqa: ANN001
        mark("enter")
        async for message in generate(self, request, context):
            mark("yield")
            yield message

    servicer.Generate = probed_generate
    # The front door's validation step: front_door.py (shared by gRPC and HTTP), or server.py before it.
    try:
        from radixfair_router import front_door as validating
    except ImportError:
        validating = server
    probes.around(validating, "validate_off_loop", "validate")
    probes.around_sync(prompt_encoding, "validate_request", "tokenize")
    probes.around(registry_module.WorkerRegistry, "wait_for_healthy", "healthy")
    probes.around(dispatch_core.DispatchCore, "decide", "decide")
    probes.around_sync(cache_view_module.CacheView, "estimate", "estimate")
    probes.around(ledger.Ledger, "admit", "admit")
    probes.around(live_streams.LiveStreams, "booked", "booked")
    with contextlib.suppress(ImportError):  # absent before the output was booked ahead
        from radixfair_router import output_credit

        probes.around(output_credit.OutputCredit, "wait_for", "credit_wait")
    relay_call = request_router.RequestRouter._relay_call

    def probed_relay_call(self, endpoint):  # noqa: ANN001
        invoke = relay_call(self, endpoint)

        def call(*args: object, **kwargs: object) -> _ReadProbe:
            mark("call:start")
            made = invoke(*args, **kwargs)
            mark("call:end")
            return _ReadProbe(made, probes)

        return call

    request_router.RequestRouter._relay_call = probed_relay_call


def serve_probed_router(config_path: str, events_path: str) -> None:
    """The ``--serve-router`` mode: a router as ``python -m radixfair_router`` runs, with probes."""
    from radixfair.service_process import config_from_command_line, wait_for_shutdown_signal
    from radixfair_router.app import start_router
    from radixfair_router.config import RouterConfig
    from radixfair_router.gc_tuning import tune_for_routing

    probes = _Probes()
    install_probes(probes)
    config = config_from_command_line(RouterConfig, "router_overhead", "", ["--config", config_path])

    async def serve() -> None:
        running = await start_router(config)
        tune_for_routing()
        try:
            await wait_for_shutdown_signal()
        finally:
            await running.stop()

    asyncio.run(serve())
    Path(events_path).write_text(json.dumps(probes.events))


# ---- orchestration ----------------------------------------------------------------------------


class RouterProcess:
    """A router child (plain or probed) on its own port, in front of the bench's worker."""

    def __init__(
        self, name: str, work: Path, model_dir: Path, redis_url: str, worker: str, probed: bool
    ) -> None:
        self.name = name
        self.port = free_loopback_port()
        self.address = f"127.0.0.1:{self.port}"
        self.events_path = work / f"{name}.events.json"
        config = {
            "host": "127.0.0.1",
            "port": self.port,
            "tokenizer_dir": str(model_dir),
            "policy": {"name": "d2lpm"},
            # One key prefix per router: each keeps its own ledger, as if it were alone.
            "ledger": {"store": "redis", "redis_url": redis_url, "key_prefix": f"overhead-{name}"},
            "auth": {"api_keys": [{"key": API_KEY, "client_id": "tenant-0", "weight": 1.0}]},
            "registry": {"workers": [{"worker_id": "worker-0", "address": worker}]},
            "forward": {"identity_secret": IDENTITY_SECRET},
        }
        config_path = work / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        if probed:
            command = [sys.executable, __file__, "--serve-router", str(config_path), str(self.events_path)]
        else:
            command = [sys.executable, "-m", "radixfair_router", "--config", str(config_path)]
        with (work / f"{name}.log").open("ab") as log_file:
            self._process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600.0
        while not self._sees_healthy_worker():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"router {name} did not start; see {work / (name + '.log')}")
            time.sleep(0.3)

    def _sees_healthy_worker(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            try:
                status = stub.GetStatus(
                    router_pb2.GetStatusRequest(), metadata=bearer_metadata(API_KEY), timeout=5
                )
            except grpc.RpcError:
                return False
            return any(w.healthy for w in status.workers)

    def stop(self) -> None:
        serving_bench.stop_process(self._process)

    def events(self) -> list[tuple[str, float]]:
        try:
            return [tuple(e) for e in json.loads(self.events_path.read_text())]
        except OSError:
            return []


@contextlib.contextmanager
def started_stack(
    args: argparse.Namespace, work: Path
) -> Iterator[tuple[dict[str, str], list[RouterProcess]]]:
    bargs = serving_bench.parse_args(
        ["--quick", "--concurrency", "1", "--prompt-len", str(args.prompt_len),
         "--new-tokens", str(args.new_tokens), "--torch-threads", str(args.torch_threads),
         *shlex.split(args.serving_args)]
    )  # fmt: skip
    model_dir = serving_bench.prepare_model(bargs, work)
    settings = serving_bench.worker_settings(bargs, model_dir)
    with contextlib.ExitStack() as running:
        worker = serving_bench.WorkerProcess(settings, "worker-0", work / "logs", 600.0)
        running.callback(worker.stop)
        targets = {"worker": worker.address}
        routers: list[RouterProcess] = []
        for mode in args.redis_modes:
            redis = RedisServer(RedisLaunchConfig(persistent=mode == "always")).start()
            running.callback(redis.stop)
            suffix = "" if mode == "always" else "_nofsync"
            kinds = [("router", False), ("router_probed", True)] if mode == "always" else []
            kinds = kinds or [("router_probed", True)]
            for kind, probed in kinds:
                router = RouterProcess(kind + suffix, work, model_dir, redis.url, worker.address, probed)
                running.callback(router.stop)
                routers.append(router)
                targets[router.name] = router.address
        yield targets, routers


async def drive(
    args: argparse.Namespace, targets: dict[str, str]
) -> dict[str, list[serving_bench.RequestRecord]]:
    """``--warmup`` then ``--requests`` requests per target, one at a time, the targets in turn."""
    channels = {name: grpc.aio.insecure_channel(address) for name, address in targets.items()}
    stubs = {
        name: (worker_pb2_grpc.WorkerServiceStub if name == "worker" else router_pb2_grpc.RouterServiceStub)(
            channel
        )
        for name, channel in channels.items()
    }
    records: dict[str, list[serving_bench.RequestRecord]] = {name: [] for name in targets}
    rng = np.random.default_rng(0)
    try:
        for index in range(args.warmup + args.requests):
            for name in targets:
                target = serving_bench.Target(
                    "worker" if name == "worker" else "router", targets[name], (API_KEY,), 60.0
                )
                spec = serving_bench.RequestSpec(
                    f"{name}-{index}", 0, rng.integers(1000, 40000, args.prompt_len).tolist(), args.new_tokens
                )
                record = await serving_bench.stream_one(target, stubs[name], spec)
                if not record.ok:
                    raise RuntimeError(f"{name}: request {spec.request_id} failed: {record.error}")
                if index >= args.warmup:
                    records[name].append(record)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels.values()))
    return records


# ---- analysis ---------------------------------------------------------------------------------

# (phase, from event, to event): consecutive, so the phases add up to the router's TTFT.
TTFT_PHASES = [
    ("inbound hop (client -> servicer)", "client_start", "enter"),
    ("front: auth, span", "enter", "validate:start"),
    ("tokenize: thread-pool queue", "validate:start", "tokenize:start"),
    ("tokenize: run", "tokenize:start", "tokenize:end"),
    ("tokenize: back on the loop", "tokenize:end", "validate:end"),
    ("model check, span, generate()", "validate:end", "healthy:start"),
    ("wait for a healthy worker", "healthy:start", "healthy:end"),
    ("to decide()", "healthy:end", "decide:start"),
    ("decide: tree estimate", "decide:start", "estimate:end"),
    ("decide: to the admission", "estimate:end", "admit:start"),
    ("decide: ledger admission (Redis script)", "admit:start", "admit:end"),
    ("decide: record route, on_dispatch", "admit:end", "decide:end"),
    ("forward set-up (span, metadata, signature, message)", "decide:end", "call:start"),
    ("worker call created", "call:start", "call:end"),
    ("worker: hop + its own TTFT", "call:end", "worker_read"),
    ("first message waits for its write-ahead booking", "worker_read", "relay_ready"),
    ("relay to gRPC", "relay_ready", "yield"),
    ("outbound hop (router -> client)", "yield", "client_first"),
]


def _request_events(events: list[tuple[str, float]]) -> list[list[tuple[str, float]]]:
    """The events of each request, split at each servicer entry (requests are sequential)."""
    out: list[list[tuple[str, float]]] = []
    for name, at in events:
        if name == "enter":
            out.append([])
        if out:
            out[-1].append((name, at))
    return out


def _first(events: list[tuple[str, float]], name: str, after: float = -1.0) -> float | None:
    return next((at for n, at in events if n == name and at >= after), None)


def ttft_breakdown(
    records: list[serving_bench.RequestRecord], events: list[tuple[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Median of each phase over the measured requests (ms), and per-message relay figures (ms)."""
    per_request = _request_events(events)[-len(records) :]
    phases: dict[str, list[float]] = {name: [] for name, _, _ in TTFT_PHASES}
    residence: list[float] = []
    bookings: list[int] = []
    first_booking: list[float] = []
    for record, request_events in zip(records, per_request):
        times = {"client_start": record.start, "client_first": record.first}
        for name, at in request_events:
            times.setdefault(name, at)
        read, first_yield = times.get("worker_read"), times.get("yield")
        if read is not None and first_yield is not None:
            # The relay goes on once the first message's tokens are booked: at once when the booking
            # made ahead is in (OutputCredit), else when its booking lands (before it: always).
            landed = [
                at
                for n, at in request_events
                if n in ("booked:end", "credit_wait:end") and read <= at <= first_yield
            ]
            times["relay_ready"] = max(landed, default=read)
        if times.get("booked:start") is not None and times.get("booked:end") is not None:
            first_booking.append(1e3 * (times["booked:end"] - times["booked:start"]))
        for phase, start, end in TTFT_PHASES:
            if times.get(start) is not None and times.get(end) is not None:
                phases[phase].append(1e3 * (times[end] - times[start]))
        reads = [at for n, at in request_events if n == "worker_read"]
        yields = [at for n, at in request_events if n == "yield"]
        residence += [1e3 * (y - r) for r, y in zip(reads[1:], yields[1:])]
        bookings.append(sum(n == "booked:start" for n, _ in request_events))
    medians = {phase: float(np.median(values)) for phase, values in phases.items() if values}
    relay = {
        "first_booking_p50_ms": float(np.median(first_booking)) if first_booking else None,
        "messages": len(residence),
        "residence_mean_ms": float(np.mean(residence)) if residence else None,
        "residence_p50_ms": float(np.median(residence)) if residence else None,
        # Ledger bookings per request (one per message before OutputCredit; background ones after).
        "bookings_per_request": float(np.mean(bookings)) if bookings else None,
    }
    return medians, relay


def latency(records: list[serving_bench.RequestRecord]) -> dict[str, float]:
    ttft = [1e3 * (r.first - r.start) for r in records if r.first is not None]
    gaps = [1e3 * g for r in records for g in r.token_gaps]
    return {
        "ttft_p50_ms": float(np.median(ttft)),
        "ttft_mean_ms": float(np.mean(ttft)),
        "itl_mean_ms": float(np.mean(gaps)),
        "itl_p50_ms": float(np.median(gaps)),
    }


def report(args: argparse.Namespace, records: dict, routers: list[RouterProcess], wall_s: float) -> Path:
    summary = {name: latency(rs) for name, rs in records.items()}
    base = summary["worker"]
    rows = []
    for name, figures in summary.items():
        rows.append(
            {
                "target": name,
                **figures,
                "added_ttft_p50_ms": figures["ttft_p50_ms"] - base["ttft_p50_ms"],
                "added_itl_mean_ms": figures["itl_mean_ms"] - base["itl_mean_ms"],
            }
        )
    breakdowns = {}
    for router in routers:
        events = router.events()
        if events:
            phases, relay = ttft_breakdown(records[router.name], events)
            breakdowns[router.name] = {"phases_p50_ms": phases, "relay": relay}
    payload = {
        "command": regenerating_command(),
        "environment": environment(("grpcio", "protobuf", "redis", "torch")),
        "config": {k: v for k, v in vars(args).items() if k not in ("out_dir", "serve_router")},
        "wall_s": wall_s,
        "rows": rows,
        "breakdowns": breakdowns,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"router_overhead_{args.tag}.json"
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(_markdown(payload))
    return md_path


def _markdown(payload: dict) -> str:
    env = payload["environment"]
    lines = [
        f"# router_overhead_{payload['config']['tag']}",
        "",
        f"{env['date']} · {env['machine']['processor']} ({env['machine']['cpus']} cpus, load "
        f"{tuple(round(x, 2) for x in env['machine']['load_average'])}) · Python {env['python']} · "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f" · commit {env['git_commit']}",
        "",
        f"`{payload['command']}`",
        "",
        "One stream, requests one at a time, the targets in turn (medians over the measured requests):",
        "",
        markdown_table(
            payload["rows"],
            ["target", "ttft_p50_ms", "added_ttft_p50_ms", "itl_mean_ms", "added_itl_mean_ms"],
        ),
    ]
    for name, breakdown in payload["breakdowns"].items():
        phases = breakdown["phases_p50_ms"]
        rows = [{"phase": phase, "p50_ms": value} for phase, value in phases.items()]
        lines += [
            "",
            f"## {name}: where the time to first token goes (p50 of each phase, ms)",
            "",
            markdown_table(rows, ["phase", "p50_ms"]),
            "",
            "First booking (ms, p50) and later messages (residence: read from the worker -> handed to "
            "gRPC): " + ", ".join(f"{k} {_fmt(v)}" for k, v in breakdown["relay"].items()),
        ]
    lines += ["", NOTES, ""]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


NOTES = (
    "The worker: one process, serving_bench's `--quick` preset (tiny random Llama, CPU) unless "
    "`--serving-args` says otherwise (see the JSON's config). Routers: D2LPM on a "
    "real redis-server, the worker listed statically, identity signing on, as the serving bench's stack. "
    "`router` is `python -m radixfair_router` untouched; `router_probed` is the same code with timestamp "
    "probes around its phases (their own cost is a few microseconds per probe); `_nofsync`: Redis without "
    "persistence (the serving bench's Redis runs `appendfsync always`). Phases are consecutive, so they "
    "add up to the probed router's TTFT; 'worker: hop + its own TTFT' is the part the worker-direct TTFT "
    "also contains."
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--requests", type=int, default=40, help="measured requests per target")
    parser.add_argument("--warmup", type=int, default=5, help="requests per target before measuring")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--redis-modes", nargs="+", choices=("always", "no"), default=["always", "no"])
    parser.add_argument(
        "--serving-args",
        default="",
        help="serving_bench flags for the worker, e.g. '--shape smollm2-135m --device cuda --dtype bfloat16 "
        "--backend triton --tokenizer-dir DIR' (default: its --quick CPU preset)",
    )
    parser.add_argument("--logs-dir", default="", help="keep the processes' logs and configs here")
    parser.add_argument("--serve-router", nargs=2, metavar=("CONFIG", "EVENTS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    work = Path(args.logs_dir) if args.logs_dir else Path(tempfile.mkdtemp(prefix="radixfair-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with started_stack(args, work) as (targets, routers):
            records = asyncio.run(drive(args, targets))
        # The routers wrote their probe events on the way out.
        path = report(args, records, routers, time.monotonic() - started)
    finally:
        if not args.logs_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(path.read_text())
    return path


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    parsed = parse_args()
    if parsed.serve_router:
        serve_probed_router(*parsed.serve_router)
    else:
        signal.signal(signal.SIGTERM, serving_bench._exit_on_sigterm)
        main()
