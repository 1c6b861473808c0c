"""One results page from several GPU calls: a later call's rows and sections added to an earlier page.

The device calls of issue 15 are bounded (one student's training a call), so the width student, the
torchrun comparison and the depth student come from different calls, each on a fresh machine. The
page keeps them side by side: the earlier page's rows stay as they were measured, a later call's
rows are added (its own teacher row renamed "teacher (<call>)", so each student's ratios can be
read against the teacher of its own call), and each call's date, commit, command, phases and
figures go under ``calls``. Merging a call again replaces what that call added before.

    # Here, after a call's files came back (the device call already writes the merged page too):
    .venv/bin/python bench/distill/distill_gpu_merge.py bench/results/distill_results_gpu.json \\
        <files_at>/distill_results_gpu_width.json --out bench/results
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.distill.distill_gpu_page import COLUMNS, NOTES, sections, targets  # noqa: E402
from bench.report import write_results  # noqa: E402

# What write_results puts at the top of a page's JSON: the call's own, not the merged page's.
HEADER_KEYS = ("date", "machine", "python", "versions", "git_commit", "command", "raw")
# A later call's figures that describe the call, kept under calls[<call>].
CALL_KEYS = (
    "phases",
    "budget",
    "settings",
    "teacher",
    "data",
    "plan",
    "throughput",
    "chosen_loss",
    "self_agreement_baseline",
    "teacher_eval",
    "eval_seconds",
    "students",
    "errors",
    "decode_skipped",
    "terminated",
    "torchrun",
)
FIRST_CALL = "first call (depth student, sweep)"


def call_name(page_name: str, base_name: str) -> str:
    """ "distill_results_gpu_width" merged into "distill_results_gpu" is the call "width"."""
    return page_name.removeprefix(base_name).strip("_") or page_name


def merged(base: dict, part: dict, call: str) -> tuple[list[dict], dict]:
    """The rows and meta of ``base`` (a page's JSON) with ``part`` (a later call's JSON) added."""
    base, part = copy.deepcopy(base), copy.deepcopy(part)
    base_rows, part_rows = base.pop("rows", []), part.pop("rows", [])
    meta = {k: v for k, v in base.items() if k not in HEADER_KEYS}
    calls = meta.setdefault("calls", {})
    if not calls:
        calls[FIRST_CALL] = {k: base[k] for k in HEADER_KEYS if k in base}
    calls[call] = {k: part[k] for k in (*HEADER_KEYS, *CALL_KEYS) if k in part}
    rename = {n: f"{n} ({call})" for n in ("teacher", "teacher int8", "teacher fp8")}
    added = []
    for r in part_rows:
        r = {**r, "row": rename.get(r["row"], r["row"]), "call": call}
        added.append(r)
    names = {r["row"] for r in added}
    # Rows a previous merge of this call added, and any the later call measured again, are replaced.
    rows = [r for r in base_rows if r["row"] not in names and r.get("call") != call] + added
    for key in ("learning_curves", "extrapolation"):
        meta.setdefault(key, {}).update(part.get(key, {}))
    decode = meta.setdefault("decode", {})
    decode.update({rename.get(n, n): v for n, v in part.get("decode", {}).items()})
    meta["targets"] = targets(rows, meta.get("self_agreement_baseline", {}).get("value"), decode)
    return rows, meta


def later_calls(meta: dict) -> list[str]:
    """A section per call after the first: what it ran, its plan and prediction, and what went wrong."""
    out = []
    for name, c in meta.get("calls", {}).items():
        if name == FIRST_CALL:
            continue
        out += ["", f"## Call `{name}`", ""]
        out.append(
            f"{c.get('date')} · commit {c.get('git_commit')} · {c.get('machine', {}).get('gpu')} · "
            f"`{c.get('command')}`"
        )
        if c.get("teacher"):
            t = c["teacher"]
            out.append(f"Teacher: {t.get('source')}{' (RANDOM weights)' if t.get('random') else ''}.")
        if c.get("phases"):
            budget = c.get("budget", {}).get("total_s")
            out.append(
                "Phases (s): "
                + ", ".join(f"{k}: {v}" for k, v in c["phases"].items())
                + f" (budget {budget} s)."
            )
        if c.get("data"):
            d = c["data"]
            out.append(
                f"Data: chat examples per split {d.get('chat_examples')}, text tokens per split "
                f"{d.get('text_tokens')}, stdlib code tokens (train) {d.get('code_tokens', 0):,}; "
                f"the teacher wrote {d.get('teacher_answer_tokens_generated', 0):,} "
                f"answer tokens to {d.get('prompts_answered', 0):,} of {d.get('prompts_offered', 0):,} "
                f"prompts at {d.get('engine_tokens_per_s') or 0:,.0f} tokens/s ({d.get('admission_rounds')} "
                f"admission rounds; engine {d.get('engine', {})})."
            )
        if c.get("throughput") and c.get("plan"):
            plan = c["plan"]
            line = (
                f"Before training: {c['throughput']['kd_tokens_per_s']:,.0f} KD tokens/s on the "
                f"{c['throughput'].get('student', 'depth')} student; planned {plan.get('width_tokens', 0):,} "
                f"width / {plan.get('depth_tokens', 0):,} depth tokens. Predicted perplexity x teacher from "
                f"the CPU points: "
                + ", ".join(
                    f"{v:.2f} at {k}"
                    for k, v in plan["predicted_from_cpu_points"]["ppl_x_teacher_at"].items()
                )
            )
            gpu = plan.get("predicted_from_depth_gpu_curve")
            if gpu:
                line += (
                    f"; from the first call's depth curve at {gpu['tokens']:,} tokens: perplexity x teacher "
                    f"{_fmt(gpu['ppl_x_teacher'])}, top-1 agreement {_fmt(gpu['top1_agreement'])}"
                )
            out.append(line + ".")
        if c.get("torchrun"):
            out += torchrun_section(c["torchrun"])
        for phase, text in (c.get("errors") or {}).items():
            out.append(f"- error in `{phase}`: `{text.strip().splitlines()[-1][:300]}`")
        if c.get("terminated"):
            out.append(f"**Stopped from outside ({c['terminated']}).**")
    return out


def torchrun_section(t: dict) -> list[str]:
    """Two loss curves (torchrun on N GPUs and one process) and how far apart they are."""
    out = [
        "",
        f"torchrun ({t.get('backend')}, {t.get('world_size')} ranks) against one process, same seed, data "
        f"and global batch: {t.get('steps')} steps of {t.get('tokens_per_step', 0):,} tokens, "
        f"{t.get('student')} student, {t.get('precision')}, teacher {t.get('teacher')}.",
        f"Max |loss difference| {_fmt(t.get('max_abs_diff'))} (relative {_fmt(t.get('max_rel_diff'))}); "
        f"at the first step {_fmt(t.get('first_step_abs_diff'))}. Expected from the arithmetic: "
        f"{t.get('expected', '')} Within it: {t.get('within_noise')}.",
        "",
        "| step | loss, one process | loss, torchrun | difference |",
        "|---|---|---|---|",
    ]
    single, ranks = t.get("single", []), t.get("distributed", [])
    for i, (a, b) in enumerate(zip(single, ranks)):
        if i < 4 or i % max(1, len(single) // 12) == 0 or i == len(single) - 1:
            out.append(f"| {i + 1} | {a:.5f} | {b:.5f} | {b - a:+.2e} |")
    return out


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_merged(base: dict, part: dict, call: str, name: str, out: Path) -> Path:
    rows, meta = merged(base, part, call)
    command = "; ".join(f"[{n}] {c.get('command')}" for n, c in meta["calls"].items())
    try:
        notes = NOTES + "\n" + sections(meta, rows) + "\n" + "\n".join(later_calls(meta))
    except Exception as error:  # noqa: BLE001 (a rendering slip must not lose the rows; the JSON has them)
        notes = NOTES + f"\n(the sections below the table failed to render: {error!r})"
    return write_results(name, rows, [*COLUMNS, "call"], meta, notes, command=command, results_dir=out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base", help="the page JSON the calls are added to")
    parser.add_argument("parts", nargs="+", help="later calls' page JSONs, in order")
    parser.add_argument("--out", default=None, help="results directory (default: the base's)")
    args = parser.parse_args()
    base_path = Path(args.base)
    base = json.loads(base_path.read_text())
    out = Path(args.out) if args.out else base_path.parent
    for part_path in map(Path, args.parts):
        call = call_name(part_path.stem, base_path.stem)
        write_merged(base, json.loads(part_path.read_text()), call, base_path.stem, out)
        base = json.loads((out / f"{base_path.stem}.json").read_text())
    print(f"wrote {out / base_path.stem}.md")


if __name__ == "__main__":
    main()
