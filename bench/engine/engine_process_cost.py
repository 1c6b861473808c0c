"""The engine's host CPU per step, in process against inside the worker's engine process, on any CPU.

On the H200 the worker's engine process steps the same ~250-row batch as the in-process engine but
slower (bench/results/serving_gpu_h200_s11_sched.md: 3.7 against 2.8 ms unique), its loop thread on a
CPU 0.89 of the wall against 0.99. Both are bound by the host: a Python thread stepping the GPU. This
script measures the part the worker adds, per step, with the model taken out: both engines run a
runner whose forward costs nothing (engine_step_anatomy.NullRunner), so what is left is host work.

- ``in_process``: the worker's engine in this process, closed loop (serving_bench's in-process path).
- ``engine_process_<pipe_io>``: the worker's engine process as the worker runs it (``EngineClient``:
  its pipes, its threads or inline I/O, the front's delivery of each batch to its streams), driven
  closed loop through ``EngineClient.submit`` by this process's event loop, no gRPC. ``--state-hz``
  also asks for the engine's published state that often, as routers' load reports and health checks
  do (one ask in flight at a time, as the front does).

Columns: steps and sampled rows a second; the engine process's CPU microseconds per step and per
sampled row (user + system, all its threads), its loop thread's (schedstat), and that thread's share
of the wall on a CPU. The in-process row counts this process's main thread for both.

    .venv/bin/python bench/engine/engine_process_cost.py --concurrency 256 --duration-s 6

Its engine process is a spawned child of this one: ``py-spy record -p <pid>`` names its host work.

Writes ``<out-dir>/engine_process_cost_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engine.process_cpu import thread_sched  # noqa: E402
from bench.engine.serving_bench import parse_args as serving_args  # noqa: E402
from bench.engine.serving_bench import prepare_model, worker_settings  # noqa: E402
from bench.report import RESULTS_DIR, regenerating_command, write_results  # noqa: E402

COLUMNS = [
    "variant",
    "concurrency",
    "steps_per_s",
    "rows_per_step",
    "cpu_us_per_step",
    "cpu_us_per_row",
    "loop_cpu_us_per_step",
    "loop_on_cpu_share",
    "front_cpu_us_per_step",
    "state_asks",
]


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prompt(rng_seed: int, length: int) -> list[int]:
    # Token ids spread over the vocabulary, a different prompt per request (no shared prefix).
    return [(rng_seed * 7919 + i * 104729) % 30_000 + 100 for i in range(length)]


def run_in_process(settings: dict[str, object], args: argparse.Namespace) -> dict[str, object]:
    from bench.engine.engine_step_anatomy import NullRunner
    from bench.engine.serving_in_process import build_in_process_engine
    from radixfair_engine.request import Request, SamplingConfig

    engine = build_in_process_engine(settings)
    engine.runner = NullRunner()  # type: ignore[attr-defined]
    ids = itertools.count()

    def submit() -> None:
        n = next(ids)
        request = Request(f"r{n}", f"tenant-{n % 4}", _prompt(n, args.prompt_len),
                          SamplingConfig(max_tokens=args.new_tokens, ignore_eos=True))  # fmt: skip
        request.text_in_engine = False
        engine.submit(request)  # type: ignore[attr-defined]

    for _ in range(args.concurrency):
        submit()
    for _ in range(50):  # past the first admissions
        for out in engine.step():  # type: ignore[attr-defined]
            if out.finished:
                submit()
    tid = threading.get_native_id()
    steps0, rows0 = engine.step_stats.steps, engine.step_stats.sampled_rows  # type: ignore[attr-defined]
    sched0, cpu0, wall0 = thread_sched(os.getpid(), tid), time.thread_time(), time.monotonic()
    while time.monotonic() - wall0 < args.duration_s:
        for out in engine.step():  # type: ignore[attr-defined]
            if out.finished:
                submit()
    wall = time.monotonic() - wall0
    cpu = time.thread_time() - cpu0
    sched = thread_sched(os.getpid(), tid)
    steps = engine.step_stats.steps - steps0  # type: ignore[attr-defined]
    rows = engine.step_stats.sampled_rows - rows0  # type: ignore[attr-defined]
    on_cpu = (sched[0] - sched0[0]) if sched and sched0 else cpu
    return _row("in_process", args, steps, rows, wall, cpu, on_cpu, None, 0)


async def run_engine_process(settings: dict[str, object], args: argparse.Namespace, pipe_io: str) -> dict:
    from prometheus_client import CollectorRegistry

    from bench.engine.null_engine_entry import run_null_engine_process
    from radixfair.config_loading import load_config
    from radixfair_engine.request import Request, SamplingConfig
    from radixfair_model_format.model_store import resolve_model_dir
    from radixfair_worker.config import WorkerConfig
    from radixfair_worker.engine_client import EngineClient
    from radixfair_worker.engine_protocol import EngineSpec
    from radixfair_worker.worker_metrics import WorkerMetrics

    config = load_config(WorkerConfig, env={}, overrides={**settings, "engine_pipe_io": pipe_io})
    spec = EngineSpec(
        config.engine,
        resolve_model_dir(config.model, Path(config.cache_dir)),
        config.torch_threads,
        config.engine_switch_interval_s,
        config.engine_pipe_io,
    )
    client = EngineClient(spec, WorkerMetrics(CollectorRegistry(), 16), entry=run_null_engine_process)
    await client.start()
    pid = client._process.pid  # type: ignore[union-attr]  # the bench reads the process's clocks
    ids = itertools.count()
    stop = asyncio.Event()

    async def stream_forever() -> None:
        while not stop.is_set():
            n = next(ids)
            request = Request(f"r{n}", f"tenant-{n % 4}", _prompt(n, args.prompt_len),
                              SamplingConfig(max_tokens=args.new_tokens, ignore_eos=True))  # fmt: skip
            # As the worker's front does for a request without stop strings: it makes the text itself.
            request.text_in_engine = False
            stream = client.submit(request)
            while (await stream.take()).end is None:
                pass

    async def ask_state() -> int:
        asks = 0
        while not stop.is_set() and args.state_hz > 0:
            await client.current_state()
            asks += 1
            await asyncio.sleep(1.0 / args.state_hz)
        return asks

    async def counters() -> tuple[int, int]:
        stats = (await client.current_state()).snapshot.step_stats
        return stats.steps, stats.sampled_rows

    tasks = [asyncio.create_task(stream_forever()) for _ in range(args.concurrency)]
    await asyncio.sleep(2.0)  # past the first admissions
    steps0, rows0 = await counters()
    sched0, cpu0, front0 = thread_sched(pid), _process_cpu_s(pid), time.process_time()
    wall0 = time.monotonic()
    asker = asyncio.create_task(ask_state())
    await asyncio.sleep(args.duration_s)
    steps1, rows1 = await counters()
    wall = time.monotonic() - wall0
    sched1, cpu1, front1 = thread_sched(pid), _process_cpu_s(pid), time.process_time()
    stop.set()
    asks = await asker
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.stop()
    on_cpu = sched1[0] - sched0[0] if sched0 and sched1 else None
    return _row(f"engine_process_{pipe_io}", args, steps1 - steps0, rows1 - rows0, wall, cpu1 - cpu0, on_cpu,
                front1 - front0, asks)  # fmt: skip


def _row(variant, args, steps, rows, wall, cpu, on_cpu, front_cpu, asks) -> dict[str, object]:  # noqa: ANN001
    def per_step(seconds: float | None) -> float | None:
        return round(1e6 * seconds / steps, 1) if steps and seconds is not None else None

    return {
        "variant": variant,
        "concurrency": args.concurrency,
        "steps_per_s": round(steps / wall, 1),
        "rows_per_step": round(rows / steps, 1) if steps else None,
        "cpu_us_per_step": per_step(cpu),
        "cpu_us_per_row": round(1e6 * cpu / rows, 2) if rows else None,
        "loop_cpu_us_per_step": per_step(on_cpu),
        "loop_on_cpu_share": round(on_cpu / wall, 3) if on_cpu is not None else None,
        "front_cpu_us_per_step": per_step(front_cpu),
        "state_asks": asks,
    }


def main() -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--duration-s", type=float, default=6.0)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--state-hz", type=float, default=20.0, help="state asks a second (0: none)")
    parser.add_argument("--variants", nargs="+", default=["in_process", "threads", "inline"])
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--tokenizer-dir", default="", help="tokenizer files (default: the packaged model's)")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    tokenizer = ["--tokenizer-dir", args.tokenizer_dir] if args.tokenizer_dir else []
    served = serving_args(["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--backend", "torch",
                           "--concurrency", str(args.concurrency), "--prompt-len", str(args.prompt_len),
                           "--new-tokens", str(args.new_tokens), "--torch-threads", "1",
                           *tokenizer])  # fmt: skip
    model_dir = prepare_model(served, Path(tempfile.mkdtemp(prefix="radixfair-process-cost-")))
    # The null runner's pages (NullRunner.num_pages): the engine's page pool must fit in them.
    settings = {**worker_settings(served, model_dir), "engine.num_pages": 8192}
    rows = []
    for variant in args.variants:
        if variant == "in_process":
            rows.append(run_in_process(settings, args))
        else:
            rows.append(asyncio.run(run_engine_process(settings, args, variant)))
        print(rows[-1], flush=True)
    md = write_results(
        f"engine_process_cost_{args.tag}",
        rows,
        COLUMNS,
        {"settings": {k: v for k, v in settings.items() if k != "model"}, "state_hz": args.state_hz},
        __doc__.split("    .venv")[0].split("\n\n", 1)[1],
        command=regenerating_command(),
        results_dir=Path(args.out_dir) if args.out_dir else RESULTS_DIR,
    )
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
