"""bench/engine/serving_bench.py end to end at its smallest: every path on loopback, every request done.

The count-based run serves every path, the http one included, from one start-up of the bench (its
in-process engine, worker and router are most of its time); each test reads its own part of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEW_TOKENS = 4
CONCURRENCY = (1, 2)
# Concurrency 1 repeats its client's requests to reach it (two rounds); concurrency 2 runs one round.
MIN_REQUESTS = 2
GRPC_PATHS = ("in_process", "worker", "router")


@pytest.fixture(scope="module")
def smallest_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The out-dir of one count-based run of every path: serving_test.{json,md}."""
    out_dir = tmp_path_factory.mktemp("serving-smallest")
    command = [
        sys.executable,
        str(ROOT / "bench" / "engine" / "serving_bench.py"),
        "--model-dir", str(tiny_model_dir),
        "--paths", *GRPC_PATHS, "http",
        "--concurrency", *map(str, CONCURRENCY),
        "--prompt-len", "16",
        "--prefix-len", "32",
        "--suffix-len", "8",
        "--new-tokens", str(NEW_TOKENS),
        "--min-requests", str(MIN_REQUESTS),
        "--warmup-requests", "1",
        "--tenants", "2",
        "--torch-threads", "1",
        "--tag", "test",
        "--out-dir", str(out_dir),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return out_dir


def test_serving_bench_smallest_run_completes_every_request_on_every_path(smallest_run: Path) -> None:
    report = json.loads((smallest_run / "serving_test.json").read_text())
    for key in ("date", "machine", "python", "versions", "git_commit", "command", "config", "notes"):
        assert key in report, key
    assert {"torch", "grpcio"} <= set(report["versions"])
    cells = [(r["path"], r["workload"], r["concurrency"]) for r in report["rows"]]
    expected = [
        (p, w, c) for p in (*GRPC_PATHS, "http") for w in ("unique", "shared_prefix") for c in CONCURRENCY
    ]
    assert sorted(cells) == sorted(expected)
    rows = [r for r in report["rows"] if r["path"] in GRPC_PATHS]  # http's own: the test below
    for row in rows:
        requests = max(1, -(-MIN_REQUESTS // row["concurrency"])) * row["concurrency"]
        assert row["requests"] == row["completed"] == requests, row
        assert row["errors"] == [], row
        assert row["output_tokens"] == requests * NEW_TOKENS
        assert row["out_tok_s"] > 0 and row["ttft_p50_ms"] is not None and row["itl_p99_ms"] is not None
        # The worker's own TTFT (its result's timings) is a part of what the client waited, on one
        # monotonic clock, request by request; so is each percentile. Queueing is a part of it.
        assert 0.0 <= row["worker_queue_p99_ms"] <= row["worker_ttft_p99_ms"] <= row["ttft_p99_ms"], row
        assert 0.0 < row["worker_ttft_p50_ms"] <= row["ttft_p50_ms"], row
        # Prompts are random past the shared prefix: only the shared-prefix workload can hit the cache,
        # and with a request after the first one on the same prefix it does.
        if row["workload"] == "unique":
            assert row["cache_hit_rate"] == 0.0, row
        elif row["concurrency"] == 1:
            assert row["cache_hit_rate"] > 0.0, row
        if row["path"] == "router":
            assert row["degraded"]["transitions"] == 0 and row["degraded"]["connected_at_end"] is True
        else:
            assert row["degraded"] is None
        assert "_records" not in row and "token_gaps" not in row  # aggregates only

    markdown = (smallest_run / "serving_test.md").read_text()
    assert "| path | workload | concurrency |" in markdown
    assert "serving_bench.py" in markdown


def test_timed_cells_keep_every_client_streaming_until_the_duration_on_every_path(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # 3 s: a worker's loop counters are read twice a second, and the figures need two reads inside
    # the steady window (from every client's first token to the duration's end).
    duration_s, concurrency = 3.0, 2
    raw = tmp_path / "raw.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "engine" / "serving_bench.py"),
        "--model-dir", str(tiny_model_dir),
        "--concurrency", str(concurrency),
        "--workloads", "unique",
        "--prompt-len", "16",
        "--new-tokens", str(NEW_TOKENS),
        "--cell-duration-s", str(duration_s),
        "--warmup-requests", "1",
        "--tenants", "2",
        "--torch-threads", "1",
        "--tag", "timed",
        "--out-dir", str(tmp_path),
        "--raw", str(raw),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]

    rows = json.loads((tmp_path / "serving_timed.json").read_text())["rows"]
    assert sorted(r["path"] for r in rows) == ["in_process", "router", "worker"]
    records = json.loads(raw.read_text())
    for row in rows:
        cell = records[f"{row['path']}/unique/{concurrency}"]
        per_client = {c: [r for r in cell if r["client"] == c] for c in range(concurrency)}
        # Closed loop: each client sent requests back to back, each new, all within the duration.
        for client_records in per_client.values():
            assert len(client_records) >= 2, row["path"]
            starts = sorted(r["start"] for r in client_records)
            assert starts[-1] - starts[0] < duration_s
            ends = sorted(r["end"] for r in client_records)
            assert all(later >= earlier for earlier, later in zip(ends, starts[1:]))
        assert len({r["request_id"] for r in cell}) == len(cell)
        assert row["requests"] == row["completed"] == len(cell) and row["errors"] == []
        # The steady window opens once every client has its first token and ends with the duration.
        assert 0 < row["ramp_s"] and 0 < row["window_s"] < duration_s
        assert row["out_tok_s"] > 0 and row["out_tok_s_wall"] > 0
        # The batch was sampled through the cell (every 0.1 s of 3 s, on each path's own engine): a
        # closed loop of 2 clients holds at most 2 requests in the engine, and some at every sample
        # but those that fell between a request's end and its client's next.
        assert row["occupancy_samples"] >= 5 and row["occupancy_errors"] == 0, row
        assert 0 < row["engine_running_mean"] + row["engine_waiting_mean"] <= concurrency, row
        # One monotonic clock: a client sends before the worker stamps the arrival and reads the end
        # after the worker's, request by request, so the time outside the worker is never negative.
        assert 0 < row["worker_mean_ms"] <= row["request_mean_ms"], row
        assert row["outside_worker_mean_ms"] >= 0 and row["client_gap_mean_ms"] >= 0, row
        assert row["tokens_per_message"] >= 1, row
        # The engine loop's counters over the cell: it stepped, each step sampled at most the
        # clients' rows, and its device waits are a part of its step time.
        assert row["steps_per_s"] > 0 and 0 < row["rows_per_step"] <= concurrency, row
        assert 0 < row["prefill_step_share"] <= 1 and row["step_ms"] > 0, row
        assert 0 <= row["device_wait_share"] <= 1, row
        # The worker front's event-loop lag where there is a front; none in process.
        if row["path"] == "in_process":
            assert row["front_loop_lag_ms"] is None
        else:
            assert row["front_loop_lag_ms"] >= 0, row
            # Over the steady window the worker (front and engine) used some CPU, at most 2 cores
            # per process tree here (a front, an engine process; this box has few cores).
            assert 0 < row["worker_engine_cores_steady"] <= row["worker_cores_steady"], row
        # The loop thread's scheduler clock over the steady window: it ran some of the time, and
        # time on a CPU and in the run queue are parts of one wall (rounding: 3 decimals each).
        on_cpu, runqueue = row["loop_on_cpu_share"], row["loop_runqueue_share"]
        assert 0 < on_cpu and 0 <= runqueue and on_cpu + runqueue <= 1.002, row
    assert "| out_tok_s_wall | window_s | ramp_s |" in (tmp_path / "serving_timed.md").read_text()


def test_router_over_n_workers_is_set_against_n_in_process_engines_at_their_share() -> None:
    from bench.engine.serving_report import derived_rows

    def row(path: str, concurrency: int, tok_s: float) -> dict[str, object]:
        return {"path": path, "workload": "unique", "concurrency": concurrency, "out_tok_s": tok_s,
                "ttft_p50_ms": 1.0, "itl_mean_ms": 1.0}  # fmt: skip

    rows = [row("in_process", 4, 100.0), row("in_process", 8, 150.0), row("worker", 8, 140.0)]
    rows.append(row("router", 8, 180.0))
    by_path = {r["path"]: r for r in derived_rows(rows, workers=2) if r["concurrency"] == 8}
    # Two engines at 4 streams each make 200 tokens/s together; the router's 8 streams made 180.
    assert by_path["router"]["router_vs_summed_in_process_tok_s"] == 0.9
    assert by_path["router"]["router_vs_worker_tok_s"] == 180.0 / 140.0
    assert "router_vs_summed_in_process_tok_s" not in by_path["in_process"]
    # One worker: nothing to sum; an odd split has no in-process cell to stand for a worker's share.
    assert "router_vs_summed_in_process_tok_s" not in next(
        r for r in derived_rows(rows) if r["path"] == "router" and r["concurrency"] == 8
    )
    assert all("router_vs_summed_in_process_tok_s" not in r for r in derived_rows(rows, workers=3))


def test_the_http_path_completes_every_request_beside_the_grpc_router_path(smallest_run: Path) -> None:
    """The router's cells again over its OpenAI API, in the same run as the gRPC router path."""
    report = json.loads((smallest_run / "serving_test.json").read_text())
    rows = {(r["path"], r["workload"], r["concurrency"]): r for r in report["rows"] if r["path"] == "http"}
    assert sorted(rows) == sorted(("http", w, c) for w in ("unique", "shared_prefix") for c in CONCURRENCY)
    for (_, workload, concurrency), row in rows.items():
        # Each client repeats its requests until the cell has --min-requests.
        assert row["requests"] == row["completed"] == -(-MIN_REQUESTS // concurrency) * concurrency, row
        assert row["errors"] == [] and row["output_tokens"] == row["completed"] * NEW_TOKENS, row
        assert row["ttft_p50_ms"] is not None and row["out_tok_s"] > 0
        assert "_records" not in row and "token_gaps" not in row  # aggregates only
        if workload == "unique":  # the usage chunk's cached_tokens, as on gRPC
            assert row["cache_hit_rate"] == 0.0, row
        elif concurrency == 1:
            assert row["cache_hit_rate"] > 0.0, row
    derived = {(d["path"], d["concurrency"]): d for d in report["derived"]}
    for concurrency in CONCURRENCY:
        assert derived[("http", concurrency)]["http_vs_grpc_tok_s"] > 0
    assert "http_vs_grpc_tok_s" in (smallest_run / "serving_test.md").read_text()
