"""Where a closed-loop engine step's time goes at high concurrency: host work, device wait, eager launches.

The serving bench's in-process engine (serving_in_process.run_cell_in_process: the worker's own
engine, built from the worker's settings, clients in the same thread) runs one timed closed-loop
cell per (workload, concurrency) twice: once plain, for its tokens/s, and once under cProfile.
Each row splits the profiled cell's wall time into:

- ``wait_device_s``: the host blocked on the device for sampled ids (``SampledTokens.wait``): the
  share of the step the device bounds;
- ``forward_host_s``: launching forward passes (``runner.forward``): graph replays for decode-only
  steps, every kernel one by one for a step with a prefill chunk (``eager_steps`` counts those);
- the rest: the engine's per-request Python work (scheduling, bookkeeping, page caching) and the
  clients'.

With overlap on, a step costs max(host, device): when ``wait_device_s`` is small against the wall,
the host bounds the engine. The top functions by own time name the host work.

    python3 bench/engine/engine_host_profile.py --shape smollm2-135m --device cuda --dtype bfloat16 \\
        --backend triton --concurrency 256 --workloads unique shared_prefix --cell-duration-s 6

``--stats-dir=DIR`` also writes each profiled cell's full ``pstats`` file there
(``<workload>_<concurrency>.pstats``), to compare two cells function by function offline.

``--null-runner`` swaps the model for one whose forward costs nothing and samples a fixed token
(engine_step_anatomy.NullRunner): what is left is the engine's own host work per step, on any CPU.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engine.serving_bench import parse_args, prepare_model, worker_settings  # noqa: E402
from bench.engine.serving_clients import timed_cell  # noqa: E402
from bench.engine.serving_in_process import build_in_process_engine, run_cell_in_process  # noqa: E402
from bench.report import RESULTS_DIR, regenerating_command, write_results  # noqa: E402
from radixfair_engine.model_runner import SamplingRunner  # noqa: E402

TOP_FUNCTIONS = 24


class CountingRunner(SamplingRunner):
    """The engine's own runner (and its sampler); counts the forward passes with a prefill chunk
    (eager on the GPU)."""

    def __init__(self, runner: object) -> None:
        super().__init__(runner.sampler)  # type: ignore[attr-defined]
        self.runner = runner
        self.page_size = runner.page_size  # type: ignore[attr-defined]
        self.num_pages = runner.num_pages  # type: ignore[attr-defined]
        self.steps = 0
        self.eager_steps = 0

    def forward(self, chunks, carry=None):  # noqa: ANN001, ANN201
        self.steps += 1
        self.eager_steps += any(c.length != 1 for c in chunks)
        return self.runner.forward(chunks) if carry is None else self.runner.forward(chunks, carry)


def run_cell(engine: object, args, workload: str, concurrency: int, profile: bool) -> dict[str, object]:  # noqa: ANN001
    counter = CountingRunner(engine.runner)  # type: ignore[attr-defined]
    engine.runner = counter  # type: ignore[attr-defined]
    plan = timed_cell(args, workload, concurrency, seed=len(workload) * 1000 + concurrency)
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    records = _run(engine, plan, concurrency)
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - start
    engine.runner = counter.runner  # type: ignore[attr-defined]
    tokens = sum(r.tokens for r in records)
    row: dict[str, object] = {
        "workload": workload,
        "concurrency": concurrency,
        "profiled": profile,
        "wall_s": round(wall, 3),
        "out_tok_s": round(tokens / wall),
        "steps": counter.steps,
        "ms_per_step": round(wall / max(counter.steps, 1) * 1e3, 3),
        "eager_steps": counter.eager_steps,
    }
    if profiler is not None:
        stats = pstats.Stats(profiler)
        if args.stats_dir:
            Path(args.stats_dir).mkdir(parents=True, exist_ok=True)
            stats.dump_stats(str(Path(args.stats_dir) / f"{workload}_{concurrency}.pstats"))
        row["wait_device_s"] = round(_cumulative(stats, "inflight.py", "wait"), 3)
        row["forward_host_s"] = round(_cumulative(stats, "engine_host_profile.py", "forward"), 3)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(TOP_FUNCTIONS)
        row["top_functions"] = _trim(text.getvalue())
    return row


def _run(engine: object, plan, concurrency: int) -> list:  # noqa: ANN001
    from bench.engine.serving_clients import RequestSpec

    specs: list[RequestSpec] = [plan.spec(client, 0) for client in range(concurrency)]
    return run_cell_in_process(engine, specs, concurrency, plan)


def _cumulative(stats: pstats.Stats, file_suffix: str, function: str) -> float:
    total = 0.0
    for (path, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if name == function and path.endswith(file_suffix):
            total += cumulative
    return total


def _trim(report: str) -> list[str]:
    """The table lines of a pstats report, each path cut to what follows site-packages or src/."""
    lines = []
    for line in report.splitlines():
        if line.strip()[:1].isdigit():
            lines.append(re.sub(r"\S*/(site-packages|src|bench)/", "", line.strip()))
    return lines


def main() -> Path:
    argv = sys.argv[1:]
    own = [a for a in argv if a == "--null-runner" or a.startswith("--stats-dir=")]
    args = parse_args([a for a in argv if a not in own])  # serving_bench's flags, and these
    args.null_runner = "--null-runner" in own
    args.stats_dir = next((a.split("=", 1)[1] for a in own if a.startswith("--stats-dir=")), "")
    work_dir = Path(tempfile.mkdtemp(prefix="radixfair-host-profile-"))
    settings = worker_settings(args, prepare_model(args, work_dir))
    engine = build_in_process_engine(settings)
    if args.null_runner:
        # The engine's own host cost alone: a runner whose forward costs nothing (any CPU).
        from bench.engine.engine_step_anatomy import NullRunner

        assert engine.runner.page_size == NullRunner.page_size  # type: ignore[attr-defined]
        engine.runner = NullRunner()  # type: ignore[attr-defined]
    warm = timed_cell(args, "unique", min(args.concurrency), seed=1)
    _run(engine, type(warm)(2.0, warm.seed, warm.prefix, warm.unique_len, warm.max_tokens), 8)
    rows = []
    for workload in args.workloads:
        for concurrency in args.concurrency:
            for profile in (False, True):
                rows.append(run_cell(engine, args, workload, concurrency, profile))
                print({k: v for k, v in rows[-1].items() if k != "top_functions"}, flush=True)
    columns = ["workload", "concurrency", "profiled", "out_tok_s", "steps", "ms_per_step", "eager_steps"]
    columns += ["wall_s", "wait_device_s", "forward_host_s"]
    tops = "\n\n".join(
        f"{r['workload']} x {r['concurrency']}, top {TOP_FUNCTIONS} by own time:\n\n```\n"
        + "\n".join(r["top_functions"])  # type: ignore[arg-type]
        + "\n```"
        for r in rows
        if r["profiled"]
    )
    md = write_results(
        f"engine_host_profile_{args.tag}",
        rows,
        columns,
        {"worker_settings": {k: v for k, v in settings.items() if k != "model"}},
        __doc__.split("    python3")[0].split("\n\n", 1)[1] + "\n" + tops,
        command=regenerating_command(),
        results_dir=Path(args.out_dir) if args.out_dir else RESULTS_DIR,
    )
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
