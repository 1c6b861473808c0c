"""The router's CPU per relayed message and per request, at message rates a real worker on this machine
cannot reach, with router code variants side by side.

A real worker on the shared 2-core CPU streams a few hundred messages a second, so what
``bench/engine/router_overhead.py --streams`` measures there is mostly the router waking up for each message.
On the GPU host a router relays thousands a second (256 streams x ~200 decode steps/s). Here a
*paced worker* stands in for the engine: a real ``grpc.aio`` ``WorkerService`` (health, load reports,
``Generate``, ``GenerateMultiplexed``) in its own process that streams ``max_tokens`` one-token deltas
per request, one a step, a step every ``--pace-ms`` for all running streams at once (as a decode step
gives every running request its token), then the result. The routers are
``python -m radixfair_router`` as deployed (D2LPM, write-ahead booking on a real redis-server, identity
signing), each with its own ledger key prefix on the one Redis; ``--router-src NAME=DIR`` runs one
router per variant, the code of another checkout through ``PYTHONPATH`` (e.g. a ``git archive`` of the
commit before a change), so before and after run in turn in the same session.

Per cell (``--streams`` clients streaming back to back for ``--seconds``, the variants in turn, each
``--rounds`` times; ``--stream-interval NAME=S`` sets a variant's ``forward.stream_interval_s``,
``--transport NAME=multiplexed`` its ``forward.worker_transport``): the
clients' messages, tokens and requests, and the router's CPU seconds (user +
sys, /proc/PID/stat) over the cell: per relayed message, per request, per token. CPU is what the
machine's load does not distort the way it distorts wall time. ``--profile`` adds one cell per variant
under ``py-spy record --native``, summarised by self and inclusive share.

    .venv/bin/python bench/engine/router_relay_cpu.py --router-src before=/tmp/before/services/router/src
    .venv/bin/python bench/engine/router_relay_cpu.py --router-src per_request= --router-src multiplexed= \
        --transport multiplexed=multiplexed

Writes ``bench/results/router_relay_cpu_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engine import serving_bench  # noqa: E402
from bench.engine.serving_clients import ClosedLoop, Target, run_cell_grpc  # noqa: E402
from bench.report import RESULTS_DIR, write_results  # noqa: E402
from radixfair.auth import bearer_metadata  # noqa: E402
from radixfair.redis_launcher import RedisLaunchConfig, RedisServer, free_loopback_port  # noqa: E402
from radixfair.v1 import generation_pb2, router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402

API_KEY = "relay-bench-key"
IDENTITY_SECRET = "relay-bench-secret"
MODEL = "paced"


# ---- the paced worker --------------------------------------------------------------------------


class StepClock:
    """Ticks every ``pace_s``, waking every waiting stream at once: what an engine step is to its
    running requests (each gets its token in the same step), so the multiplexed transport can carry
    a step's tokens of many streams in one message, as it does with a real worker."""

    def __init__(self, pace_s: float) -> None:
        self._pace_s = pace_s
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter  # its own future: a stream cancelled here cancels nobody else's wait

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._pace_s)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _paced_result(request: worker_pb2.GenerateRequest, count: int) -> generation_pb2.GenerationResult:
    usage = generation_pb2.Usage(prompt_tokens=len(request.prompt.token_ids.ids), completion_tokens=count)
    return generation_pb2.GenerationResult(
        finish_reason=generation_pb2.FINISH_REASON_LENGTH,
        usage=usage,
        worker_id="worker-0",
        text="ab" * count,
    )


def _token_count(request: worker_pb2.GenerateRequest) -> int:
    return request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 16


class PacedWorker(worker_pb2_grpc.WorkerServiceServicer):
    """Streams ``max_tokens`` one-token deltas, one a step (a tick every ``pace_s``), then the result,
    on Generate (a call per request) or GenerateMultiplexed (all of a router's requests on one call,
    a message holding everything pending when the last one was written, as the worker's writer)."""

    def __init__(self, pace_s: float) -> None:
        self._clock = StepClock(pace_s)

    async def Generate(self, request, context) -> AsyncIterator[worker_pb2.GenerateResponse]:  # noqa: ANN001
        count = _token_count(request)
        for i in range(count):
            await self._clock.tick()
            yield worker_pb2.GenerateResponse(delta=generation_pb2.TokenDelta(token_ids=[100 + i], text="ab"))
        yield worker_pb2.GenerateResponse(result=_paced_result(request, count))

    async def GenerateMultiplexed(self, request_iterator, context):  # noqa: ANN001, ANN201
        pending: list[worker_pb2.MultiplexedEvent] = []
        wake = asyncio.Event()
        streams: dict[int, asyncio.Task[None]] = {}

        async def stream(tag: int, request: worker_pb2.GenerateRequest) -> None:
            count = _token_count(request)
            for i in range(count):
                await self._clock.tick()
                delta = generation_pb2.TokenDelta(token_ids=[100 + i], text="ab")
                pending.append(worker_pb2.MultiplexedEvent(tag=tag, delta=delta))
                wake.set()
            pending.append(worker_pb2.MultiplexedEvent(tag=tag, result=_paced_result(request, count)))
            wake.set()
            streams.pop(tag, None)

        async def read() -> None:
            loop = asyncio.get_running_loop()
            async for message in request_iterator:
                for start in message.starts:
                    streams[start.tag] = loop.create_task(stream(start.tag, start.request))
                for tag in message.cancel_tags:
                    task = streams.pop(tag, None)
                    if task is not None:
                        task.cancel()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                await wake.wait()
                wake.clear()
                events = pending[:]
                pending.clear()
                yield worker_pb2.GenerateMultiplexedResponse(events=events)
        finally:
            reader.cancel()
            for task in streams.values():
                task.cancel()

    async def GetLoadReport(self, request, context) -> worker_pb2.GetLoadReportResponse:  # noqa: ANN001
        report = worker_pb2.LoadReport(worker_id="worker-0", model=MODEL, free_pages=1 << 20)
        report.total_pages, report.page_size = 1 << 20, 16
        return worker_pb2.GetLoadReportResponse(report=report)


def serve_paced_worker(port: int, pace_s: float) -> None:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    async def serve() -> None:
        server = grpc.aio.server()
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(PacedWorker(pace_s), server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


# ---- processes ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_serving(address: str, probe, process: subprocess.Popen, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 300.0
    while True:
        with grpc.insecure_channel(address) as channel:
            try:
                if probe(channel):
                    return
            except grpc.RpcError:
                pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.3)


def _router_sees_worker(channel: grpc.Channel) -> bool:
    status = router_pb2_grpc.RouterServiceStub(channel).GetStatus(
        router_pb2.GetStatusRequest(), metadata=bearer_metadata(API_KEY), timeout=5
    )
    return any(w.healthy for w in status.workers)


def _worker_reports(channel: grpc.Channel) -> bool:
    worker_pb2_grpc.WorkerServiceStub(channel).GetLoadReport(worker_pb2.GetLoadReportRequest(), timeout=5)
    return True


@contextlib.contextmanager
def started_stack(args: argparse.Namespace, work: Path) -> Iterator[tuple[int, dict[str, tuple[str, int]]]]:
    """The paced worker, one Redis and one router per variant: (worker pid, {variant: (address, pid)})."""
    tokenizer_dir = serving_bench.packaged_model_dir(args.cache_dir)
    with contextlib.ExitStack() as running:
        port = free_loopback_port()
        logs = (work / "worker.log").open("ab")
        running.callback(logs.close)
        worker = subprocess.Popen(
            [sys.executable, __file__, "--serve-worker", str(port), str(args.pace_ms / 1000.0)],
            stdout=logs, stderr=subprocess.STDOUT,
        )  # fmt: skip
        running.callback(serving_bench.stop_process, worker)
        _wait_serving(f"127.0.0.1:{port}", _worker_reports, worker, "paced worker")
        redis = RedisServer(RedisLaunchConfig(persistent=False)).start()
        running.callback(redis.stop)
        routers: dict[str, tuple[str, int]] = {}
        forward: dict[str, dict[str, object]] = {name: {} for name, _ in args.router_src}
        for name, value in args.stream_interval:
            forward.setdefault(name, {})["stream_interval_s"] = float(value)
        for name, value in args.transport:
            forward.setdefault(name, {})["worker_transport"] = value
        for name, src in args.router_src:
            router_port = free_loopback_port()
            config = {
                "host": "127.0.0.1",
                "port": router_port,
                "tokenizer_dir": str(tokenizer_dir),
                "policy": {"name": "d2lpm"},
                "ledger": {"store": "redis", "redis_url": redis.url, "key_prefix": f"relay-{name}"},
                "auth": {"api_keys": [{"key": API_KEY, "client_id": "tenant-0", "weight": 1.0}]},
                "registry": {"workers": [{"worker_id": "worker-0", "address": f"127.0.0.1:{port}"}]},
                "forward": {"identity_secret": IDENTITY_SECRET, **forward.get(name, {})},
            }
            config_path = work / f"{name}.yaml"
            config_path.write_text(yaml.safe_dump(config))
            env = dict(os.environ)
            if src:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH", "")]))
            log_file = (work / f"{name}.log").open("ab")
            running.callback(log_file.close)
            process = subprocess.Popen(
                [sys.executable, "-m", "radixfair_router", "--config", str(config_path)],
                stdout=log_file, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
            running.callback(serving_bench.stop_process, process)
            _wait_serving(f"127.0.0.1:{router_port}", _router_sees_worker, process, f"router {name}")
            routers[name] = (f"127.0.0.1:{router_port}", process.pid)
        yield worker.pid, routers


# ---- cells -------------------------------------------------------------------------------------


async def cell(
    args: argparse.Namespace,
    name: str,
    address: str,
    pid: int,
    seed: int,
    profile: Path | None = None,
    trace: Path | None = None,
) -> dict[str, object]:
    plan = ClosedLoop(args.seconds, seed, (), args.prompt_len, args.new_tokens)
    specs = [plan.spec(client, 0) for client in range(args.streams)]
    spy = None
    if profile is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        spy = subprocess.Popen(
            [py_spy, "record", "--format", "raw", "--rate", "100", "--native",
             "--pid", str(pid), "--output", str(profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    if trace is not None:  # counts of each system call over the cell, every thread
        spy = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", str(trace)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
    before = cpu_seconds(pid)
    target = Target("router", address, (API_KEY,), 120.0)
    records = await run_cell_grpc(target, specs, 1, plan)
    cpu = cpu_seconds(pid) - before
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    failed = [r for r in records if not r.ok]
    if failed:
        raise RuntimeError(f"{name}: {len(failed)} request(s) failed, e.g. {failed[0].error}")
    tokens = sum(r.tokens for r in records)
    messages = sum(len(r.arrivals) for r in records)
    wall = max(r.end for r in records) - min(r.start for r in records)
    return {
        "variant": name,
        "requests": len(records),
        "messages": messages,
        "messages_s": messages / wall,
        "tokens_per_message": tokens / messages,
        "router_cpu_cores": cpu / wall,
        "cpu_us_per_message": 1e6 * cpu / messages,
        "cpu_us_per_token": 1e6 * cpu / tokens,
        "cpu_ms_per_request": 1e3 * cpu / len(records),
        "load_1m": os.getloadavg()[0],
    }


# Classes and functions of the router's own code whose inclusive share is listed apart.
_OURS = {
    "WorkerStream",
    "MultiplexedConnection",
    "MultiplexedRequest",
    "RequestRouter",
    "LiveStreams",
    "OutputCredit",
    "RouterServicer",
    "Generation",
    "DispatchCore",
    "Ledger",
    "RedisLedgerStore",
    "CacheView",
    "coalesce",
    "validate_off_loop",
}


def _function(frame: str) -> str:
    """``name (path/file.py:line)`` -> ``name (file.py)``: samples of a function's lines add up."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0].rstrip(')')})" if where else name


def summarize_profile(path: Path, top: int = 25) -> dict[str, list[dict[str, object]]]:
    """Self and inclusive shares of the frames in py-spy's raw (collapsed) stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def rows(counter: Counter[str]) -> list[dict[str, object]]:
        return [{"frame": f, "share": n / max(1, total)} for f, n in counter.most_common(top)]

    ours = Counter({f: n for f, n in inclusive.items() if f.split(" (")[0].split(".")[0] in _OURS})
    return {"self": rows(own), "inclusive": rows(inclusive), "router_code": rows(ours), "samples": total}


async def run_cells(args: argparse.Namespace, routers: dict[str, tuple[str, int]], work: Path) -> dict:
    # Warm each router up (connections, the tokenizer's first use, the ledger's scripts).
    for name, (address, pid) in routers.items():
        await cell(argparse.Namespace(**{**vars(args), "seconds": 2.0}), name, address, pid, 7)
    idle = {}
    for name, (_, pid) in routers.items():
        before = cpu_seconds(pid)
        await asyncio.sleep(3.0)
        idle[name] = (cpu_seconds(pid) - before) / 3.0
    rows = []
    for round_ in range(args.rounds):
        for name, (address, pid) in routers.items():
            row = await cell(args, name, address, pid, 100 * round_ + len(rows))
            row["round"] = round_
            row["idle_cores"] = idle[name]
            rows.append(row)
            print(row, flush=True)
    profiles = {}
    if args.profile:
        for name, (address, pid) in routers.items():
            path = work / f"{name}.pyspy.txt"
            await cell(args, name, address, pid, 999, path)
            profiles[name] = summarize_profile(path)
    syscalls = {}
    if args.strace:
        for name, (address, pid) in routers.items():
            path = work / f"{name}.strace.txt"
            row = await cell(args, name, address, pid, 998, trace=path)
            syscalls[name] = summarize_strace(path, int(row["messages"]), int(row["requests"]))
    return {"rows": rows, "idle_cores": idle, "profiles": profiles, "syscalls": syscalls}


def summarize_strace(path: Path, messages: int, requests: int) -> list[dict[str, object]]:
    """``strace -c``'s table as calls per relayed message and per request (the most frequent first)."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and not parts[-1].startswith("total"):
            calls = int(parts[3])
            out.append({"syscall": parts[-1], "calls": calls, "per_message": calls / max(1, messages),
                        "per_request": calls / max(1, requests)})  # fmt: skip
    return sorted(out, key=lambda r: -int(r["calls"]))[:12]


def _variant(text: str) -> tuple[str, str]:
    name, _, src = text.partition("=")
    return name, src


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument(
        "--router-src", type=_variant, action="append", default=[],
        help="NAME=DIR: a router variant run with DIR first on PYTHONPATH (NAME= alone: this checkout)",
    )  # fmt: skip
    parser.add_argument(
        "--stream-interval", type=_variant, action="append", default=[], metavar="NAME=SECONDS",
        help="the variant's forward.stream_interval_s (routers of code that has it)",
    )  # fmt: skip
    parser.add_argument(
        "--transport", type=_variant, action="append", default=[], metavar="NAME=TRANSPORT",
        help="the variant's forward.worker_transport, per_request or multiplexed (code that has it)",
    )  # fmt: skip
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--pace-ms", type=float, default=20.0, help="between one stream's deltas")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--strace", action="store_true", help="one more cell per variant under strace -c")
    parser.add_argument("--work-dir", default="", help="keep logs, configs and raw profiles here")
    parser.add_argument("--cache-dir", default="~/.cache/radixfair/models")
    parser.add_argument("--serve-worker", nargs=2, metavar=("PORT", "PACE_S"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.router_src:
        args.router_src = [("router", "")]
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="radixfair-relay-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        with started_stack(args, work) as (_, routers):
            out = asyncio.run(run_cells(args, routers, work))
    rows = out["rows"]
    summary = []
    for name, _ in args.router_src:
        mine = [r for r in rows if r["variant"] == name]
        per_message = sorted(float(r["cpu_us_per_message"]) for r in mine)
        per_request = sorted(float(r["cpu_ms_per_request"]) for r in mine)
        summary.append(
            {
                "variant": name,
                "cells": len(mine),
                "cpu_us_per_message_median": per_message[len(per_message) // 2],
                "cpu_us_per_message_min": per_message[0],
                "cpu_ms_per_request_median": per_request[len(per_request) // 2],
                "idle_cores": out["idle_cores"][name],
            }
        )
    columns = [
        "variant", "round", "requests", "messages_s", "tokens_per_message", "router_cpu_cores",
        "cpu_us_per_message", "cpu_us_per_token", "cpu_ms_per_request", "idle_cores", "load_1m",
    ]  # fmt: skip
    notes = [
        f"{args.streams} streams, {args.prompt_len}-token prompts, {args.new_tokens} one-token deltas per "
        f"request, a step every {args.pace_ms} ms giving each running stream its token (paced worker), "
        f"{args.seconds} s per cell.",
        "Variants' worker transport (forward.worker_transport): "
        + ", ".join(f"{name}: {dict(args.transport).get(name, 'per_request')}" for name, _ in args.router_src)
        + ".",
        "",
        "| variant | cells | cpu_us_per_message (median) | min | cpu_ms_per_request (median) | idle cores |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        notes.append(
            f"| {s['variant']} | {s['cells']} | {s['cpu_us_per_message_median']:.1f} | "
            f"{s['cpu_us_per_message_min']:.1f} | {s['cpu_ms_per_request_median']:.2f} | "
            f"{s['idle_cores']:.4f} |"
        )
    for name, profile in out["profiles"].items():
        notes += ["", f"Profile of `{name}` (py-spy --native, share of the router's samples), by self:", ""]
        notes += ["| frame | self |", "|---|---|"]
        notes += [f"| `{p['frame']}` | {p['share']:.3f} |" for p in profile["self"]]
        notes += ["", "by inclusive:", "", "| frame | inclusive |", "|---|---|"]
        notes += [f"| `{p['frame']}` | {p['share']:.3f} |" for p in profile["inclusive"]]
        notes += ["", "the router's own code, inclusive:", "", "| frame | inclusive |", "|---|---|"]
        notes += [f"| `{p['frame']}` | {p['share']:.3f} |" for p in profile["router_code"]]
    meta = {"config": {k: v for k, v in vars(args).items() if k != "serve_worker"}, "summary": summary}
    meta["profiles"] = out["profiles"]
    meta["syscalls"] = out["syscalls"]
    for name, table in out["syscalls"].items():
        notes += ["", f"System calls of `{name}` over one cell (strace -c -f), per relayed message:", ""]
        notes += ["| syscall | calls | per_message | per_request |", "|---|---|---|---|"]
        notes += [f"| {r['syscall']} | {r['calls']} | {r['per_message']:.2f} | {r['per_request']:.1f} |"
                  for r in table]  # fmt: skip
    return write_results(
        f"router_relay_cpu_{args.tag}", rows, columns, meta, "\n".join(notes), results_dir=Path(args.out_dir)
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    parsed = parse_args()
    if parsed.serve_worker:
        serve_paced_worker(int(parsed.serve_worker[0]), float(parsed.serve_worker[1]))
    else:
        signal.signal(signal.SIGTERM, serving_bench._exit_on_sigterm)
        print(main())
