"""What a 256-row decode step costs on its way from the engine process to the streams, per step and row.

The worker's engine process hands each step's outputs to a sender thread that pickles them down a
pipe; the serving front reads, unpickles and fans them out to the requests' streams. At 256 rows
and a 1.3-2 ms GPU step, each microsecond per row costs the engine a quarter of a millisecond a
step. This times both formats in one run on the same outputs, interleaved and repeated:

- ``per_row``: the path of commit 3e0b6e8, one RequestUpdate NamedTuple per row (a frozen copy
  of its ``_update``, ``_deliver`` and stop-less ``TextStream.push`` lives here, as the baseline);
- ``columnar``: the current one, a StepBatch of parallel lists built by ``EngineLoop._batch_of``
  and fanned out by ``EngineClient._deliver``.

engine_us: build the batch + pickle + write to a real pipe (the engine process's work); front_us:
read + unpickle + deliver into real RequestStreams (the front's work). Each step has ``--ends``
rows that finish their request (LENGTH), as 256 streams of 128 tokens average 2 a step; those
streams and keys are renewed between steps, outside the timing. ``--front-text`` also runs the
fan-out with every stream detokenized on the front (the worker's default for requests without
stop strings), with the packaged tokenizer.

Threaded mode (always run): in the engine process the stepping thread builds the batch and the
sender thread pickles and writes it, taking the GIL from the stepping thread. A stepping thread
runs a stand-in step (``--host-work`` iterations of pure Python) and builds each batch, beside
the engine loop's real sender thread and a reader process; its step time over the stand-in's
alone is what the transport costs the step, at the default switch interval (5 ms) and at 0.5 ms.

    .venv/bin/python bench/engine/engine_transport_bench.py            # about two minutes

Writes ``bench/results/engine_transport_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import Pipe, get_context
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from prometheus_client import CollectorRegistry  # noqa: E402

from bench.report import RESULTS_DIR, write_results  # noqa: E402
from radixfair.errors import RadixfairError  # noqa: E402
from radixfair.tokenization import PromptEncoder  # noqa: E402
from radixfair_engine.config import EngineConfig  # noqa: E402
from radixfair_engine.engine_outputs import StepOutput  # noqa: E402
from radixfair_engine.request import FinishReason, Request, SamplingConfig  # noqa: E402
from radixfair_engine.text_stream import TextStream  # noqa: E402
from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir  # noqa: E402
from radixfair_worker.engine_client import EngineClient  # noqa: E402
from radixfair_worker.engine_loop import EngineLoop  # noqa: E402
from radixfair_worker.engine_protocol import (  # noqa: E402
    AbortRequest,
    EngineSpec,
    PublishedState,
    RequestOutcome,
    request_key,
    worker_request_id,
)
from radixfair_worker.request_stream import RequestStream  # noqa: E402
from radixfair_worker.worker_metrics import WorkerMetrics  # noqa: E402

# -- the baseline: the per-row format as of commit 3e0b6e8 (a frozen copy, for comparison only) --


class PerRowUpdate(NamedTuple):
    request_id: str
    token_ids: list[int]
    text: str
    end: RequestOutcome | RadixfairError | None = None


class PerRowBatch:
    def __init__(self, updates: list[PerRowUpdate], state: PublishedState | None = None) -> None:
        self.updates = updates
        self.state = state

    def merge(self, later: PerRowBatch) -> None:
        self.updates.extend(later.updates)
        if later.state is not None:
            self.state = later.state


def per_row_update(output: StepOutput) -> PerRowUpdate:
    end: RequestOutcome | RadixfairError | None = None
    if output.error is not None:
        end = output.error
    elif output.finished:
        end = RequestOutcome.of(output.request)
    return PerRowUpdate(output.request.request_id, output.new_token_ids, output.text_delta, end)


def per_row_deliver(client: EngineClient, streams: dict[str, RequestStream], batch: PerRowBatch) -> None:
    """The old ``EngineClient._deliver`` loop, on a dict keyed by the worker-internal id."""
    now = time.monotonic()
    first_token_delays: list[float] = []
    first_token_rows: list[int] = []
    token_gaps: list[float] = []
    gap_rows: list[int] = []
    for request_id, token_ids, text, end in batch.updates:
        stream = streams.get(request_id)
        if stream is None:
            continue
        if token_ids:
            if stream.last_token_time is None:
                first_token_delays.append(now - stream.arrival_time)
                first_token_rows.append(stream.client_row)
            else:
                token_gaps.append(now - stream.last_token_time)
                gap_rows.append(stream.client_row)
            stream.last_token_time = now
        recorded = stream.push(token_ids, text, end)
        if recorded is not None:
            del streams[request_id]
            if end is None:
                client._outbox.put(AbortRequest(request_id))
    if first_token_delays or token_gaps:
        assert client._loop is not None
        client._loop.call_soon(lambda: None)  # the old code scheduled the histograms' update here


class PerRowTextStream(TextStream):
    """TextStream.push as of 3e0b6e8: a stream without stop strings took the stop-string path too."""

    def push(self, token_ids: list[int]) -> tuple[str, bool]:
        self._detokenizer.push(token_ids)
        text = self._detokenizer.text
        starts = [text.find(stop, max(0, self._emitted - len(stop))) for stop in self._stops]
        found = [at for at in starts if at >= 0]
        if found:
            self.final_text = text[: min(found)]
            return self.finish(), True
        return self._emit_upto(len(text) - self._holdback), False


# -- one step's outputs and the two paths ----------------------------------------------------


class Step:
    """A decode step's outputs over ``rows`` requests, ``ends`` of them finishing (LENGTH)."""

    def __init__(self, rows: int, ends: int) -> None:
        sampling = SamplingConfig(max_tokens=128, ignore_eos=True)
        self.requests = [
            Request(worker_request_id(key), "client-a", [1] * 128, sampling) for key in range(rows)
        ]
        every = max(rows // max(ends, 1), 1)
        self.ending = [self.requests[i] for i in range(every // 2, rows, every)][:ends]
        for request in self.ending:
            request.finish_reason = FinishReason.LENGTH
        ending = {id(r) for r in self.ending}
        self.outputs = [
            StepOutput(r, [1000 + i], "", finished=id(r) in ending) for i, r in enumerate(self.requests)
        ]


def make_stream(request: Request, text: PromptEncoder | None, variant: str) -> RequestStream:
    text_stream = PerRowTextStream if variant == "per_row" else TextStream
    detokenizing = text_stream(text.new_detokenizer(), ()) if text else None
    stream = RequestStream(request.request_id, 0.0, text=detokenizing)
    stream.last_token_time = 0.0  # past its first token: every row is an inter-token gap
    return stream


def run_steps(variant: str, step: Step, steps: int, text: PromptEncoder | None) -> tuple[list, list, int]:
    """Engine-side and front-side seconds of each of ``steps`` steps, and the message's size."""
    loop = asyncio.new_event_loop()
    reader, writer = Pipe(duplex=False)
    client = EngineClient(EngineSpec(EngineConfig(), Path(".")), WorkerMetrics(CollectorRegistry()))
    client._loop = loop
    engine_loop = EngineLoop(None, reader, writer)  # type: ignore[arg-type]  # only _batch_of runs
    engine_s, front_s, size = [], [], 0
    streams = {request_key(r.request_id): make_stream(r, text, variant) for r in step.requests}
    keys = {r.request_id: request_key(r.request_id) for r in step.requests}
    try:
        for _ in range(steps):
            # Renewed outside the timing: the streams and keys the previous step's ends took.
            for request in step.ending:
                streams[request_key(request.request_id)] = make_stream(request, text, variant)
            for stream in streams.values():
                stream.take_pending()
            engine_loop._keys.update(keys)
            client._streams = dict(streams)
            per_row_streams = {stream.request_id: stream for stream in streams.values()}
            started = time.perf_counter()
            if variant == "per_row":
                message = ForkingPickler.dumps(PerRowBatch([per_row_update(o) for o in step.outputs]))
            else:
                message = ForkingPickler.dumps(engine_loop._batch_of(step.outputs))
            writer.send_bytes(message)
            sent = time.perf_counter()
            batch = ForkingPickler.loads(reader.recv_bytes())
            if variant == "per_row":
                per_row_deliver(client, per_row_streams, batch)
            else:
                client._deliver(batch)
            done = time.perf_counter()
            engine_s.append(sent - started)
            front_s.append(done - sent)
            size = len(message)
            loop.run_until_complete(asyncio.sleep(0))  # drains what delivery scheduled
    finally:
        loop.close()
        reader.close()
        writer.close()
    return engine_s, front_s, size


def drain(reader: Connection, writer: Connection) -> None:
    """The front's reader, in its own process: takes every message off the pipe until EOF."""
    writer.close()
    while True:
        try:
            reader.recv_bytes()
        except EOFError:
            return


def busy_python(iterations: int) -> int:
    """Stands in for a step's host work: pure Python, holding the GIL throughout."""
    total = 0
    for i in range(iterations):
        total += i
    return total


def run_threaded(variant: str, step: Step, steps: int, host_work: int, switch_s: float) -> list[float]:
    """Seconds of each step of a stepping thread that builds its batch and hands it to the real sender
    thread (EngineLoop._send: it coalesces, pickles and writes while holding the GIL it takes from
    the stepping thread), with a reader process on the pipe's other end."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    reader, writer = Pipe(duplex=False)
    front = get_context("fork").Process(target=drain, args=(reader, writer))
    front.start()
    reader.close()
    engine_loop = EngineLoop(None, None, writer)  # type: ignore[arg-type]  # only the sender runs
    sender = threading.Thread(target=engine_loop._send)
    sender.start()
    keys = {r.request_id: request_key(r.request_id) for r in step.requests}
    seconds = []
    try:
        for _ in range(steps):
            started = time.perf_counter()
            busy_python(host_work)
            if variant == "per_row":
                batch: object = PerRowBatch([per_row_update(o) for o in step.outputs])
            else:
                engine_loop._keys.update(keys)
                batch = engine_loop._batch_of(step.outputs)
            engine_loop._outbox.put(batch)  # type: ignore[arg-type]
            seconds.append(time.perf_counter() - started)
    finally:
        engine_loop._outbox.put(None)
        sender.join()
        writer.close()
        front.join()
        sys.setswitchinterval(previous)
    return seconds


def threaded_rows(args: argparse.Namespace, step: Step) -> list[dict[str, object]]:
    """The stepping thread's step time with the sender thread beside it, per format and switch interval."""
    alone = statistics.median(_timed(busy_python, args.host_work) for _ in range(50)) * 1e6
    cells: dict[tuple[str, float], list[float]] = {}
    for repeat in range(args.repeats):
        for variant in ("per_row", "columnar") if repeat % 2 == 0 else ("columnar", "per_row"):
            for switch_s in (0.005, 0.0005):
                seconds = run_threaded(variant, step, args.steps, args.host_work, switch_s)
                cells.setdefault((variant, switch_s), []).append(statistics.median(seconds))
    return [
        {
            "format": variant,
            "switch_interval_ms": switch_s * 1e3,
            "host_work_alone_us": round(alone, 1),
            "step_us": round(statistics.median(values) * 1e6, 1),
            "added_us_per_step": round(statistics.median(values) * 1e6 - alone, 1),
            "repeats_us": [round(v * 1e6, 1) for v in values],
        }
        for (variant, switch_s), values in cells.items()
    ]


def threaded_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "Threaded: a stepping thread doing a stand-in step (pure Python holding the GIL) then building "
        "its batch, beside the engine loop's real sender thread (coalesce, pickle, write) and a reader "
        "process; the stepping thread's median step, median of the repeats:",
        "",
        "| format | switch_interval_ms | host_work_alone_us | step_us | added_us_per_step |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['format']} | {row['switch_interval_ms']:g} | {row['host_work_alone_us']:,} "
            f"| {row['step_us']:,} | {row['added_us_per_step']:,} |"
        )
    return "\n".join(lines)


def _timed(function: Callable[[int], object], argument: int) -> float:
    started = time.perf_counter()
    function(argument)
    return time.perf_counter() - started


def main() -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--ends", type=int, default=2, help="rows a step that finish their request")
    parser.add_argument("--steps", type=int, default=200, help="steps per repetition")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved repetitions of each variant")
    parser.add_argument("--front-text", action="store_true", help="also time front detokenization")
    parser.add_argument(
        "--host-work", type=int, default=20000, help="loop iterations of the threaded mode's stand-in step"
    )
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    step = Step(args.rows, args.ends)
    threaded = threaded_rows(args, step)
    encoders: dict[str, PromptEncoder | None] = {"engine": None}
    if args.front_text:
        model_dir = resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models").expanduser())
        encoders["front"] = PromptEncoder(model_dir)
    variants = ["per_row", "columnar"]
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    sizes: dict[str, int] = {}
    for repeat in range(args.repeats):
        for text_by, encoder in encoders.items():
            # Alternating order, so neither variant always runs on a machine warmed by the other.
            for variant in variants if repeat % 2 == 0 else variants[::-1]:
                engine_s, front_s, sizes[variant] = run_steps(variant, step, args.steps, encoder)
                cell = samples.setdefault((text_by, variant), {"engine": [], "front": []})
                # A repetition's figure is its median step: one descheduling does not move it.
                cell["engine"].append(statistics.median(engine_s))
                cell["front"].append(statistics.median(front_s))
    rows = []
    for (text_by, variant), cell in samples.items():
        engine_us = statistics.median(cell["engine"]) * 1e6
        front_us = statistics.median(cell["front"]) * 1e6
        rows.append(
            {
                "text_made_in": text_by,
                "format": variant,
                "engine_us_per_step": round(engine_us, 1),
                "engine_us_per_row": round(engine_us / args.rows, 3),
                "front_us_per_step": round(front_us, 1),
                "front_us_per_row": round(front_us / args.rows, 3),
                "message_bytes": sizes[variant],
                "engine_repeats_us": [round(s * 1e6, 1) for s in cell["engine"]],
                "front_repeats_us": [round(s * 1e6, 1) for s in cell["front"]],
            }
        )
    for text_by in encoders:
        before, after = (
            next(r for r in rows if r["text_made_in"] == text_by and r["format"] == v) for v in variants
        )
        for side in ("engine", "front"):
            after[f"{side}_vs_per_row"] = round(
                after[f"{side}_us_per_step"] / before[f"{side}_us_per_step"], 3
            )
    md = write_results(
        f"engine_transport_{args.tag}",
        rows,
        [
            "text_made_in",
            "format",
            "engine_us_per_step",
            "engine_us_per_row",
            "engine_vs_per_row",
            "front_us_per_step",
            "front_us_per_row",
            "front_vs_per_row",
            "message_bytes",
        ],
        {
            "rows": args.rows,
            "ends_per_step": args.ends,
            "steps": args.steps,
            "repeats": args.repeats,
            "threaded": threaded,
        },
        (
            f"One {args.rows}-row decode step ({args.ends} rows end their request), {args.steps} steps per "
            f"repetition, {args.repeats} repetitions with the formats interleaved in alternating order; a "
            "repetition's figure is its median step, a cell's the median of its repetitions (all in the "
            "JSON). engine = build the batch + pickle + write to a pipe, on one thread (in the worker the "
            "pickling runs on the engine process's sender thread, which takes the GIL from the stepping "
            "thread for as long); front = read + unpickle + fan out to the streams. text_made_in front: "
            "every stream detokenizes its tokens on the front (the worker's default without stop "
            "strings). per_row is a frozen copy of the path at commit 3e0b6e8 (its format, fan-out and "
            "stop-less TextStream.push). A shared 2-core machine "
            "moves absolute figures with its load; the interleaving keeps the comparison fair.\n\n"
            + threaded_table(threaded)
        ),
        results_dir=Path(args.out_dir),
    )
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
