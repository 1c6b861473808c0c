"""Calibrates the simulator's step cost model on the real engine, and measures its error on a real replay.

1. Shapes: the real engine with the real SmolLM2-135M runs a few scenarios
   (single prefills of several lengths, decode batches of 1 to 16, long
   contexts, prefills behind a cached prefix); every step's wall time (the
   whole ``Engine.step``, scheduling included) and batch shape are recorded,
   and the cost model is fitted to them.
2. Replay: a small saved trace is replayed on the real engine in real time
   (requests submitted at their arrival times) and simulated with the fitted
   model. The report compares per-step time predictions, makespan, and
   per-request TTFT and end-to-end latency, real against simulated.

    .venv/bin/python bench/eval_calibrate.py [--device cpu] [--trace TRACE.jsonl]

Writes bench/results/eval_cost_model_<device>.json (the fitted model) and
bench/results/eval_calibration_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import RESULTS_DIR, markdown_table, write_results  # noqa: E402
from bench.simulator.cost_model import StepShape, fit, relative_errors  # noqa: E402
from bench.simulator.simulation import SimConfig, simulate  # noqa: E402
from bench.simulator.timed_runner import ShapeRecordingRunner  # noqa: E402
from bench.workloads import build_pattern, generate_trace, load_trace, prompt_token_ids, save_trace  # noqa: E402
from bench.workloads.trace import Trace  # noqa: E402
from radixfair_worker.config import EngineConfig, SchedulerConfig  # noqa: E402
from radixfair_worker.engine_builder import build_engine  # noqa: E402
from radixfair_worker.model_store import PACKAGED_MODEL, resolve_model_dir  # noqa: E402
from radixfair_worker.request import Request, SamplingConfig  # noqa: E402

TRACE = RESULTS_DIR / "eval_traces" / "calibration.jsonl"


def engine_config(device: str) -> EngineConfig:
    return EngineConfig(
        num_pages=1024,
        page_size=16,
        max_batched_tokens=512,
        max_running_requests=16,
        max_waiting_requests=10_000,
        device=device,
        backend="triton" if device == "cuda" else "torch",
        dtype="bfloat16" if device == "cuda" else "float32",
        scheduler=SchedulerConfig(policy="dlpm"),
    )


def build(config: EngineConfig):
    stack = build_engine(
        config, resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models").expanduser())
    )
    engine = stack.engine
    recorder = ShapeRecordingRunner(engine.runner)
    engine.runner = recorder
    return engine, recorder


def _rand(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(1000, 40000, size=n).tolist()


def scenarios() -> list[list[Request]]:
    """Batches submitted together; each runs to completion before the next."""

    def req(name: str, prompt: list[int], out: int) -> Request:
        return Request(name, "cal", prompt, SamplingConfig(max_tokens=out, ignore_eos=True))

    out = []
    for n in (64, 256, 512, 1024):
        out.append([req(f"p{n}", _rand(n, n), 3)])
    for batch in (1, 4, 8, 16):
        out.append([req(f"d{batch}-{i}", _rand(100 * batch + i, 200), 10) for i in range(batch)])
    out.append([req(f"long-{i}", _rand(900 + i, 1500), 6) for i in range(4)])
    shared = _rand(7, 512)
    out.append([req("warm", shared + _rand(8, 16), 2)])
    out.append([req(f"hit-{i}", shared + _rand(10 + i, 128), 4) for i in range(4)])
    return out


def measure_shapes(engine, recorder, repeats: int) -> tuple[list[StepShape], list[float]]:
    shapes, seconds = [], []
    for rep in range(repeats):
        for batch in scenarios():
            for request in batch:
                request.request_id += f"#{rep}"
                engine.submit(request)
            while engine.has_work():
                recorder.last_shape = None
                start = time.perf_counter()
                engine.step()
                elapsed = time.perf_counter() - start
                if recorder.last_shape is not None:
                    shapes.append(recorder.last_shape)
                    seconds.append(elapsed)
        engine.cache.evict(engine.allocator.num_pages)
    return shapes, seconds


def replay_real(engine, recorder, trace: Trace) -> tuple[dict[str, dict[str, float]], list, list, float]:
    """Submits each request at its arrival time (wall clock) and steps the engine until all finish."""
    pending = sorted(trace.requests, key=lambda r: r.arrival_s)
    requests: dict[str, Request] = {}
    shapes, seconds = [], []
    t0 = time.monotonic()
    index = 0
    while index < len(pending) or engine.has_work():
        now = time.monotonic() - t0
        while index < len(pending) and pending[index].arrival_s <= now:
            spec = pending[index]
            request = Request(
                spec.request_id,
                spec.client_id,
                prompt_token_ids(spec),
                SamplingConfig(max_tokens=spec.max_tokens, ignore_eos=True),
                weight=spec.weight,
                arrival_time=t0 + spec.arrival_s,
            )
            requests[spec.request_id] = request
            engine.submit(request)
            index += 1
        if not engine.has_work():
            time.sleep(max(0.0, pending[index].arrival_s - (time.monotonic() - t0)))
            continue
        recorder.last_shape = None
        start = time.perf_counter()
        engine.step()
        if recorder.last_shape is not None:
            shapes.append(recorder.last_shape)
            seconds.append(time.perf_counter() - start)
    out = {
        rid: {
            "ttft": r.first_token_time - r.arrival_time,
            "e2e": r.finished_time - r.arrival_time,
            "finish": r.finished_time - t0,
        }
        for rid, r in requests.items()
    }
    return out, shapes, seconds, max(v["finish"] for v in out.values())


def calibration_trace() -> Trace:
    spec = build_pattern(
        "shared_prefix",
        {
            "num_clients": 4,
            "rate": 0.25,
            "duration_s": 40.0,
            "doc_tokens": 384,
            "output_low": 16,
            "output_high": 48,
        },
    )
    return generate_trace(replace(spec, name="calibration"), seed=11)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trace", type=Path, default=TRACE)
    args = parser.parse_args()
    if not args.trace.exists():
        save_trace(calibration_trace(), args.trace)
    trace = load_trace(args.trace)
    config = engine_config(args.device)
    engine, recorder = build(config)
    shapes, seconds = measure_shapes(engine, recorder, args.repeats)
    model = fit(shapes, seconds, source=f"eval_calibrate on {args.device}, {len(shapes)} steps")
    fit_err = np.abs(relative_errors(model, shapes, seconds))
    model.save(RESULTS_DIR / f"eval_cost_model_{args.device}.json")
    print(f"fit: {model} median |err| {np.median(fit_err):.1%}", file=sys.stderr)

    engine, recorder = build(config)  # a cold cache, as the simulation starts
    real, replay_shapes, replay_seconds, real_makespan = replay_real(engine, recorder, trace)
    step_err = relative_errors(model, replay_shapes, replay_seconds)
    sim = simulate(SimConfig(config, model, max_context_tokens=engine.max_context_tokens), trace)
    simulated = {f.request_id: f for f in sim.recorder.finished}
    ttft_real = np.array([real[r]["ttft"] for r in real])
    ttft_sim = np.array([simulated[r].first_token - simulated[r].arrival for r in real])
    e2e_real = np.array([real[r]["e2e"] for r in real])
    e2e_sim = np.array([simulated[r].finished - simulated[r].arrival for r in real])
    rows = [
        _row(
            "step time (held-out replay steps)",
            np.array(replay_seconds),
            np.array(replay_seconds) * (1 + step_err),
        ),
        _row("makespan", np.array([real_makespan]), np.array([sim.makespan])),
        _row("TTFT per request", ttft_real, ttft_sim),
        _row("end-to-end latency per request", e2e_real, e2e_sim),
    ]
    columns = [
        "quantity",
        "n",
        "real_mean_s",
        "sim_mean_s",
        "mean_error",
        "median_abs_error",
        "p90_abs_error",
    ]
    notes = (
        f"Cost model fitted on {len(shapes)} steps of the shape scenarios "
        f"(median |error| on them {np.median(fit_err):.1%}): {model}.\n\n"
        f"Replay: trace `{args.trace.name}` ({len(trace.requests)} requests, {len(trace.clients)} clients), "
        "real engine in real time vs the simulator with the fitted model. Error = (sim - real) / real."
    )
    write_results(
        f"eval_calibration_{args.device}",
        rows,
        columns,
        {"cost_model": model.__dict__, "fit_median_abs_error": float(np.median(fit_err))},
        notes,
    )
    print(markdown_table(rows, columns))


def _row(name: str, real: np.ndarray, sim: np.ndarray) -> dict[str, object]:
    err = (sim - real) / real
    return {
        "quantity": name,
        "n": len(real),
        "real_mean_s": float(real.mean()),
        "sim_mean_s": float(sim.mean()),
        "mean_error": float(sim.mean() / real.mean() - 1),
        "median_abs_error": float(np.median(np.abs(err))),
        "p90_abs_error": float(np.percentile(np.abs(err), 90)),
    }


if __name__ == "__main__":
    main()
