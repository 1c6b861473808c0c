"""Calibrates the simulator's step cost model on the real engine, and measures its error on a real replay.

1. Shapes: the real engine runs a few scenarios (single prefills of several
   lengths, decode batches of several sizes, long contexts, prefills behind
   a cached prefix); every step's wall time (the whole ``Engine.step``,
   scheduling included) and batch shape are recorded, and the cost model is
   fitted to them.
2. Replay: a small saved trace is replayed on the real engine in real time
   (requests submitted at their arrival times) and simulated with the fitted
   model. The report compares per-step time predictions, makespan, and
   per-request TTFT and end-to-end latency, real against simulated.

On CPU the engine runs the real SmolLM2-135M (fp32, torch backend). On the
GPU machine the checkpoint does not travel, so it runs random weights in
SmolLM2-135M's architecture (bf16, Triton kernels, CUDA graphs): step time
depends on shapes, not on weight values.

    .venv/bin/python bench/eval/eval_calibrate.py --device cpu
    PYTHONPATH=common/src:model_format/src:engine/src:services/worker/src \\
        python3 bench/eval/eval_calibrate.py --device cuda

Writes bench/results/eval_cost_model_<device>.json (the fitted model) and
bench/results/eval_calibration_<device>.{json,md} (errors and raw samples).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import RESULTS_DIR, markdown_table, write_results  # noqa: E402
from bench.simulator.cost_model import StepShape, fit, relative_errors  # noqa: E402
from bench.simulator.simulation import SimConfig, simulate  # noqa: E402
from bench.simulator.timed_runner import ShapeRecordingRunner  # noqa: E402
from bench.smollm2_shape import SMOLLM2_135M_HF_CONFIG  # noqa: E402
from bench.workloads import build_pattern, generate_trace, load_trace, prompt_token_ids, save_trace  # noqa: E402
from bench.workloads.trace import Trace  # noqa: E402
from radixfair.gc_tuning import tune_for_serving  # noqa: E402
from radixfair_engine.config import EngineConfig, SchedulerConfig  # noqa: E402
from radixfair_engine.engine import Engine  # noqa: E402
from radixfair_engine.engine_builder import build_backend  # noqa: E402
from radixfair_engine.model.llama import KVCache  # noqa: E402
from radixfair_engine.model.loader import load_model  # noqa: E402
from radixfair_engine.model_runner import ModelRunner  # noqa: E402
from radixfair_engine.request import Request, SamplingConfig  # noqa: E402
from radixfair_engine.scheduler.registry import build_policy  # noqa: E402
from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir  # noqa: E402

TRACES = RESULTS_DIR / "eval_traces"
MAX_CONTEXT = 4096

# SmolLM2-135M's architecture, for random weights on the GPU machine.
SMOLLM2_135M = {**SMOLLM2_135M_HF_CONFIG, "max_position_embeddings": MAX_CONTEXT}

# Per device: engine limits, the shape scenarios and the replay trace's load.
SETTINGS = {
    "cpu": {
        "engine": {"max_batched_tokens": 512, "max_running_requests": 16, "num_pages": 1024},
        "prefills": (64, 256, 512, 1024),
        "batches": (1, 4, 8, 16),
        "trace": {"num_clients": 4, "rate": 0.08, "duration_s": 60.0, "doc_tokens": 256},
    },
    "cuda": {
        "engine": {"max_batched_tokens": 2048, "max_running_requests": 128, "num_pages": 8192},
        "prefills": (64, 256, 1024, 2048, 4000),
        "batches": (1, 8, 32, 64, 128),
        "trace": {"num_clients": 8, "rate": 6.0, "duration_s": 20.0, "doc_tokens": 1024},
    },
}


def engine_config(device: str) -> EngineConfig:
    return EngineConfig(
        page_size=16,
        max_waiting_requests=100_000,
        device=device,
        backend="triton" if device == "cuda" else "torch",
        dtype="bfloat16" if device == "cuda" else "float32",
        scheduler=SchedulerConfig(policy="dlpm"),
        # The cost model prices synchronous steps (the simulator runs no overlap), and each step is
        # timed by itself; with overlap a step would also carry the previous one's bookkeeping.
        overlap_schedule=False,
        **SETTINGS[device]["engine"],
    )


def random_model_dir(target: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(SMOLLM2_135M))
    return target


def build(config: EngineConfig, model_dir: Path) -> tuple[Engine, ShapeRecordingRunner]:
    """build_engine's assembly minus the tokenizer: token ids in, token ids out."""
    dtype = getattr(torch, config.dtype)
    model = load_model(model_dir, build_backend(config.backend), dtype, config.device)
    device = torch.device(config.device)
    use_graphs = device.type == "cuda" and config.cuda_graph_max_batch > 0
    kv = KVCache(model.config, config.num_pages + (1 if use_graphs else 0), config.page_size, dtype, device)
    graphs = None
    if use_graphs:
        from radixfair_engine.cuda_graph_runner import DecodeGraphRunner, capture_sizes

        graphs = DecodeGraphRunner(
            model,
            kv,
            scratch_page=config.num_pages,
            max_pages_per_seq=-(-MAX_CONTEXT // config.page_size),
            batch_sizes=capture_sizes(min(config.cuda_graph_max_batch, config.max_running_requests)),
        )
    recorder = ShapeRecordingRunner(ModelRunner(model, kv, config.num_pages, graphs))
    engine = Engine(config, recorder, build_policy(config.scheduler), frozenset(), MAX_CONTEXT)
    # The worker's engine process runs under these collector settings (engine_loop.run_engine_process).
    tune_for_serving()
    return engine, recorder


def _rand(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(1000, 40000, size=n).tolist()


def scenarios(device: str) -> list[list[Request]]:
    """Batches submitted together; each runs to completion before the next."""

    def req(name: str, prompt: list[int], out: int) -> Request:
        return Request(name, "cal", prompt, SamplingConfig(max_tokens=out, ignore_eos=True))

    settings = SETTINGS[device]
    out = [[req(f"p{n}", _rand(n, n), 3)] for n in settings["prefills"]]
    for batch in settings["batches"]:
        out.append([req(f"d{batch}-{i}", _rand(100 * batch + i, 200), 10) for i in range(batch)])
    long_prompt = min(4 * settings["prefills"][2], MAX_CONTEXT - 64)
    out.append([req(f"long-{i}", _rand(900 + i, long_prompt), 6) for i in range(4)])
    shared = _rand(7, 512)
    out.append([req("warm", shared + _rand(8, 16), 2)])
    out.append([req(f"hit-{i}", shared + _rand(10 + i, 128), 4) for i in range(4)])
    return out


def _timed_step(engine: Engine, recorder: ShapeRecordingRunner, sync) -> tuple[StepShape, float] | None:
    recorder.last_shape = None
    start = time.perf_counter()
    engine.step()
    sync()
    if recorder.last_shape is None:
        return None
    return recorder.last_shape, time.perf_counter() - start


def measure_shapes(engine, recorder, device: str, repeats: int, sync) -> tuple[list[StepShape], list[float]]:
    shapes, seconds = [], []
    for rep in range(repeats):
        for batch in scenarios(device):
            for request in batch:
                request.request_id += f"#{rep}"
                engine.submit(request)
            while engine.has_work():
                sample = _timed_step(engine, recorder, sync)
                if sample is not None:
                    shapes.append(sample[0])
                    seconds.append(sample[1])
        engine.cache.evict(engine.allocator.num_pages)
    return shapes, seconds


def replay_real(engine, recorder, trace: Trace, sync):
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
        sample = _timed_step(engine, recorder, sync)
        if sample is not None:
            shapes.append(sample[0])
            seconds.append(sample[1])
    real = {
        rid: {"ttft": r.first_token_time - r.arrival_time, "e2e": r.finished_time - r.arrival_time}
        for rid, r in requests.items()
    }
    makespan = max(r.finished_time for r in requests.values()) - t0
    return real, shapes, seconds, makespan


def calibration_trace(device: str) -> Trace:
    params = {"output_low": 16, "output_high": 48, **SETTINGS[device]["trace"]}
    spec = build_pattern("shared_prefix", params)
    return generate_trace(replace(spec, name=f"calibration_{device}"), seed=11)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=sorted(SETTINGS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--random-weights", action="store_true", help="default on cuda")
    args = parser.parse_args()
    device = args.device
    trace_path = TRACES / f"calibration_{device}.jsonl"
    if not trace_path.exists():
        save_trace(calibration_trace(device), trace_path)
    trace = load_trace(trace_path)
    config = engine_config(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as scratch:
        if args.random_weights or device == "cuda":
            model_dir = random_model_dir(Path(scratch) / "model")
        else:
            model_dir = resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models").expanduser())
        engine, recorder = build(config, model_dir)
        if device == "cuda":
            measure_shapes(engine, recorder, device, 1, sync)  # warm-up: Triton compiles, graphs capture
        shapes, seconds = measure_shapes(engine, recorder, device, args.repeats, sync)
        model = fit(shapes, seconds, source=f"eval_calibrate on {device}, {len(shapes)} steps")
        fit_err = np.abs(relative_errors(model, shapes, seconds))
        print(f"fit: {model}; median |error| {np.median(fit_err):.1%}", file=sys.stderr)
        engine, recorder = build(config, model_dir)  # a cold cache, as the simulation starts
        if device == "cuda":
            measure_shapes(engine, recorder, device, 1, sync)
            engine.cache.evict(engine.allocator.num_pages)
        real, replay_shapes, replay_seconds, real_makespan = replay_real(engine, recorder, trace, sync)
    # (a) the scenario fit, tested on every replay step and request: fully held out.
    # (b) the model the evaluation uses: scenarios and the first half of the replay's steps, weighted
    #     equally (the replay has mixed batches the scenarios lack); its step error is measured on the
    #     second half, its latency error on the whole replay (half of whose steps it has seen).
    half = len(replay_shapes) // 2
    weights = [1.0 / len(shapes)] * len(shapes) + [1.0 / half] * half
    used = fit(
        shapes + replay_shapes[:half],
        seconds + replay_seconds[:half],
        source=f"eval_calibrate on {device}: scenarios + first half of the replay's steps",
        weights=weights,
    )
    model.save(RESULTS_DIR / f"eval_cost_model_{device}_scenarios.json")
    used.save(RESULTS_DIR / f"eval_cost_model_{device}.json")
    ids = sorted(real)
    rows, per_request = [], {}
    for label, candidate, steps in (
        ("(a) scenario fit", model, slice(0, None)),
        ("(b) scenarios + replay half", used, slice(half, None)),
    ):
        shapes_out, seconds_out = replay_shapes[steps], np.array(replay_seconds[steps])
        step_err = relative_errors(candidate, shapes_out, seconds_out)
        sim = simulate(SimConfig(config, candidate, max_context_tokens=MAX_CONTEXT), trace)
        simulated = {f.request_id: f for f in sim.recorder.finished}
        ttft_sim = np.array([simulated[r].first_token - simulated[r].arrival for r in ids])
        e2e_sim = np.array([simulated[r].finished - simulated[r].arrival for r in ids])
        rows += [
            _row(label, "step time", seconds_out, seconds_out * (1 + step_err)),
            _row(label, "makespan", np.array([real_makespan]), np.array([sim.makespan])),
            _row(label, "TTFT per request", np.array([real[r]["ttft"] for r in ids]), ttft_sim),
            _row(label, "end-to-end latency", np.array([real[r]["e2e"] for r in ids]), e2e_sim),
        ]
        per_request[label] = {"ttft": ttft_sim.tolist(), "e2e": e2e_sim.tolist()}
    columns = [
        "model",
        "quantity",
        "n",
        "real_mean_s",
        "sim_mean_s",
        "mean_error",
        "median_abs_error",
        "p90_abs_error",
    ]
    notes = (
        f"(a) fitted on {len(shapes)} steps of the shape scenarios (median |error| on them "
        f"{np.median(fit_err):.1%}): {model}.\n\n(b) used by the evaluation: {used}.\n\n"
        f"Replay: trace `{trace_path.name}` ({len(trace.requests)} requests, {len(trace.clients)} clients), "
        "real engine in real time vs the simulator. Error = (sim - real) / real. The real engine was busy "
        f"{sum(replay_seconds):.1f} s of a {real_makespan:.1f} s makespan."
    )
    raw = {
        "fit_samples": [[list(s.starts), list(s.lengths), t] for s, t in zip(shapes, seconds)],
        "replay_samples": [
            [list(s.starts), list(s.lengths), t] for s, t in zip(replay_shapes, replay_seconds)
        ],
        "replay_requests": {"ids": ids, "real": [real[r] for r in ids], "sim": per_request},
    }
    write_results(
        f"eval_calibration_{device}",
        rows,
        columns,
        {"cost_model": used.__dict__, "scenario_model": model.__dict__, **raw},
        notes,
        raw_meta_keys=list(raw),
    )
    print(markdown_table(rows, columns))


def _row(model: str, name: str, real: np.ndarray, sim: np.ndarray) -> dict[str, object]:
    err = (sim - real) / real
    return {
        "model": model,
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
