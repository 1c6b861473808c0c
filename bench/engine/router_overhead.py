"""What the router adds to one stream's latency, phase by phase: worker-direct against router -> worker.

One worker process (tiny random Llama, as ``bench/engine/serving_bench.py --quick``), one redis-server and
router processes in front of it, all on loopback. One client sends requests one at a time, in turn to
each target, so load drift hits all alike:

- ``worker``: ``WorkerService.Generate`` straight to the worker (the baseline);
- ``router``: ``python -m radixfair_router`` as deployed, on a redis-server started as the serving
  bench's ``LocalStack`` starts it (``appendfsync always``: every write is on disk before Redis replies);
- ``router_no_ahead`` (with ``--no-ahead-target``): the same router with ``forward.dispatch_ahead``
  off, so its worker call starts after the admission's Redis round trip instead of during it;
- ``router_probed``: the same router code in a child of this script with probes around its phases
  (the ``--serve-router`` mode below: timestamps only), same Redis, dispatch ahead off so that its
  phases stay consecutive;
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

Then, with ``--streams N``, what one router process costs per relayed message: N clients stream
requests back to back for ``--stream-seconds``, worker-direct and through the plain router in turn,
and the router's CPU seconds over the cell (from /proc) are divided by the tokens and messages the
clients received; ``--profile`` adds one router cell with py-spy attached and a table of where the
router's samples fall.

    .venv/bin/python bench/engine/router_overhead.py                     # CPU, ~2-3 min
    .venv/bin/python bench/engine/router_overhead.py --tag cpu_after     # a second run, e.g. after a change
    OVERHEAD=1 bash bench/engine/gpu_serving_session.sh                  # also on the GPU machine (see there)

Writes ``<out-dir>/router_overhead_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engine import serving_bench  # noqa: E402
from bench.engine.overhead_probe import (  # noqa: E402
    LATENCY_COLUMNS,
    Events,
    Probes,
    add_common_args,
    drive_in_turn,
    fmt,
    latency_rows,
    medians,
    phase_table,
    read_events,
    request_phases,
    run_in_work_dir,
    split_by_request,
    worker_bench_args,
    write_page,
)
from bench.report import markdown_table  # noqa: E402
from radixfair.auth import bearer_metadata  # noqa: E402
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer, free_loopback_port  # noqa: E402
from radixfair.v1 import router_pb2, router_pb2_grpc, worker_pb2_grpc  # noqa: E402

API_KEY = "router-overhead-key"
IDENTITY_SECRET = "router-overhead-identity"
PACKAGES = ("grpcio", "protobuf", "redis", "torch")


# ---- the probed router (child process) --------------------------------------------------------


class _ReadProbe:
    """A worker call whose ``read`` marks when each message came in; everything else passes through."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, probes: Probes) -> None:
        self._call, self._probes = call, probes

    async def read(self) -> object:
        message = await self._call.read()
        self._probes.mark("worker_read")
        return message

    def __getattr__(self, name: str) -> object:
        return getattr(self._call, name)


def install_probes(probes: Probes) -> None:
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
    # Each batch of the group commit (every stream's pending output in one ledger call).
    probes.around(live_streams.LiveStreams, "flush", "ledger_batch")
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

    probes = Probes()
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
    probes.write(events_path)


# ---- orchestration ----------------------------------------------------------------------------


class RouterProcess:
    """A router child (plain or probed) on its own port, in front of the bench's worker."""

    def __init__(
        self,
        name: str,
        work: Path,
        model_dir: Path,
        redis_url: str,
        worker: str,
        probed: bool,
        dispatch_ahead: bool = True,
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
            "forward": {"identity_secret": IDENTITY_SECRET, "dispatch_ahead": dispatch_ahead},
        }
        config_path = work / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        if probed:
            command = [sys.executable, __file__, "--serve-router", str(config_path), str(self.events_path)]
        else:
            command = [sys.executable, "-m", "radixfair_router", "--config", str(config_path)]
        with (work / f"{name}.log").open("ab") as log_file:
            self._process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        self.pid = self._process.pid
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


@dataclass
class Stack:
    """The running processes: the worker's address and pid, and the routers."""

    worker: serving_bench.WorkerProcess
    routers: list[RouterProcess]

    def targets(self) -> dict[str, str]:
        return {"worker": self.worker.address, **{r.name: r.address for r in self.routers}}

    def pid(self, name: str) -> int:
        if name == "worker":
            return self.worker._process.pid
        return next(r.pid for r in self.routers if r.name == name)


@contextlib.contextmanager
def started_stack(args: argparse.Namespace, work: Path) -> Iterator[Stack]:
    bargs = worker_bench_args(args, max(1, args.streams), max(args.new_tokens, args.stream_new_tokens))
    model_dir = serving_bench.prepare_model(bargs, work)
    settings = serving_bench.worker_settings(bargs, model_dir)
    with contextlib.ExitStack() as running:
        worker = serving_bench.WorkerProcess(settings, "worker-0", work / "logs", 600.0)
        running.callback(worker.stop)
        routers: list[RouterProcess] = []
        for mode in args.redis_modes:
            redis = RedisServer(RedisLaunchConfig(persistent=mode == "always")).start()
            running.callback(redis.stop)
            suffix = "" if mode == "always" else "_nofsync"
            # The probed routers start their worker call after the admission (dispatch ahead off), so
            # their phases stay consecutive; `router` runs the defaults, `router_no_ahead` without it.
            kinds = [("router", False, True), ("router_probed", True, False)] if mode == "always" else []
            if mode == "always" and args.no_ahead_target:
                kinds.insert(1, ("router_no_ahead", False, False))
            kinds = kinds or [("router_probed", True, False)]
            for kind, probed, ahead in kinds:
                router = RouterProcess(
                    kind + suffix, work, model_dir, redis.url, worker.address, probed, dispatch_ahead=ahead
                )
                running.callback(router.stop)
                routers.append(router)
        yield Stack(worker, routers)


def _target(name: str, address: str) -> serving_bench.Target:
    return serving_bench.Target("worker" if name == "worker" else "router", address, (API_KEY,), 120.0)


async def drive(
    args: argparse.Namespace, targets: dict[str, str]
) -> dict[str, list[serving_bench.RequestRecord]]:
    """One stream: ``--warmup`` then ``--requests`` requests per target, the targets in turn."""
    channels = {name: grpc.aio.insecure_channel(address) for name, address in targets.items()}
    stubs = {
        name: (worker_pb2_grpc.WorkerServiceStub if name == "worker" else router_pb2_grpc.RouterServiceStub)(
            channel
        )
        for name, channel in channels.items()
    }

    async def send(name: str, spec: serving_bench.RequestSpec) -> serving_bench.RequestRecord:
        return await serving_bench.stream_one(_target(name, targets[name]), stubs[name], spec)

    try:
        return await drive_in_turn(list(targets), send, args)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels.values()))


# ---- many streams: what one router process costs per message ----------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stream_cell(
    args: argparse.Namespace,
    stack: Stack,
    name: str,
    seed: int,
    idle_cores: float = 0.0,
    profile: Path | None = None,
) -> dict[str, object]:
    """``--streams`` clients streaming back to back for ``--stream-seconds`` through ``name``.

    Reports what the clients received and the CPU the router (and the worker) spent meanwhile: the
    router's CPU per output token and per relayed message is its relay cost, whatever the machine's
    load does to the wall-clock figures. ``profile``: py-spy samples the router meanwhile (raw stacks).
    """
    plan = serving_bench.ClosedLoop(args.stream_seconds, seed, (), args.prompt_len, args.stream_new_tokens)
    specs = [plan.spec(client, 0) for client in range(args.streams)]
    pids = {"worker": stack.pid("worker"), **({} if name == "worker" else {"router": stack.pid(name)})}
    spy = None
    if profile is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        spy = subprocess.Popen(
            [py_spy, "record", "--format", "raw", "--rate", "200", "--nonblocking",
             "--pid", str(pids["router"]), "--output", str(profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    records = await serving_bench.run_cell_grpc(_target(name, stack.targets()[name]), specs, 1, plan)
    cpu = {role: cpu_seconds(pid) - before[role] for role, pid in pids.items()}
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
        spy.wait(timeout=60)
    failed = [r for r in records if not r.ok]
    if failed:
        raise RuntimeError(f"{name}: {len(failed)} stream request(s) failed, e.g. {failed[0].error}")
    tokens = sum(r.tokens for r in records)
    messages = sum(len(r.arrivals) for r in records)
    wall = max(r.end for r in records) - min(r.start for r in records)
    row: dict[str, object] = {
        "target": name,
        "streams": args.streams,
        "requests": len(records),
        "out_tok_s": tokens / wall,
        "messages_s": messages / wall,
        "tokens_per_message": tokens / messages,
        "worker_cpu_us_per_token": 1e6 * cpu["worker"] / tokens,
    }
    if "router" in cpu:
        row |= {
            "router_cpu_cores": cpu["router"] / wall,
            "router_cpu_us_per_token": 1e6 * cpu["router"] / tokens,
            "router_cpu_us_per_message": 1e6 * cpu["router"] / messages,
            # Less what the router spends idle over as long (its background work).
            "router_idle_cores": idle_cores,
            "router_net_cpu_us_per_message": 1e6 * (cpu["router"] - idle_cores * wall) / messages,
            # What one router process relays per second of its own CPU: a ceiling of one core.
            "router_tokens_per_cpu_s": tokens / cpu["router"],
            "router_messages_per_cpu_s": messages / cpu["router"],
        }
    return row


async def stream_cells(
    args: argparse.Namespace, stack: Stack, work: Path
) -> tuple[list[dict], dict[str, list[dict]]]:
    """``--stream-rounds`` rounds of the worker-direct and plain-router cells, in turn; then, with
    ``--profile``, one more router cell with py-spy attached (its figures are not in the rows)."""
    # The plain router (the probed one when --redis-modes has no plain one).
    router = next((r.name for r in stack.routers if r.name == "router"), stack.routers[0].name)
    # What the router spends with nothing to relay (health checks, load reports, the ledger lease),
    # so the per-message figures can be read net of it.
    before = cpu_seconds(stack.pid(router))
    await asyncio.sleep(args.stream_seconds)
    idle_cores = (cpu_seconds(stack.pid(router)) - before) / args.stream_seconds
    rows = []
    for round_ in range(args.stream_rounds):
        for name in ("worker", router):
            rows.append(await stream_cell(args, stack, name, 1000 * round_ + len(rows), idle_cores))
    profile: dict[str, list[dict]] = {}
    if args.profile:
        path = work / "router.pyspy.txt"
        await stream_cell(args, stack, router, 999_999, idle_cores, path)
        profile = summarize_profile(path)
    return rows, profile


def summarize_profile(path: Path, top: int = 12) -> dict[str, list[dict]]:
    """py-spy's raw stacks (``thread;frame;...;frame count``) as two tables of shares of samples:
    the functions most often at the top of the stack (``self``: gRPC's Cython core shows as the
    event loop's ``Handle._run``, as py-spy sees no native frames), and the router's own functions
    by the share of samples they are on (``inclusive``)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            # The first is the thread; a function counts once whatever line it was on.
            frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";")[1:]]
            if not frames or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
            own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return {"self": [], "router_inclusive": []}
    by_self = sorted(own, key=lambda f: -own[f])[:top]
    ours = [f for f in inclusive if "radixfair_router/" in f and "__main__" not in f]
    by_inclusive = sorted(ours, key=lambda f: -inclusive[f])[:top]

    def row(frame: str) -> dict:
        return {"function": frame, "self": own.get(frame, 0) / total, "inclusive": inclusive[frame] / total}

    return {"self": [row(f) for f in by_self], "router_inclusive": [row(f) for f in by_inclusive]}


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


def ttft_breakdown(
    records: list[serving_bench.RequestRecord], events: Events
) -> tuple[dict[str, float], dict[str, object]]:
    """Median of each phase over the measured requests (ms), and per-message relay figures (ms)."""
    per_request = split_by_request(events)[-len(records) :]
    phases: dict[str, list[float]] = {name: [] for name, _, _ in TTFT_PHASES}
    residence: list[float] = []
    bookings: list[int] = []
    first_booking: list[float] = []
    for record, request_events in zip(records, per_request):
        known = {"client_start": record.start}
        if record.first is not None:
            known["client_first"] = record.first
        read = next((at for n, at in request_events if n == "worker_read"), None)
        first_yield = next((at for n, at in request_events if n == "yield"), None)
        if read is not None and first_yield is not None:
            # The relay goes on once the first message's tokens are booked: at once when the booking
            # made ahead is in (OutputCredit), else when its booking lands (before it: always).
            landed = [
                at
                for n, at in request_events
                if n in ("booked:end", "credit_wait:end") and read <= at <= first_yield
            ]
            known["relay_ready"] = max(landed, default=read)
        lengths, _ = request_phases(TTFT_PHASES, request_events, known)
        for phase, value in lengths.items():
            phases[phase].append(value)
        booked_start = next((at for n, at in request_events if n == "ledger_batch:start"), None)
        booked_end = next((at for n, at in request_events if n == "ledger_batch:end"), None)
        if booked_start is not None and booked_end is not None:
            first_booking.append(1e3 * (booked_end - booked_start))
        residence += _residence_after_first(request_events)
        bookings.append(sum(n == "ledger_batch:start" for n, _ in request_events))
    relay = {
        "first_booking_p50_ms": float(np.median(first_booking)) if first_booking else None,
        "messages": len(residence),
        "residence_mean_ms": float(np.mean(residence)) if residence else None,
        "residence_p50_ms": float(np.median(residence)) if residence else None,
        # Group-commit batches (ledger calls) per request, at one stream.
        "ledger_batches_per_request": float(np.mean(bookings)) if bookings else None,
    }
    return medians(phases), relay


def _residence_after_first(events: Events) -> list[float]:
    """How long each worker message after the first stayed in the router (ms): from its read to the
    relay that carried it (several reads go out in one relay when the relay coalesced them)."""
    waiting: list[float] = []
    out: list[float] = []
    seen_first = False
    for name, at in events:
        if name == "worker_read":
            waiting.append(at)
        elif name == "yield" and waiting:
            if seen_first:
                out += [1e3 * (at - read) for read in waiting]
            seen_first, waiting = True, []
    return out


STREAM_COLUMNS = [
    "target", "streams", "requests", "out_tok_s", "messages_s", "tokens_per_message",
    "router_cpu_cores", "router_idle_cores", "router_cpu_us_per_token", "router_cpu_us_per_message",
    "router_net_cpu_us_per_message", "router_messages_per_cpu_s", "worker_cpu_us_per_token",
]  # fmt: skip


def report(
    args: argparse.Namespace,
    records: dict,
    stack: Stack,
    stream_rows: list[dict],
    profile: dict[str, list[dict]],
    one_stream_end: float,
    wall_s: float,
) -> Path:
    rows = latency_rows(records, "worker")
    breakdowns = {}
    for router in stack.routers:
        # The one-stream requests' events (a probed router may also have served the stream cells).
        events = [e for e in read_events(router.events_path) if e[1] <= one_stream_end]
        if events:
            phases, relay = ttft_breakdown(records[router.name], events)
            breakdowns[router.name] = {"phases_p50_ms": phases, "relay": relay}
    sections = [
        "One stream, requests one at a time, the targets in turn (medians over the measured requests):\n\n"
        + markdown_table(rows, LATENCY_COLUMNS)
    ]
    if stream_rows:
        sections.append(
            f"{args.streams} streams, each streaming requests of {args.prompt_len} prompt and "
            f"{args.stream_new_tokens} new tokens back to back for {args.stream_seconds:g} s, worker-direct "
            "and through the plain router in turn; CPU seconds of each process over the cell "
            "(/proc/PID/stat):\n\n" + markdown_table(stream_rows, STREAM_COLUMNS)
        )
    for name, breakdown in breakdowns.items():
        sections.append(
            f"## {name}: where the time to first token goes (p50 of each phase, ms)\n\n"
            + phase_table(breakdown["phases_p50_ms"])
            + "\n\nFirst booking (ms, p50) and later messages (residence: read from the worker -> handed "
            "to gRPC): " + ", ".join(f"{k} {fmt(v)}" for k, v in breakdown["relay"].items())
        )
    if profile:
        sections.append(
            "## Profile of the plain router at the streams' load (py-spy, share of samples)\n\n"
            "Most often at the top of the stack (`Handle._run` self: gRPC's Cython core, run from the "
            "event loop's callbacks; `Thread.run`: gRPC's poller thread; `select`: idle):\n\n"
            + markdown_table(profile["self"], ["function", "self", "inclusive"])
            + "\n\nThe router's own functions, by the share of samples they are on:\n\n"
            + markdown_table(profile["router_inclusive"], ["function", "inclusive", "self"])
        )
    payload = {"wall_s": wall_s, "rows": rows, "stream_rows": stream_rows, "breakdowns": breakdowns}
    payload["profile"] = profile
    return write_page(
        f"router_overhead_{args.tag}",
        args,
        ("grpcio", "protobuf", "redis", "torch"),
        payload,
        sections,
        NOTES,
    )


NOTES = (
    "The worker: one process, serving_bench's `--quick` preset (tiny random Llama, CPU) unless "
    "`--serving-args` says otherwise (see the JSON's config). Routers: D2LPM on a "
    "real redis-server, the worker listed statically, identity signing on, as the serving bench's stack. "
    "`router` is `python -m radixfair_router` untouched (defaults: dispatch ahead on); `router_no_ahead` the "
    "same with forward.dispatch_ahead off; `router_probed` is the same code with dispatch ahead off (so its "
    "phases stay consecutive) and timestamp probes around its phases (their own cost is a few microseconds "
    "per probe); `_nofsync`: Redis without "
    "persistence (the serving bench's Redis runs `appendfsync always`). Phases are consecutive, so they "
    "add up to the probed router's TTFT; 'worker: hop + its own TTFT' is the part the worker-direct TTFT "
    "also contains. In the streams table, messages are what the clients received; "
    "router_messages_per_cpu_s is the relay's capacity per core of one router process."
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "worker")
    parser.add_argument("--redis-modes", nargs="+", choices=("always", "no"), default=["always", "no"])
    parser.add_argument("--streams", type=int, default=0, help="streams of the many-stream cells (0: none)")
    parser.add_argument("--stream-seconds", type=float, default=8.0)
    parser.add_argument("--stream-new-tokens", type=int, default=64)
    parser.add_argument("--stream-rounds", type=int, default=2, help="worker and router cells, in turn")
    parser.add_argument("--profile", action="store_true", help="one more router cell under py-spy")
    parser.add_argument(
        "--no-ahead-target",
        action="store_true",
        help="one more plain router with forward.dispatch_ahead off (its worker call after the admission)",
    )
    parser.add_argument("--serve-router", nargs=2, metavar=("CONFIG", "EVENTS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    started = time.monotonic()

    def run(work: Path) -> Path:
        with started_stack(args, work) as stack:
            records = asyncio.run(drive(args, stack.targets()))
            one_stream_end = time.monotonic()
            stream_rows, profile = asyncio.run(stream_cells(args, stack, work)) if args.streams else ([], {})
        # The routers wrote their probe events on the way out.
        return report(args, records, stack, stream_rows, profile, one_stream_end, time.monotonic() - started)

    return run_in_work_dir(args, "radixfair-overhead-", run)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    parsed = parse_args()
    if parsed.serve_router:
        serve_probed_router(*parsed.serve_router)
    else:
        signal.signal(signal.SIGTERM, serving_bench._exit_on_sigterm)
        main()
