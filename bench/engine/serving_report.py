"""The serving bench's aggregates and report: per-cell figures, ratios between paths, JSON + markdown."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engine.engine_occupancy import LOOP_COLUMNS  # noqa: E402
from bench.engine.process_cpu import ROLES  # noqa: E402
from bench.engine.serving_clients import RequestRecord  # noqa: E402
from bench.report import environment, markdown_table  # noqa: E402


def steady_window(records: Sequence[RequestRecord], duration_s: float) -> tuple[float, float] | None:
    """A timed cell's steady window: from every client streaming to the end of its duration.

    It opens when the last client's first request has its first token (the ramp: connections,
    the first prefills of every stream at once) and closes ``duration_s`` after the first request
    was sent, when clients stop starting requests (the tail only drains what is left). None when
    the ramp outlasted the cell.
    """
    if not records:
        return None
    start = min(r.start for r in records)
    first_of_client: dict[int, RequestRecord] = {}
    for record in records:
        if record.client not in first_of_client or record.start < first_of_client[record.client].start:
            first_of_client[record.client] = record
    if any(r.first is None for r in first_of_client.values()):
        return None
    opens = max(r.first for r in first_of_client.values())  # type: ignore[type-var]
    closes = start + duration_s
    return (opens, closes) if opens < closes else None


def summarize(records: Sequence[RequestRecord], duration_s: float = 0.0) -> dict[str, object]:
    """A cell's figures; for a timed cell (``duration_s``) tokens/s, requests/s and TTFT come from its
    steady window (``steady_window``), and the whole cell's wall-time tokens/s is kept apart."""
    ok = [r for r in records if r.ok]
    wall = max(r.end for r in records) - min(r.start for r in records) if records else 0.0
    window = steady_window(ok, duration_s) if duration_s else None
    in_window = ok
    if window is not None:
        in_window = [r for r in ok if window[0] <= r.start <= window[1]]
    ttft = [1e3 * (r.first - r.start) for r in in_window if r.first is not None]
    worker_ttft = [r.worker_ttft_ms for r in in_window if r.worker_ttft_ms is not None]
    worker_queue = [r.worker_queue_ms for r in in_window if r.worker_queue_ms is not None]
    token_gaps = [1e3 * g for r in ok for g in r.token_gaps]
    message_gaps = [1e3 * g for r in ok for g in r.message_gaps]
    if window is not None:  # the gaps that end inside the window
        message_gaps, token_gaps = [], []
        for r in ok:
            for (before, _), (at, count) in zip(r.arrivals, r.arrivals[1:]):
                if window[0] <= at <= window[1]:
                    message_gaps.append(1e3 * (at - before))
                    token_gaps += [1e3 * (at - before) / count] * count
    prompt = sum(r.prompt_tokens for r in ok)
    split = request_time_split(in_window, ok)

    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    out_tok_s = sum(r.tokens for r in ok) / wall if wall else None
    req_s = len(ok) / wall if wall else None
    timed: dict[str, object] = {}
    if duration_s:
        timed = {"out_tok_s_wall": out_tok_s, "window_s": None, "ramp_s": None}
        out_tok_s = req_s = None
        if window is not None:
            span = window[1] - window[0]
            tokens = sum(n for r in ok for at, n in r.arrivals if window[0] <= at <= window[1])
            ended = sum(window[0] <= r.end <= window[1] for r in ok)
            out_tok_s, req_s = tokens / span, ended / span
            timed.update(window_s=span, ramp_s=window[0] - min(r.start for r in ok))
    return {
        "requests": len(records),
        "completed": len(ok),
        "errors": sorted({r.error for r in records if r.error})[:5],
        "output_tokens": sum(r.tokens for r in ok),
        "wall_s": wall,
        "out_tok_s": out_tok_s,
        "req_s": req_s,
        **timed,
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p99_ms": pct(ttft, 99),
        "worker_ttft_p50_ms": pct(worker_ttft, 50),
        "worker_ttft_p99_ms": pct(worker_ttft, 99),
        "worker_queue_p99_ms": pct(worker_queue, 99),
        "itl_p99_ms": pct(token_gaps, 99),
        "itl_mean_ms": float(np.mean(token_gaps)) if token_gaps else None,
        "message_gap_p99_ms": pct(message_gaps, 99),
        "cache_hit_rate": sum(r.cached_tokens for r in ok) / prompt if prompt else None,
        **split,
    }


def request_time_split(in_window: Sequence[RequestRecord], ok: Sequence[RequestRecord]) -> dict[str, object]:
    """Where a closed-loop client's time went, as means over ``in_window``'s requests (ms).

    ``request_mean_ms``: a request from the client's send to its end as the client saw it;
    ``worker_mean_ms``: the part between its arrival in the worker and its end there;
    ``outside_worker_mean_ms``: the rest (the way in and the way back out, through any router);
    ``client_gap_mean_ms``: from a request's end to its client's next send (over ``ok``, the cell's
    completed requests). Throughput is the clients over the sum of the first and the last:
    time outside the worker is time the batch runs one request short. ``tokens_per_message``: how
    many tokens a streamed message carried on average (above 1: deltas were coalesced).
    """
    timed = [r for r in in_window if r.worker_total_ms is not None]
    by_client: dict[int, list[RequestRecord]] = {}
    for record in ok:
        by_client.setdefault(record.client, []).append(record)
    gaps = []
    for records in by_client.values():
        records.sort(key=lambda r: r.start)
        gaps += [1e3 * (later.start - earlier.end) for earlier, later in zip(records, records[1:])]
    messages = sum(len(r.arrivals) for r in ok)

    def mean_of(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 2) if values else None

    return {
        "request_mean_ms": mean_of([1e3 * (r.end - r.start) for r in timed]),
        "worker_mean_ms": mean_of([r.worker_total_ms for r in timed]),  # type: ignore[misc]
        "outside_worker_mean_ms": mean_of([1e3 * (r.end - r.start) - r.worker_total_ms for r in timed]),  # type: ignore[operator]
        "client_gap_mean_ms": mean_of(gaps),
        "tokens_per_message": round(sum(r.tokens for r in ok) / messages, 3) if messages else None,
    }


COLUMNS = [
    "path",
    "workload",
    "concurrency",
    "completed",
    "out_tok_s",
    "vs_in_process",
    "req_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "worker_ttft_p99_ms",
    "worker_queue_p99_ms",
    "itl_p99_ms",
    "cache_hit_rate",
    "degraded_transitions",
]


def add_ratios(rows: list[dict[str, object]]) -> None:
    base = {(r["workload"], r["concurrency"]): r["out_tok_s"] for r in rows if r["path"] == "in_process"}
    for row in rows:
        reference = base.get((row["workload"], row["concurrency"]))
        row["vs_in_process"] = row["out_tok_s"] / reference if reference and row["out_tok_s"] else None


CPU_COLUMNS = [
    "path",
    "workload",
    "concurrency",
    *(f"{role}_cores" for role in ROLES),
    "engine_running_mean",
    "engine_waiting_mean",
    *LOOP_COLUMNS,
]

# Where a request's time went (request_time_split).
TIME_SPLIT_COLUMNS = [
    "path",
    "workload",
    "concurrency",
    "request_mean_ms",
    "worker_mean_ms",
    "outside_worker_mean_ms",
    "client_gap_mean_ms",
    "tokens_per_message",
]

# A timed cell's extra columns (serving_bench --cell-duration-s): wall-time tokens/s, window, ramp.
TIMED_COLUMNS = ["out_tok_s_wall", "window_s", "ramp_s"]

DERIVED_COLUMNS = [
    "path",
    "concurrency",
    "shared_vs_unique_tok_s",
    "router_added_ttft_p50_ms",
    "router_added_itl_mean_ms",
    "router_vs_worker_tok_s",
    "router_vs_summed_in_process_tok_s",
    "http_vs_grpc_tok_s",
    "http_added_ttft_p50_ms",
]


def derived_rows(rows: list[dict[str, object]], workers: int = 1) -> list[dict[str, object]]:
    """What issue 11's targets compare: shared prefix against unique, and the router against the worker.

    With ``workers`` > 1 the router spreads ``concurrency`` streams over that many workers, so it is
    also set against that many in-process engines each serving concurrency / workers streams (the
    in-process cell at that concurrency, times ``workers``), when the run has that cell.
    """
    cell = {(r["path"], r["workload"], r["concurrency"]): r for r in rows}
    out = []
    for path, workload, concurrency in cell:
        if workload != "unique":
            continue
        unique, shared = cell[(path, "unique", concurrency)], cell.get((path, "shared_prefix", concurrency))
        row: dict[str, object] = {"path": path, "concurrency": concurrency}
        row["shared_vs_unique_tok_s"] = _ratio(shared and shared["out_tok_s"], unique["out_tok_s"])
        worker = cell.get(("worker", "unique", concurrency))
        if path == "router" and worker is not None:
            row["router_added_ttft_p50_ms"] = _difference(unique["ttft_p50_ms"], worker["ttft_p50_ms"])
            row["router_added_itl_mean_ms"] = _difference(unique["itl_mean_ms"], worker["itl_mean_ms"])
            row["router_vs_worker_tok_s"] = _ratio(unique["out_tok_s"], worker["out_tok_s"])
        share = cell.get(("in_process", "unique", concurrency // workers))
        if path == "router" and workers > 1 and concurrency % workers == 0 and share is not None:
            summed = workers * share["out_tok_s"] if isinstance(share["out_tok_s"], float) else None
            row["router_vs_summed_in_process_tok_s"] = _ratio(unique["out_tok_s"], summed)
        if path == "http":
            from bench.engine.serving_http_client import (
                http_vs_grpc,  # here: it needs httpx, only for the http path
            )

            row.update(http_vs_grpc(unique, cell.get(("router", "unique", concurrency))))
        out.append(row)
    return out


def _source_differs_from_commit() -> bool | None:
    """Whether this script has changes not in the commit the report names (None: no git here)."""
    try:
        diff = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", Path(__file__).name], cwd=Path(__file__).parent
        )
    except OSError:
        return None
    return {0: False, 1: True}.get(diff.returncode)


def _ratio(a: object, b: object) -> float | None:
    return a / b if isinstance(a, float) and isinstance(b, float) and b else None


def _difference(a: object, b: object) -> float | None:
    return a - b if isinstance(a, float) and isinstance(b, float) else None


def write_report(args: argparse.Namespace, rows: list[dict[str, object]], meta: dict[str, object]) -> Path:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(("torch", "grpcio", "protobuf", "triton", "transformers", "redis"))
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    env["bench_source_differs_from_commit"] = _source_differs_from_commit()
    name = f"serving_{args.tag}"
    (out_dir / f"{name}.json").write_text(
        json.dumps(
            {**env, "command": command, **meta, "rows": rows, "derived": derived_rows(rows, args.workers)},
            indent=2,
            default=str,
        )
    )
    machine = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)  # type: ignore[union-attr]
    lines = [
        f"# {name}",
        "",
        f"{env['date']} · {machine['processor']} ({machine['cpus']} cpus,"  # type: ignore[index]
        f" load {machine['load_average']}) · GPU: {machine['gpu'] or 'none'}"  # type: ignore[index]
        f" · Python {env['python']} · {versions} · commit {env['git_commit']}",
        "",
        f"`{command}`",
        "",
        markdown_table(rows, COLUMNS + (TIMED_COLUMNS if any("window_s" in r for r in rows) else [])),
        "",
        "Unique-prompt cells against each other: shared_prefix over unique tokens/s per path, and what the",
        "router adds to the worker path (TTFT p50, mean inter-token time, tokens/s ratio); with several",
        "workers, the router against as many in-process engines each at its share of the streams:",
        "",
        markdown_table(derived_rows(rows, args.workers), DERIVED_COLUMNS),
        "",
        "Where the cores went in each cell (bench/engine/process_cpu.py): CPU seconds of each role's",
        "processes over the cell's wall time; router and worker sum all their processes (the worker's",
        "engine process included), bench is this process and the load generators it spawned and reaped",
        "within the cell (other: any other child still running); engine_running_mean / _waiting_mean:",
        "the requests in the serving engines' batch and queue, sampled every 0.1 s; steps_per_s to",
        "device_wait_share: the engine loop over the cell (its StepStats: mean sampled rows a step, share",
        "of steps with a prefill, ms inside a step, share of that spent waiting on the device);",
        "front_loop_lag_ms: the worker fronts' mean event-loop lag (radixfair_*_event_loop_lag_seconds);",
        "*_cores_steady: the serving processes' cores over the steady window (the *_cores columns before",
        "them are over the whole cell, drain and report-back included); loop_on_cpu_share /",
        "loop_runqueue_share: the engine loop thread's share of the steady window on a CPU and runnable",
        "but waiting for one (its schedstat; the rest it was blocked: GIL, pipe, device, idle; summed",
        "over the workers' engine loops where a cell has several, so up to their number)",
        "(bench/engine/engine_occupancy.py):",
        "",
        markdown_table(rows, CPU_COLUMNS),
        "",
        "Where a request's time went, means in ms (serving_report.request_time_split): the client's",
        "whole request, the part inside the worker (its arrival there to its end), the rest (the way in",
        "and back out), the client's gap before its next request, and tokens per streamed message:",
        "",
        markdown_table(rows, TIME_SPLIT_COLUMNS),
        "",
        str(meta["notes"]),
    ]
    failed = [r for r in rows if r["completed"] != r["requests"]]
    if failed:
        lines += ["", "Requests that did not complete (first errors of each cell):", ""]
        lines += [f"- {r['path']}/{r['workload']}/{r['concurrency']}: {r['errors']}" for r in failed]
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
