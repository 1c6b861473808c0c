"""What the worker's serving path adds to one stream's time to first token, phase by phase.

The worker is a gRPC serving front plus an engine process joined by two pipes. This script runs, one
request at a time and the targets in turn (so load drift hits all alike):

- ``in_process``: the worker's own engine in this process, ``Engine.submit`` then ``Engine.step`` until
  the request's first token comes back (serving_bench's in-process path at one stream);
- ``worker``: ``python -m radixfair_worker`` as deployed, ``WorkerService.Generate`` over gRPC;
- ``worker_switch_<ms>ms`` (with ``--switch-interval-s``): the same worker with the interpreter's GIL
  switch interval (``sys.setswitchinterval``, 5 ms by default) set lower in both its processes: how
  long a thread with a message to pass on (the engine's batch thread, the front's reader) waits for the
  GIL while another thread of its process keeps running Python;
- ``worker_probed``: the same worker code with timestamp probes around the phases of the path, in the
  front (the ``--serve-worker`` mode below) and in its engine process (a probed entry point, passed as
  ``EngineClient``'s ``entry``). Probes only take timestamps; no behaviour is changed.

Probe times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on the host), so the
client's send and receive times, the front's and the engine's events line up. A request's time to first
token splits into consecutive phases (``TTFT_PHASES``): the inbound hop, the front's own work
(span, ``build_request``: validation and tokenization, ``EngineClient.submit``), the front's command
thread waking and writing the submit to the pipe, the engine's receiver thread reading it, the engine
loop noticing it, the engine's steps up to the one that returns the first token (what the in-process
path measures), the engine's batch thread waking and writing the batch, the front's reader thread, the
event loop delivering it to the stream, the handler taking it and the outbound hop. Also counted: the
engine loop's idle waits that ended by timeout rather than by a wake-up while a request was in flight.

    .venv/bin/python bench/worker_overhead.py                     # CPU, ~1 min
    OVERHEAD=1 bash bench/gpu_serving_session.sh                  # also on the GPU machine (see there)

Writes ``<out-dir>/worker_overhead_<tag>.{json,md}``.
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
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import serving_bench  # noqa: E402
from bench.report import RESULTS_DIR, environment, markdown_table, regenerating_command  # noqa: E402
from bench.router_overhead import _Probes  # noqa: E402
from radixfair.v1 import worker_pb2_grpc  # noqa: E402

# ---- probes: the front (the --serve-worker process) ------------------------------------------


class _ConnectionProbe:
    """A pipe end whose ``send`` / ``recv`` are marked; everything else passes through."""

    def __init__(self, connection: object, probes: _Probes, name: str) -> None:
        self._connection, self._probes, self._name = connection, probes, name

    def send(self, obj: object) -> None:
        self._probes.mark(f"{self._name}_send:start")
        self._connection.send(obj)  # type: ignore[attr-defined]
        self._probes.mark(f"{self._name}_send:end")

    def recv(self) -> object:
        obj = self._connection.recv()  # type: ignore[attr-defined]
        self._probes.mark(f"{self._name}_recv")
        return obj

    def __getattr__(self, name: str) -> object:
        return getattr(self._connection, name)


def install_front_probes(probes: _Probes) -> None:
    """Wraps the serving front's phases with timestamps (the worker's code itself is not changed)."""
    from radixfair_worker import engine_client, request_stream, server

    mark = probes.mark
    servicer = server.WorkerServicer
    generate = servicer.Generate

    async def probed_generate(self, request, context):  # noqa: ANN001
        mark("enter")
        async for message in generate(self, request, context):
            mark("yield")
            yield message

    servicer.Generate = probed_generate
    probes.around_sync(server, "build_request", "build")
    client = engine_client.EngineClient
    probes.around_sync(client, "submit", "submit")
    probes.around_sync(client, "_deliver", "deliver")
    probes.around(request_stream.RequestStream, "take", "take")
    send_commands, read_batches = client._send_commands, client._read_batches

    def probed_send_commands(self) -> None:  # noqa: ANN001
        self._commands = _ConnectionProbe(self._commands, probes, "cmd")
        send_commands(self)

    def probed_read_batches(self) -> None:  # noqa: ANN001
        self._outputs = _ConnectionProbe(self._outputs, probes, "reader")
        read_batches(self)

    client._send_commands = probed_send_commands
    client._read_batches = probed_read_batches


# ---- probes: the engine process ----------------------------------------------------------------


class _MarkedEvent(threading.Event):
    """The engine loop's wake-up event; marks each wait, and whether it ended by its timeout."""

    def __init__(self, probes: _Probes) -> None:
        super().__init__()
        self._probes = probes

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self._probes.mark("idle_woken" if woken else "idle_timeout")
        return woken


def probed_engine_entry(events_path: str, spec: object, commands: object, outputs: object) -> None:
    """The engine process's entry point with probes; writes its events to ``events_path`` on exit."""
    from radixfair_worker import engine, engine_loop

    probes = _Probes()
    mark = probes.mark
    step = engine.Engine.step

    def probed_step(self):  # noqa: ANN001, ANN202
        mark("step:start")
        outputs = step(self)
        mark("step:end")
        if any(o.new_token_ids for o in outputs):
            mark("step_tokens")
        return outputs

    engine.Engine.step = probed_step
    probes.around_sync(engine_loop.EngineLoop, "_submit", "engine_submit")
    loop_init = engine_loop.EngineLoop.__init__

    def probed_init(self, *args: object, **kwargs: object) -> None:  # noqa: ANN001
        loop_init(self, *args, **kwargs)
        self._wake = _MarkedEvent(probes)

    engine_loop.EngineLoop.__init__ = probed_init
    try:
        engine_loop.run_engine_process(
            spec,  # type: ignore[arg-type]
            _ConnectionProbe(commands, probes, "engine"),  # type: ignore[arg-type]
            _ConnectionProbe(outputs, probes, "engine"),  # type: ignore[arg-type]
        )
    finally:
        Path(events_path).write_text(json.dumps(probes.events))


def serve_probed_worker(events_dir: str, worker_argv: list[str]) -> None:
    """The ``--serve-worker`` mode: ``python -m radixfair_worker`` with probes in both its processes."""
    from radixfair_worker import __main__ as worker_main
    from radixfair_worker import app, engine_client

    probes = _Probes()
    install_front_probes(probes)
    entry = functools.partial(probed_engine_entry, str(Path(events_dir) / "engine.events.json"))
    app.EngineClient = functools.partial(engine_client.EngineClient, entry=entry)  # type: ignore[misc]
    try:
        worker_main.main(worker_argv)
    finally:
        (Path(events_dir) / "front.events.json").write_text(json.dumps(probes.events))


def engine_entry_with_switch_interval(
    interval_s: float, spec: object, commands: object, outputs: object
) -> None:
    """The engine process's entry point with the GIL switch interval set first."""
    from radixfair_worker import engine_loop

    sys.setswitchinterval(interval_s)
    engine_loop.run_engine_process(spec, commands, outputs)  # type: ignore[arg-type]


def serve_worker_with_switch_interval(interval_s: float, worker_argv: list[str]) -> None:
    """The ``--serve-worker-switch`` mode: ``python -m radixfair_worker``, the switch interval set in
    both its processes (the front here, the engine process through its entry point)."""
    from radixfair_worker import __main__ as worker_main
    from radixfair_worker import app, engine_client

    sys.setswitchinterval(interval_s)
    entry = functools.partial(engine_entry_with_switch_interval, interval_s)
    app.EngineClient = functools.partial(engine_client.EngineClient, entry=entry)  # type: ignore[misc]
    worker_main.main(worker_argv)


# ---- orchestration ----------------------------------------------------------------------------


@contextlib.contextmanager
def started_stack(args: argparse.Namespace, work: Path) -> Iterator[tuple[object, dict[str, str]]]:
    """The in-process engine, a plain worker and a probed worker, on the same settings."""
    bargs = serving_bench.parse_args(
        ["--quick", "--concurrency", "1", "--prompt-len", str(args.prompt_len),
         "--new-tokens", str(args.new_tokens), "--torch-threads", str(args.torch_threads),
         *shlex.split(args.serving_args)]
    )  # fmt: skip
    model_dir = serving_bench.prepare_model(bargs, work)
    settings = serving_bench.worker_settings(bargs, model_dir)
    with contextlib.ExitStack() as running:
        engine = serving_bench.build_in_process_engine(settings)
        worker = serving_bench.WorkerProcess(settings, "worker-0", work / "logs", 600.0)
        running.callback(worker.stop)
        probed = serving_bench.WorkerProcess(
            settings, "worker-probed", work / "logs", 600.0, entry=(__file__, "--serve-worker", str(work))
        )
        running.callback(probed.stop)
        targets = {"worker": worker.address}
        if args.switch_interval_s:
            switched = serving_bench.WorkerProcess(
                settings,
                "worker-switch",
                work / "logs",
                600.0,
                entry=(__file__, "--serve-worker-switch", str(args.switch_interval_s)),
            )
            running.callback(switched.stop)
            targets[f"worker_switch_{args.switch_interval_s * 1e3:g}ms"] = switched.address
        yield engine, {**targets, "worker_probed": probed.address}


def in_process_one(engine: object, spec: serving_bench.RequestSpec) -> serving_bench.RequestRecord:
    """One request through ``Engine.submit/step`` alone, as serving_bench's in-process path sees it."""
    from radixfair_worker.request import Request, SamplingConfig

    sampling = SamplingConfig(max_tokens=spec.max_tokens, ignore_eos=True)
    request = Request(spec.request_id, "tenant-0", list(spec.prompt), sampling)
    record = serving_bench.RequestRecord(spec.request_id, time.monotonic())
    engine.submit(request)  # type: ignore[attr-defined]
    while engine.has_work():  # type: ignore[attr-defined]
        for out in engine.step():  # type: ignore[attr-defined]
            record.on_tokens(len(out.new_token_ids), time.monotonic())
            if out.finished:
                record.ok = record.tokens == spec.max_tokens
    record.end = time.monotonic()
    return record


async def drive(
    args: argparse.Namespace, engine: object, targets: dict[str, str]
) -> dict[str, list[serving_bench.RequestRecord]]:
    """``--warmup`` then ``--requests`` requests per target, one at a time, the targets in turn."""
    channels = {name: grpc.aio.insecure_channel(address) for name, address in targets.items()}
    stubs = {name: worker_pb2_grpc.WorkerServiceStub(channel) for name, channel in channels.items()}
    records: dict[str, list[serving_bench.RequestRecord]] = {"in_process": [], **{n: [] for n in targets}}
    rng = np.random.default_rng(0)
    try:
        for index in range(args.warmup + args.requests):
            for name in records:
                prompt = rng.integers(1000, 40000, args.prompt_len).tolist()
                spec = serving_bench.RequestSpec(f"{name}-{index}", 0, prompt, args.new_tokens)
                if name == "in_process":
                    record = in_process_one(engine, spec)
                else:
                    target = serving_bench.Target("worker", targets[name], ("",), 60.0)
                    record = await serving_bench.stream_one(target, stubs[name], spec)
                if not record.ok:
                    raise RuntimeError(f"{name}: request {spec.request_id} failed: {record.error}")
                if index >= args.warmup:
                    records[name].append(record)
                # Lets both workers' engine loops fall idle between requests, as between a client's turns.
                await asyncio.sleep(args.gap_s)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels.values()))
    return records


# ---- analysis ---------------------------------------------------------------------------------

# (phase, from event, to event): consecutive, so the phases add up to the probed worker's TTFT.
TTFT_PHASES = [
    ("inbound hop (client -> servicer)", "client_start", "enter"),
    ("front: trace context, span", "enter", "build:start"),
    ("build_request (validate, tokenize)", "build:start", "build:end"),
    ("EngineClient.submit (id, stream, queue)", "build:end", "submit:end"),
    ("front command thread wakes", "submit:end", "cmd_send:start"),
    ("submit through the pipe (pickle, write, read, unpickle)", "cmd_send:start", "engine_recv"),
    ("engine: Engine.submit", "engine_recv", "engine_submit:end"),
    ("engine loop notices the submit", "engine_submit:end", "step:start"),
    ("engine: its first step (schedules, launches)", "step:start", "step:end"),
    ("engine: later steps to the first token", "step:end", "step_tokens"),
    ("engine batch thread wakes", "step_tokens", "engine_send:start"),
    ("batch through the pipe (pickle, write, read, unpickle)", "engine_send:start", "reader_recv"),
    ("event loop runs the delivery", "reader_recv", "deliver:start"),
    ("delivery -> handler takes it", "deliver:start", "take:end"),
    ("handler: message, yield", "take:end", "yield"),
    ("outbound hop (servicer -> client)", "yield", "client_first"),
]
# A sending thread's own return from the write (cmd_send:end, engine_send:end) is not on the path: the
# reader has the message before the writer gets the GIL back. How late it gets it is reported apart.


def _request_events(events: list[tuple[str, float]]) -> list[list[tuple[str, float]]]:
    """The merged events of each request, split at each servicer entry (requests are sequential)."""
    out: list[list[tuple[str, float]]] = []
    for name, at in sorted(events, key=lambda e: e[1]):
        if name == "enter":
            out.append([])
        if out:
            out[-1].append((name, at))
    return out


def ttft_breakdown(
    records: list[serving_bench.RequestRecord], events: list[tuple[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Median of each phase over the measured requests (ms), and counts of the engine's steps and waits."""
    per_request = _request_events(events)[-len(records) :]
    phases: dict[str, list[float]] = {name: [] for name, _, _ in TTFT_PHASES}
    steps, timeouts, wakes = [], [], []
    # How long after the reader had its message each writer got the GIL back from its write (ms).
    late: dict[str, list[float]] = {"cmd_send:end": [], "engine_send:end": []}
    for record, request_events in zip(records, per_request):
        times: dict[str, float] = {"client_start": record.start}
        if record.first is not None:
            times["client_first"] = record.first
        # Phases are consecutive: each event is the first of its name after the previous phase's end.
        cursor = record.start
        for phase, start, end in TTFT_PHASES:
            begin = times.get(start)
            if begin is None:
                begin = next((at for n, at in request_events if n == start and at >= cursor), None)
                if begin is None:
                    continue
                times[start] = begin
            stop = times.get(end)
            if stop is None:
                stop = next((at for n, at in request_events if n == end and at >= begin), None)
                if stop is None:
                    continue
                times[end] = stop
            phases[phase].append(1e3 * (stop - begin))
            cursor = stop
        for writer_end, (writer_start, read) in zip(
            late, (("cmd_send:start", "engine_recv"), ("engine_send:start", "reader_recv"))
        ):
            began, got = times.get(writer_start), times.get(read)
            back = next((at for n, at in request_events if n == writer_end and began and at >= began), None)
            if got is not None and back is not None:
                late[writer_end].append(1e3 * (back - got))
        first_step, first_token = times.get("step:start"), times.get("step_tokens")
        if first_step is not None and first_token is not None:
            in_steps = [n for n, at in request_events if first_step <= at <= first_token]
            steps.append(in_steps.count("step:start"))
        window = (times.get("enter", 0.0), times.get("client_first", float("inf")))
        in_window = [n for n, at in request_events if window[0] <= at <= window[1]]
        timeouts.append(in_window.count("idle_timeout"))
        wakes.append(in_window.count("idle_woken"))
    medians = {phase: float(np.median(values)) for phase, values in phases.items() if values}
    counts = {
        "engine_steps_to_first_token_p50": float(np.median(steps)) if steps else None,
        "idle_waits_ended_by_timeout_per_request": float(np.mean(timeouts)) if timeouts else None,
        "idle_waits_ended_by_wakeup_per_request": float(np.mean(wakes)) if wakes else None,
        "front_writer_back_after_engine_read_p50_ms": float(np.median(late["cmd_send:end"]))
        if late["cmd_send:end"]
        else None,
        "engine_writer_back_after_front_read_p50_ms": float(np.median(late["engine_send:end"]))
        if late["engine_send:end"]
        else None,
    }
    return medians, counts


def latency(records: list[serving_bench.RequestRecord]) -> dict[str, float]:
    ttft = [1e3 * (r.first - r.start) for r in records if r.first is not None]
    gaps = [1e3 * g for r in records for g in r.token_gaps]
    return {
        "ttft_p50_ms": float(np.median(ttft)),
        "ttft_p90_ms": float(np.percentile(ttft, 90)),
        "itl_mean_ms": float(np.mean(gaps)),
        "itl_p50_ms": float(np.median(gaps)),
    }


def report(args: argparse.Namespace, records: dict, work: Path, wall_s: float) -> Path:
    summary = {name: latency(rs) for name, rs in records.items()}
    base = summary["in_process"]
    rows = [
        {
            "target": name,
            **figures,
            "added_ttft_p50_ms": figures["ttft_p50_ms"] - base["ttft_p50_ms"],
            "added_itl_mean_ms": figures["itl_mean_ms"] - base["itl_mean_ms"],
        }
        for name, figures in summary.items()
    ]
    events: list[tuple[str, float]] = []
    for part in ("front", "engine"):
        with contextlib.suppress(OSError):
            events += [tuple(e) for e in json.loads((work / f"{part}.events.json").read_text())]
    phases, counts = ttft_breakdown(records["worker_probed"], events) if events else ({}, {})
    payload = {
        "command": regenerating_command(),
        "environment": environment(("grpcio", "protobuf", "torch")),
        "config": {k: v for k, v in vars(args).items() if k not in ("out_dir", "serve_worker")},
        "wall_s": wall_s,
        "rows": rows,
        "phases_p50_ms": phases,
        "counts": counts,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"worker_overhead_{args.tag}.json"
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(_markdown(payload))
    return md_path


def _markdown(payload: dict) -> str:
    env = payload["environment"]
    rows = [{"phase": phase, "p50_ms": value} for phase, value in payload["phases_p50_ms"].items()]
    return "\n".join(
        [
            f"# worker_overhead_{payload['config']['tag']}",
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
                ["target", "ttft_p50_ms", "ttft_p90_ms", "added_ttft_p50_ms", "itl_mean_ms"]
                + ["added_itl_mean_ms"],
            ),
            "",
            "## worker_probed: where the time to first token goes (p50 of each phase, ms)",
            "",
            markdown_table(rows, ["phase", "p50_ms"]),
            "",
            ", ".join(f"{k} {_fmt(v)}" for k, v in payload["counts"].items()),
            "",
            NOTES,
            "",
        ]
    )


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


NOTES = (
    "Model and device: serving_bench's `--quick` preset (tiny random Llama, CPU) unless `--serving-args` "
    "says otherwise (see the JSON's config). `in_process` is the worker's engine driven by "
    "`Engine.submit/step` in the bench process (TTFT: submit to the step that returns the first token); "
    "`worker` is `python -m radixfair_worker` untouched; `worker_switch_*` the same with a shorter GIL "
    "switch interval in its front and engine processes (CPython's default is 5 ms); `worker_probed` the "
    "same code as `worker` with timestamp "
    "probes in its front and its engine process (a few microseconds each). Phases are consecutive, so "
    "they add up to the probed worker's TTFT; 'engine steps to the first token' is the part the "
    "in-process TTFT also contains (its step count is engine_steps_to_first_token_p50). "
    "idle_waits_ended_by_timeout counts the engine loop's idle waits that ended on their timer rather "
    "than a wake-up between the request's arrival and its first token at the client."
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
    parser.add_argument("--gap-s", type=float, default=0.02, help="pause after each request")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument(
        "--switch-interval-s",
        type=float,
        default=0.0005,
        help="also a worker whose processes run with this GIL switch interval (0: not)",
    )
    parser.add_argument(
        "--serving-args",
        default="",
        help="serving_bench flags for the engine, e.g. '--shape smollm2-135m --device cuda --dtype bfloat16 "
        "--backend triton --tokenizer-dir DIR' (default: its --quick CPU preset)",
    )
    parser.add_argument("--logs-dir", default="", help="keep the processes' logs and events here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    work = Path(args.logs_dir) if args.logs_dir else Path(tempfile.mkdtemp(prefix="radixfair-worker-ovh-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with started_stack(args, work) as (engine, targets):
            records = asyncio.run(drive(args, engine, targets))
        # The probed worker's processes wrote their events on the way out.
        path = report(args, records, work, time.monotonic() - started)
    finally:
        if not args.logs_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(path.read_text())
    return path


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-worker":
        serve_probed_worker(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 2 and sys.argv[1] == "--serve-worker-switch":
        serve_worker_with_switch_interval(float(sys.argv[2]), sys.argv[3:])
    else:
        signal.signal(signal.SIGTERM, serving_bench._exit_on_sigterm)
        main()
