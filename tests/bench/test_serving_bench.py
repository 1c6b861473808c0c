"""bench/serving_bench.py end to end at its smallest: every path on loopback, every request completes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEW_TOKENS = 4
CONCURRENCY = (1, 2)
MIN_REQUESTS = 2


def test_serving_bench_smallest_run_completes_every_request_on_every_path(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "serving_bench.py"),
        "--model-dir", str(tiny_model_dir),
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
        "--out-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]

    report = json.loads((tmp_path / "serving_test.json").read_text())
    for key in ("date", "machine", "python", "versions", "git_commit", "command", "config", "notes"):
        assert key in report, key
    assert {"torch", "grpcio"} <= set(report["versions"])
    rows = report["rows"]
    cells = [(r["path"], r["workload"], r["concurrency"]) for r in rows]
    expected = [
        (p, w, c)
        for p in ("in_process", "worker", "router")
        for w in ("unique", "shared_prefix")
        for c in CONCURRENCY
    ]
    assert sorted(cells) == sorted(expected)
    for row in rows:
        requests = max(1, -(-MIN_REQUESTS // row["concurrency"])) * row["concurrency"]
        assert row["requests"] == row["completed"] == requests, row
        assert row["errors"] == [], row
        assert row["output_tokens"] == requests * NEW_TOKENS
        assert row["out_tok_s"] > 0 and row["ttft_p50_ms"] is not None and row["itl_p99_ms"] is not None
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

    markdown = (tmp_path / "serving_test.md").read_text()
    assert "| path | workload | concurrency |" in markdown
    assert "serving_bench.py" in markdown
