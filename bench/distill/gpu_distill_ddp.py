"""torchrun on N GPUs (NCCL) against one process: the same student, seed, data and global batch.

The distiller's own training loop (radixfair_distiller.training.distill, under torchrun with the
process groups of radixfair_distiller.distributed) trains one depth-pruned student for a short fixed
token budget twice: once as one process on one device, once as ``--nproc`` torchrun ranks (NCCL on
GPUs, gloo on the CPU), each rank on its contiguous slice of every global batch. Both runs start from
the same saved student and read the same saved data, so their loss curves differ only by rounding;
the page shows both curves, their largest difference, and the difference the arithmetic predicts.

Set-up (teacher, data, pruning) happens once here, in this process; the two runs are subprocesses
(``--worker``), each with its own time cap, so a hung rank costs its run, not the page.

    # GPU, 2-GPU host (lead): bash bench/distill/gpu_distill_session.sh ddp   (see there for the call)
    python3 bench/distill/gpu_distill_ddp.py --teacher-dir /tmp/smollm2-real --nproc 2 --time-budget-s 330
    # CPU, gloo, tiny random teacher:
    .venv/bin/python bench/distill/gpu_distill_ddp.py --teacher-dir TINY --device cpu --nproc 2 --steps 4 \\
        --batch-size 4 --seq-len 32 --text-max-files 10 --out /tmp/ddp
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.distill.distill_gpu_page import Page  # noqa: E402

EXPECTED_NOISE = (
    "every rank runs the forward and backward of its rows under bf16 autocast, so each rank's weight "
    "gradient is rounded to bf16 (unit roundoff u = 2^-9 ~ 2e-3, relative to its half-batch sum) before "
    "the all-reduce sums the halves in fp32, where one process rounds the whole batch's sum once: a "
    "gradient element differs by up to ~u (|g_1| + |g_2|), about 0.2-0.4% of it. The first step's loss "
    "sees no gradient yet: only the order of the loss sums differs (fp32, ~1e-6 relative, more if a GEMM "
    "picks another kernel for half the rows, still < 1e-4 averaged over the batch's tokens). AdamW "
    "divides by sqrt(v) + eps, so an element whose gradient is near zero can move by up to +-lr in one "
    "run and not the other: the curves drift apart step by step, but only by rounding, so the difference "
    "stays below the curve's own step-to-step noise (the median change between consecutive steps in its "
    "second half, which comes from each step drawing other rows). In fp32 on the CPU (gloo) u is 2^-24 "
    "and the curves agree to ~1e-5 relative."
)


@dataclass(frozen=True)
class RunSpec:
    """What both runs train: read by each worker from spec.json in the work directory."""

    teacher_dir: str
    student_dir: str
    data_dir: str
    steps: int
    batch_size: int
    seq_len: int
    text_max_files: int
    learning_rate: float
    warmup_steps: int
    precision: str
    chunk_tokens: int
    seed: int
    device: str


# -- set-up, once ----------------------------------------------------------------------------------
def prepare(args: argparse.Namespace, work: Path) -> tuple[RunSpec, dict]:
    """Teacher, text data and the depth-pruned student, saved for both runs; and what they are."""
    from bench.distill.distill_gpu_parts import random_smollm2_teacher
    from bench.distill.distill_results import student_shapes
    from radixfair.tokenization import PromptEncoder
    from radixfair_distiller.data.batches import calibration_batches
    from radixfair_distiller.model_dir import is_model_dir, load_llama, save_llama
    from radixfair_distiller.pruning import prune
    from radixfair_distiller.recipe import DepthPruning, PruneSpec

    if args.teacher_dir and is_model_dir(Path(args.teacher_dir)):
        teacher_dir, source = Path(args.teacher_dir), str(args.teacher_dir)
    else:
        teacher_dir = random_smollm2_teacher(work / "random-teacher", Path(args.tokenizer_dir))
        source = "RANDOM weights in SmolLM2-135M's shape (the real teacher did not reach this machine)"
    device = torch.device(args.device)
    teacher = load_llama(teacher_dir, device)
    encoder = PromptEncoder(teacher_dir)
    bundle = text_bundle(encoder, args.seq_len, args.text_max_files, work / "data")
    keep, _ = student_shapes(teacher.config.to_dict(), 0.5)
    batches = calibration_batches(bundle, args.calibration_sequences, args.seq_len)
    student, report = prune(teacher, PruneSpec(depth=DepthPruning(keep_layers=keep)), batches)
    student_dir = save_llama(student, work / "student", teacher_dir)
    precision = "bfloat16" if device.type == "cuda" else "float32"
    spec = RunSpec(
        str(teacher_dir),
        str(student_dir),
        str(work / "data"),
        args.steps,
        args.batch_size,
        args.seq_len,
        args.text_max_files,
        args.learning_rate,
        max(1, args.steps // 10),
        precision,
        args.chunk_tokens,
        args.seed,
        args.device,
    )
    about = {
        "teacher": source,
        "student": f"depth-pruned, {len(report.kept_layers)} of {teacher.config.num_hidden_layers} layers",
        "data": {split: int(t.numel()) for split, t in bundle.text.items()},
    }
    return spec, about


def text_bundle(encoder, seq_len: int, text_max_files: int, data_dir: Path):
    """Standard-library docstrings only (no chat): the data is a pure function of the files and tokenizer."""
    from radixfair_distiller.data.bundle import DataBundle, _text_streams
    from radixfair_distiller.data.splits import SPLITS
    from radixfair_distiller.recipe import DataSpec

    eos = encoder.eos_token_id if encoder.eos_token_id is not None else 0
    text = _text_streams(DataSpec(seq_len=seq_len, text_max_files=text_max_files), encoder, eos, data_dir)
    return DataBundle(text=text, chat={split: [] for split in SPLITS}, eos_token_id=eos, pad_token_id=eos)


# -- one run (a subprocess; under torchrun, every rank) -------------------------------------------
def worker(work: Path, out_name: str, stop_at_unix: float) -> None:
    from radixfair.tokenization import PromptEncoder
    from radixfair_distiller.distributed import TorchrunEnv, rank_device, start_distributed, stop_distributed
    from radixfair_distiller.model_dir import load_llama
    from radixfair_distiller.recipe import DistillSpec, LossSpec
    from radixfair_distiller.training import JobCancelledError, TrainingHooks, TrainingRun, distill

    spec = RunSpec(**json.loads((work / "spec.json").read_text()))
    env = TorchrunEnv.from_env(os.environ)
    ctx = start_distributed(env, spec.device, 120.0, 300.0) if env else None
    # The one-process run takes its device as rank 0 would (set_device refuses a bare "cuda").
    device = ctx.device if ctx else rank_device(spec.device, 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(spec.seed)
    teacher = load_llama(Path(spec.teacher_dir), device)
    student = load_llama(Path(spec.student_dir), device)
    # The set-up's cache file: the same token streams in every run and rank.
    bundle = text_bundle(
        PromptEncoder(Path(spec.teacher_dir)), spec.seq_len, spec.text_max_files, Path(spec.data_dir)
    )
    distill_spec = DistillSpec(
        steps=spec.steps,
        warmup_steps=spec.warmup_steps,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        precision=spec.precision,
        chat_fraction=0.0,
        checkpoint_every=10**9,
        loss=LossSpec(kind="forward_kl", chunk_tokens=spec.chunk_tokens),
    )
    losses: list[float] = []
    seconds: list[float] = []
    hooks = TrainingHooks(
        on_step=lambda r: (losses.append(r.loss), seconds.append(r.seconds)),
        on_checkpoint=lambda step: None,
        on_resume=lambda step: None,
        should_stop=lambda: time.time() >= stop_at_unix,
    )
    ranks = ctx.world_size if ctx else 1
    run = TrainingRun(
        distill_spec, spec.seed, spec.seq_len, work / f"checkpoint-{out_name}", work, device, dist=ctx
    )
    cut = False
    started = time.monotonic()
    try:
        distill(student, teacher, bundle, run, hooks)
    except JobCancelledError:
        cut = True
    result = {
        "losses": losses,
        "step_seconds": seconds,
        "seconds": time.monotonic() - started,
        "world_size": ranks,
        "backend": torch.distributed.get_backend() if ctx else None,
        "device": str(device),
        "cut_by_deadline": cut,
    }
    if ctx is None or ctx.is_main:
        (work / f"{out_name}.json").write_text(json.dumps(result))
    if ctx is not None:
        stop_distributed()


# -- the two runs and the page ----------------------------------------------------------------------
def launch(args: list[str], seconds: float, log: Path) -> int:
    """Runs ``args`` in its own session; on the cap the launcher and every rank are killed together."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    # NVLink multicast stays off on the shared GPU hosts (it can take their GPUs out of service).
    env.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            return process.wait(timeout=max(seconds, 1.0))
        except subprocess.TimeoutExpired:
            return -9
        finally:  # on the cap, or this process being stopped: no rank outlives the call
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def compare(single: dict, ranks: dict) -> dict:
    a, b = single["losses"], ranks["losses"]
    n = min(len(a), len(b))
    diffs = [abs(x - y) for x, y in zip(a[:n], b[:n])]
    rel = [d / max(abs(x), 1e-12) for d, x in zip(diffs, a)]
    half = a[n // 2 : n]
    step_noise = statistics.median(abs(y - x) for x, y in zip(half, half[1:])) if len(half) > 2 else math.nan
    return {
        "steps_compared": n,
        "max_abs_diff": max(diffs) if diffs else math.nan,
        "max_rel_diff": max(rel) if rel else math.nan,
        "first_step_abs_diff": diffs[0] if diffs else math.nan,
        "first_step_rel_diff": rel[0] if rel else math.nan,
        "curve_step_noise": step_noise,
        "loss_first_last": [a[0], a[n - 1]] if n else None,
    }


def within_noise(numbers: dict, cpu: bool) -> bool:
    """The first step within the loss sums' rounding, and no step further apart than the curve's noise."""
    first_ok = numbers["first_step_rel_diff"] <= (1e-5 if cpu else 1e-3)
    noise = numbers["curve_step_noise"]
    if cpu or math.isnan(noise):  # fp32: no drift to speak of; or too short a curve for its noise
        return first_ok and numbers["max_rel_diff"] <= (1e-4 if cpu else 0.02)
    return first_ok and numbers["max_abs_diff"] <= noise


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(Path(args.work_dir), args.worker, args.stop_at_unix)
        return
    started = time.monotonic()

    def terminated(signum: int, frame: object) -> None:
        # The session's backstop timeout: leave through the phases' finally (the page is written there).
        raise SystemExit(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    page = Page(
        args.name,
        Path(args.out),
        {"seed": args.seed, "phases": {}, "budget": {"total_s": args.time_budget_s}},
        merge_into=Path(args.merge_into) if args.merge_into else None,
    )
    meta = page.meta
    with page.phase("prepare", critical=True):
        spec, about = prepare(args, work)
        (work / "spec.json").write_text(json.dumps(asdict(spec)))
        meta["teacher"] = {"source": about["teacher"], "random": about["teacher"].startswith("RANDOM")}
    results: dict[str, dict] = {}
    me = str(Path(__file__).resolve())
    # The torchrun run first: it is the point of the call; one process after it, on its first device.
    plan = [
        (
            "distributed",
            ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", me],
        ),
        ("single", [me]),
    ]
    for index, (name, launcher) in enumerate(plan):
        with page.phase(f"run_{name}"):
            left = args.time_budget_s - (time.monotonic() - started) - 5.0
            cap = left / (len(plan) - index)  # the time left, shared with the runs still to come
            stop_at = time.time() + cap - 25.0  # start-up (imports, NCCL) comes out of the cap
            flags = ["--worker", name, "--work-dir", str(work), "--stop-at-unix", str(stop_at)]
            code = launch([*launcher, *flags], cap, Path(args.out) / f"ddp_{name}.log")
            if code != 0:
                raise RuntimeError(f"{name} run exited {code}; see ddp_{name}.log")
            results[name] = json.loads((work / f"{name}.json").read_text())
            print(
                f"{name}: {len(results[name]['losses'])} steps, {results[name]['seconds']:.1f}s", flush=True
            )
    with page.phase("compare"):
        single, ranks = results["single"], results["distributed"]
        numbers = compare(single, ranks)
        within = within_noise(numbers, spec.device == "cpu")
        meta["torchrun"] = {
            **numbers,
            "backend": ranks["backend"],
            "world_size": ranks["world_size"],
            "steps": spec.steps,
            "tokens_per_step": spec.batch_size * spec.seq_len,
            "precision": spec.precision,
            "student": about["student"],
            "teacher": about["teacher"],
            "data_tokens": about["data"],
            "single": single["losses"],
            "distributed": ranks["losses"],
            "seconds": {"single": single["seconds"], "distributed": ranks["seconds"]},
            "expected": EXPECTED_NOISE,
            "within_noise": within,
        }
        # No rows: the students' table is for students; the two curves are a section of their own.
        print(json.dumps({k: v for k, v in meta["torchrun"].items() if k not in ("single", "distributed")}))
    meta["phases"]["total_s"] = round(time.monotonic() - started, 2)
    page.write()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher-dir", default=None, help="the converted teacher (else random weights)")
    parser.add_argument(
        "--tokenizer-dir",
        default=str(Path(__file__).resolve().parents[1] / "scratch" / "gpu_distill" / "tokenizer"),
        help="tokenizer of the random stand-in teacher",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=6e-4)
    parser.add_argument("--chunk-tokens", type=int, default=4096)
    parser.add_argument("--text-max-files", type=int, default=0, help="stdlib files for the text (0: all)")
    parser.add_argument("--calibration-sequences", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=330.0)
    parser.add_argument("--work-dir", default="/tmp/gpu_distill_ddp")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    parser.add_argument("--name", default="distill_torchrun_gpu")
    parser.add_argument("--merge-into", default=None, help="a page JSON to add the comparison to")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stop-at-unix", type=float, default=math.inf, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.worker and args.batch_size % max(args.nproc, 1):
        raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of --nproc {args.nproc}")
    return args


if __name__ == "__main__":
    main()
