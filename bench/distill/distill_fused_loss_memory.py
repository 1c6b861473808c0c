"""Peak memory of one distillation-loss forward + backward: plain (full logits) vs chunked fused LM head.

SmolLM2 shapes: hidden 576, vocabulary 49,152, fp32, CPU. For each token
count the loss runs in a fresh child process, and the figure is the rise of
the process's peak resident memory (ru_maxrss) over its resident memory just
before the call, with the inputs (hidden states, heads, labels) already
allocated. Also records wall time of one call (one run; the machine is
shared, so times are indicative only).

    .venv/bin/python bench/distill/distill_fused_loss_memory.py [--tokens 256 1024 2048] [--chunk 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import markdown_table, write_results  # noqa: E402

HIDDEN = 576
VOCAB = 49152

_CHILD = rf"""
import json, resource, sys, time
import torch
from radixfair_distiller.losses import DistillLossConfig, fused_linear_distill_loss, plain_distill_loss

mode, tokens, chunk, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
hidden = torch.randn(tokens, {HIDDEN}, generator=g).requires_grad_(True)
head = (torch.randn({VOCAB}, {HIDDEN}, generator=g) * 0.02).requires_grad_(True)
teacher_hidden = torch.randn(tokens, {HIDDEN}, generator=g)
teacher_head = torch.randn({VOCAB}, {HIDDEN}, generator=g) * 0.02
labels = torch.randint(0, {VOCAB}, (tokens,), generator=g)
config = DistillLossConfig(kind="jsd", beta=0.5, temperature=1.0, hard_label_weight=0.5, chunk_tokens=chunk)
loss_fn = fused_linear_distill_loss if mode == "fused" else plain_distill_loss
def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
before = rss_kib()
start = time.perf_counter()
loss = loss_fn(hidden, head, teacher_hidden, teacher_head, labels, config)
loss.backward()
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_rise_mib": (peak - before) / 1024, "seconds": elapsed, "loss": float(loss)}}))
"""


def measure(mode: str, tokens: int, chunk: int, threads: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(tokens), str(chunk), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for tokens in args.tokens:
        plain = measure("plain", tokens, args.chunk, args.threads)
        fused = measure("fused", tokens, args.chunk, args.threads)
        assert abs(plain["loss"] - fused["loss"]) < 1e-3 * abs(plain["loss"]), (plain, fused)
        rows.append(
            {
                "tokens": tokens,
                "logits_mib": tokens * VOCAB * 4 / 2**20,
                "plain_peak_mib": round(plain["peak_rise_mib"], 1),
                "fused_peak_mib": round(fused["peak_rise_mib"], 1),
                "saving": round(plain["peak_rise_mib"] / max(fused["peak_rise_mib"], 1e-9), 2),
                "plain_s": round(plain["seconds"], 3),
                "fused_s": round(fused["seconds"], 3),
            }
        )
        print(rows[-1], flush=True)
    columns = ["tokens", "logits_mib", "plain_peak_mib", "fused_peak_mib", "saving", "plain_s", "fused_s"]
    notes = (
        f"Loss: JSD (beta 0.5) mixed 50/50 with hard-label CE, forward + backward, hidden {HIDDEN}, "
        f"vocabulary {VOCAB}, fp32 on CPU, {args.threads} thread(s), fused chunk {args.chunk} tokens. "
        "`logits_mib` is one [tokens x vocab] fp32 tensor; the plain loss holds several (student and "
        "teacher logits, log-probabilities, the gradient). Peak = rise of ru_maxrss over the resident "
        "size just before the call, inputs already allocated; one fresh process per cell. Times are one "
        "run on a shared machine."
    )
    path = write_results(
        "distill_fused_loss_memory",
        rows,
        columns,
        {"chunk_tokens": args.chunk, "threads": args.threads, "hidden": HIDDEN, "vocab": VOCAB},
        notes,
    )
    print(markdown_table(rows, columns))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
