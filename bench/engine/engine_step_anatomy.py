"""Where a decode step's wall time goes: host staging, host bookkeeping, or waiting for the device.

With overlap scheduling the host prepares step n+1 while the device runs step n,
so a step costs max(host, device). This script says which one bounds the engine:
it wraps the model runner's ``forward`` (host staging and the graph launch, which
returns before the device finishes) and ``SampledTokens.wait`` (the host blocked
on the device), and times every decode step of a batch. When ``wait`` is near
zero the device idles between steps and host time is the step time.

On the GPU (random SmolLM2-135M weights, bf16, Triton, CUDA graphs, overlap on)::

    PYTHONPATH=common/src:model_format/src:engine/src:services/worker/src \\
        python3 bench/engine/engine_step_anatomy.py --batches 1 128

Run it from an older commit's tree (the same file copied there) to compare versions in one call.
On the CPU, ``--null-runner`` replaces the model with one that returns fixed logits at once, so
the table is the engine's own host cost per step (what no kernel can hide).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from radixfair_engine import inflight  # noqa: E402
from radixfair_engine.config import EngineConfig, SchedulerConfig  # noqa: E402
from radixfair_engine.engine import Engine  # noqa: E402
from radixfair_engine.model_runner import SamplingRunner  # noqa: E402
from radixfair_engine.request import Request, SamplingConfig  # noqa: E402
from radixfair_engine.scheduler.registry import build_policy  # noqa: E402

NULL_VOCAB = 512


class NullRunner(SamplingRunner):
    """A StepRunner whose forward costs nothing: every completed fill samples token 7."""

    page_size = 16

    def __init__(self) -> None:
        super().__init__()
        self._logits: dict[int, torch.Tensor] = {}

    @property
    def num_pages(self) -> int:
        return 8192

    def forward(self, chunks, carry=None) -> torch.Tensor:  # noqa: ANN001 - the StepRunner protocol
        rows = sum(1 for chunk in chunks if chunk.completes_fill)
        logits = self._logits.get(rows)
        if logits is None:
            logits = torch.zeros(rows, NULL_VOCAB)
            logits[:, 7] = 1.0
            self._logits[rows] = logits
        return logits


class _Timer:
    """Accumulates the wall time spent inside a wrapped callable."""

    def __init__(self) -> None:
        self.total = 0.0

    def wrap(self, function):  # noqa: ANN001, ANN202
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        return timed


def null_engine(max_running: int, policy: str = "fcfs") -> Engine:
    config = EngineConfig(
        num_pages=8192,
        page_size=16,
        max_running_requests=max_running,
        max_batched_tokens=max(2048, max_running),
        device="cpu",
        dtype="float32",
        backend="torch",
        overlap_schedule=True,
        scheduler=SchedulerConfig(policy=policy),
    )
    return Engine(config, NullRunner(), build_policy(config.scheduler), frozenset({2}), 4096)


def anatomy(  # noqa: ANN001
    engine: Engine, batch: int, prompt_len: int, new_tokens: int, sync, clients: int = 4
) -> dict[str, float]:
    generator = torch.Generator().manual_seed(100 + batch)
    requests = [
        Request(
            f"a{batch}-{i}-{time.monotonic_ns()}",
            f"c{i % clients}",
            torch.randint(100, 400, (prompt_len,), generator=generator).tolist(),
            SamplingConfig(max_tokens=new_tokens, ignore_eos=True),
        )
        for i in range(batch)
    ]
    for request in requests:
        engine.submit(request)
    while engine.has_work() and any(r.tokens_to_compute > 1 or not r.output_ids for r in requests):
        engine.step()
    sync()
    forward, wait = _Timer(), _Timer()
    original_forward, original_wait = engine.runner.forward, inflight.SampledTokens.wait
    engine.runner.forward = forward.wrap(original_forward)
    inflight.SampledTokens.wait = wait.wrap(original_wait)
    steps: list[float] = []
    try:
        start = time.perf_counter()
        while engine.has_work():
            before = time.perf_counter()
            engine.step()
            steps.append(time.perf_counter() - before)
        sync()
        elapsed = time.perf_counter() - start
    finally:
        engine.runner.forward = original_forward
        inflight.SampledTokens.wait = original_wait
    count = len(steps)
    step_ms = 1e3 * elapsed / count
    forward_ms = 1e3 * forward.total / count
    wait_ms = 1e3 * wait.total / count
    return {
        "batch": batch,
        "steps": count,
        "ms_per_step": round(step_ms, 4),
        "median_step_ms": round(1e3 * statistics.median(steps), 4),
        "max_step_ms": round(1e3 * max(steps), 4),
        "forward_host_ms": round(forward_ms, 4),
        "wait_device_ms": round(wait_ms, 4),
        "bookkeeping_host_ms": round(step_ms - forward_ms - wait_ms, 4),
        "host_share": round((step_ms - wait_ms) / step_ms, 3),
        "tok_per_s": round(batch * count / elapsed),
    }


def _tune_collector() -> bool:
    """The engine process's collector settings (engine_loop); False in a tree from before them."""
    try:
        from radixfair.gc_tuning import tune_for_serving
    except ImportError:
        return False
    tune_for_serving()
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--null-runner", action="store_true", help="CPU: the engine's host cost alone")
    parser.add_argument(
        "--python-collector-defaults", action="store_true", help="keep CPython's gc thresholds (older trees)"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="real weights (a model directory); default random weights",
    )
    parser.add_argument(
        "--cold-first",
        action="store_true",
        help="also time the first batch before any warm-up (what a script with no warm-up measures)",
    )
    parser.add_argument("--policy", default="fcfs", help="--null-runner: the engine's scheduling policy")
    parser.add_argument("--clients", type=int, default=4, help="clients the requests are spread over")
    parser.add_argument(
        "--repeat", type=int, default=1, help="--null-runner: runs per batch, the fastest kept"
    )
    parser.add_argument("--label", default="", help="a name for this tree (e.g. a commit) in the output")
    parser.add_argument("--out-name", default="", help="also write bench/results/<name>.{json,md}")
    args = parser.parse_args()
    tuned = not args.python_collector_defaults and _tune_collector()
    if args.null_runner:
        torch.set_num_threads(1)
        rows = [
            min(
                (
                    anatomy(
                        null_engine(batch, args.policy),
                        batch,
                        args.prompt_len,
                        args.new_tokens,
                        lambda: None,
                        args.clients,
                    )
                    for _ in range(args.repeat)
                ),
                key=lambda row: row["ms_per_step"],  # on a shared box the least disturbed run
            )
            for batch in args.batches
        ]
    else:
        from bench.engine.gpu_engine_bench import make_engine, make_random_model

        model_dir = args.model_dir or make_random_model(Path(tempfile.mkdtemp()) / "smollm2-135m-random")
        engine = make_engine(model_dir, "triton", "bfloat16", 128)
        cold = []
        if args.cold_first:
            # Triton compiles (and the graph runner captures) on first use, inside the timed steps.
            first = args.batches[-1]
            cold = [
                {
                    **anatomy(engine, first, args.prompt_len, args.new_tokens, torch.cuda.synchronize),
                    "cold": True,
                }
            ]
        anatomy(engine, 128, args.prompt_len, 16, torch.cuda.synchronize)  # warm-up
        rows = cold + [
            anatomy(engine, batch, args.prompt_len, args.new_tokens, torch.cuda.synchronize)
            for batch in args.batches
        ]
    weights = "null" if args.null_runner else ("real" if args.model_dir else "random")
    rows = [
        {"label": args.label, "weights": weights, "cold": False, "collector_tuned": tuned, **row}
        for row in rows
    ]
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.out_name:
        from bench.report import write_results

        notes = {
            "null": "null runner (the engine's host cost alone)",
            "random": "random SmolLM2-135M",
            "real": f"real weights from {args.model_dir}",
        }[weights]
        write_results(args.out_name, rows, list(rows[0]), {"args": vars(args)}, notes)


if __name__ == "__main__":
    main()
