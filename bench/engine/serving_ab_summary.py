"""One page from an interleaved A/B of serving_bench runs: every run's cells, and each variant's median.

The lent GPU host is bimodal (the same cell differs by +-10k tokens/s from run to run), so a setting is
judged by interleaved rounds (A B C A B C ...) in one device call, never by one run against an older one.
Each run writes its own ``serving_<tag>.json``; this script reads them back, names each by its variant
(``--run VARIANT=PATH``, in the order they ran) and writes ``<out-dir>/<name>.{json,md}``: a row per
run and cell (tokens/s, the engine loop's ms a step and rows a step, TTFT p99, the worker's cores), then
per variant and workload the median over its rounds next to the worst round.

    python3 bench/engine/serving_ab_summary.py --name serving_gpu_h200_s10_switch_ab \\
        --device-command "the loop that ran the variants" \\
        --run default=out/serving_a_1.json --run fast=out/serving_b_1.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import RESULTS_DIR, markdown_table, readable_json, regenerating_command  # noqa: E402

CELL_COLUMNS = [
    "variant",
    "round",
    "path",
    "workload",
    "out_tok_s",
    "step_ms",
    "rows_per_step",
    "prefill_step_share",
    "device_wait_share",
    "loop_on_cpu_share",
    "ttft_p99_ms",
    "worker_cores",
    "worker_engine_cores",
    "router_cores",
]
MEDIAN_COLUMNS = [
    "variant",
    "path",
    "workload",
    "rounds",
    "median_out_tok_s",
    "worst_out_tok_s",
    "median_step_ms",
]


def cell_rows(runs: Sequence[tuple[str, Path]]) -> tuple[list[dict[str, object]], dict[str, object]]:
    """A row per (run, cell), with its variant and round; and the first run's environment."""
    rows: list[dict[str, object]] = []
    rounds: dict[str, int] = {}
    first: dict[str, object] = {}
    for variant, path in runs:
        if not path.exists():  # a run that failed or was cut: its variant has a round fewer
            print(f"no {path}: left out", file=sys.stderr)
            continue
        report = json.loads(path.read_text())
        first = first or report
        rounds[variant] = rounds.get(variant, 0) + 1
        for row in report["rows"]:
            rows.append(
                {"variant": variant, "round": rounds[variant], **{c: row.get(c) for c in CELL_COLUMNS[2:]}}
            )
    return rows, first


def medians(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Per (variant, path, workload): rounds, median and worst tokens/s, median ms a step."""
    groups: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["path"], row["workload"]), []).append(row)
    out = []
    for (variant, path, workload), cells in groups.items():
        rates = [float(c["out_tok_s"]) for c in cells if c["out_tok_s"] is not None]
        steps = [float(c["step_ms"]) for c in cells if c["step_ms"] is not None]
        out.append(
            {
                "variant": variant,
                "path": path,
                "workload": workload,
                "rounds": len(cells),
                "median_out_tok_s": statistics.median(rates) if rates else None,
                "worst_out_tok_s": min(rates) if rates else None,
                "median_step_ms": statistics.median(steps) if steps else None,
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="the page's name (no extension)")
    parser.add_argument("--run", action="append", required=True, metavar="VARIANT=PATH")
    parser.add_argument("--device-command", required=True, help="the command that ran the variants")
    parser.add_argument("--notes", default="")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    runs = []
    for item in args.run:
        variant, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"expected VARIANT=PATH, got {item!r}")
        runs.append((variant, Path(path)))
    rows, first = cell_rows(runs)
    summary = medians(rows)
    # The runs' own environment (the machine that ran them), not this script's.
    env = {k: first.get(k) for k in ("date", "machine", "python", "versions", "git_commit")}
    machine = env["machine"] or {}
    report = {
        **env,
        "command": regenerating_command(),
        "device_command": args.device_command,
        "bench_command_of_first_run": first.get("command"),
        "medians": summary,
        "rows": rows,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.name}.json").write_text(readable_json(report))
    versions = ", ".join(f"{k} {v}" for k, v in (env["versions"] or {}).items() if v)
    lines = [
        f"# {args.name}",
        "",
        f"{env['date']} · {machine.get('processor')} ({machine.get('cpus')} cpus) · GPU: "
        f"{machine.get('gpu') or 'none'} · Python {env['python']} · {versions} · commit {env['git_commit']}",
        "",
        f"Runs, in the order they ran (each a serving_bench.py run), then this page: `{args.device_command}`;"
        f" `{report['command']}`",
        "",
        "Per variant and workload, over its rounds:",
        "",
        markdown_table(summary, MEDIAN_COLUMNS),
        "",
        "Every run's cells:",
        "",
        markdown_table(rows, CELL_COLUMNS),
    ]
    if args.notes:
        lines += ["", args.notes.strip()]
    path = out_dir / f"{args.name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    main()
