"""bench/engine/serving_bench.py's http path at its smallest: the router's cells again over its OpenAI API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEW_TOKENS = 4
CONCURRENCY = (1, 3)


def test_the_http_path_completes_every_request_beside_the_grpc_router_path(tiny_model_dir, tmp_path):
    command = [
        sys.executable, str(ROOT / "bench" / "engine" / "serving_bench.py"),
        "--model-dir", str(tiny_model_dir), "--paths", "router", "http",
        "--concurrency", *map(str, CONCURRENCY), "--prompt-len", "16", "--prefix-len", "32",
        "--suffix-len", "8", "--new-tokens", str(NEW_TOKENS), "--min-requests", "3",
        "--warmup-requests", "1", "--tenants", "2", "--torch-threads", "1",
        "--tag", "http_test", "--out-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]

    report = json.loads((tmp_path / "serving_http_test.json").read_text())
    rows = {(r["path"], r["workload"], r["concurrency"]): r for r in report["rows"]}
    assert sorted(rows) == sorted(
        (p, w, c) for p in ("router", "http") for w in ("unique", "shared_prefix") for c in CONCURRENCY
    )
    for (_, workload, concurrency), row in rows.items():
        # Each client repeats its requests until the cell has --min-requests.
        assert row["requests"] == row["completed"] == -(-3 // concurrency) * concurrency, row
        assert row["errors"] == [] and row["output_tokens"] == row["completed"] * NEW_TOKENS, row
        assert row["ttft_p50_ms"] is not None and row["out_tok_s"] > 0
        if workload == "unique":  # the usage chunk's cached_tokens, as on gRPC
            assert row["cache_hit_rate"] == 0.0, row
        elif concurrency == 1:
            assert row["cache_hit_rate"] > 0.0, row
    derived = {(d["path"], d["concurrency"]): d for d in report["derived"]}
    for concurrency in CONCURRENCY:
        assert derived[("http", concurrency)]["http_vs_grpc_tok_s"] > 0
    assert "http_vs_grpc_tok_s" in (tmp_path / "serving_http_test.md").read_text()
