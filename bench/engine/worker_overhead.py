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

    .venv/bin/python bench/engine/worker_overhead.py                     # CPU, ~1 min
    OVERHEAD=1 bash bench/engine/gpu_serving_session.sh                  # also on the GPU machine (see there)

Writes ``<out-dir>/worker_overhead_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

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
from radixfair.v1 import worker_pb2_grpc  # noqa: E402

# ---- probes: the front (the --serve-worker process) ------------------------------------------


class _ConnectionProbe:
    """A pipe end whose ``send`` / ``recv`` are marked; everything else passes through."""

    def __init__(self, connection: object, probes: Probes, name: str) -> None:
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


def install_front_probes(probes: Probes) -> None:
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

    def __init__(self, probes: Probes) -> None:
        super().__init__()
        self._probes = probes

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self._probes.mark("idle_woken" if woken else "idle_timeout")
        return woken


def probed_engine_entry(events_path: str, spec: object, commands: object, outputs: object) -> None:
    """The engine process's entry point with probes; writes its events to ``events_path`` on exit."""
    from radixfair_engine import engine
    from radixfair_worker import engine_loop

    probes = Probes()
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
        probes.write(events_path)


def serve_probed_worker(events_dir: str, worker_argv: list[str]) -> None:
    """The ``--serve-worker`` mode: ``python -m radixfair_worker`` with probes in both its processes."""
    from radixfair_worker import __main__ as worker_main
    from radixfair_worker import app, engine_client

    probes = Probes()
    install_front_probes(probes)
    entry = functools.partial(probed_engine_entry, str(Path(events_dir) / "engine.events.json"))
    app.EngineClient = functools.partial(engine_client.EngineClient, entry=entry)  # type: ignore[misc]
    try:
        worker_main.main(worker_argv)
    finally:
        probes.write(Path(events_dir) / "front.events.json")


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
    bargs = worker_bench_args(args)
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
    from radixfair_engine.request import Request, SamplingConfig

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

    async def send(name: str, spec: serving_bench.RequestSpec) -> serving_bench.RequestRecord:
        if name == "in_process":
            return in_process_one(engine, spec)
        target = serving_bench.Target("worker", targets[name], ("",), 60.0)
        return await serving_bench.stream_one(target, stubs[name], spec)

    async def between() -> None:
        # Lets both workers' engine loops fall idle between requests, as between a client's turns.
        await asyncio.sleep(args.gap_s)

    try:
        return await drive_in_turn(["in_process", *targets], send, args, between)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels.values()))


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


def ttft_breakdown(
    records: list[serving_bench.RequestRecord], events: Events
) -> tuple[dict[str, float], dict[str, float | None]]:
    """Median of each phase over the measured requests (ms), and counts of the engine's steps and waits."""
    per_request = split_by_request(events)[-len(records) :]
    phases: dict[str, list[float]] = {name: [] for name, _, _ in TTFT_PHASES}
    steps, timeouts, wakes = [], [], []
    # How long after the reader had its message each writer got the GIL back from its write (ms).
    late: dict[str, list[float]] = {"cmd_send:end": [], "engine_send:end": []}
    for record, request_events in zip(records, per_request):
        known = {"client_start": record.start}
        if record.first is not None:
            known["client_first"] = record.first
        lengths, times = request_phases(TTFT_PHASES, request_events, known)
        for phase, value in lengths.items():
            phases[phase].append(value)
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
    return medians(phases), counts


def report(args: argparse.Namespace, records: dict, work: Path, wall_s: float) -> Path:
    rows = latency_rows(records, "in_process")
    events = read_events(work / "front.events.json", work / "engine.events.json")
    phases, counts = ttft_breakdown(records["worker_probed"], events) if events else ({}, {})
    sections = [
        "One stream, requests one at a time, the targets in turn (medians over the measured requests):\n\n"
        + markdown_table(rows, LATENCY_COLUMNS),
        "## worker_probed: where the time to first token goes (p50 of each phase, ms)\n\n"
        + phase_table(phases)
        + "\n\n"
        + ", ".join(f"{k} {fmt(v)}" for k, v in counts.items()),
    ]
    payload = {"wall_s": wall_s, "rows": rows, "phases_p50_ms": phases, "counts": counts}
    return write_page(
        f"worker_overhead_{args.tag}", args, ("grpcio", "protobuf", "torch"), payload, sections, NOTES
    )


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
    add_common_args(parser, "engine")
    parser.add_argument("--gap-s", type=float, default=0.02, help="pause after each request")
    parser.add_argument(
        "--switch-interval-s",
        type=float,
        default=0.0005,
        help="also a worker whose processes run with this GIL switch interval (0: not)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    started = time.monotonic()

    def run(work: Path) -> Path:
        with started_stack(args, work) as (engine, targets):
            records = asyncio.run(drive(args, engine, targets))
        # The probed worker's processes wrote their events on the way out.
        return report(args, records, work, time.monotonic() - started)

    return run_in_work_dir(args, "radixfair-worker-ovh-", run)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-worker":
        serve_probed_worker(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 2 and sys.argv[1] == "--serve-worker-switch":
        serve_worker_with_switch_interval(float(sys.argv[2]), sys.argv[3:])
    else:
        signal.signal(signal.SIGTERM, serving_bench._exit_on_sigterm)
        main()
