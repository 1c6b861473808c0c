"""bench/engine/serving_ab_summary.py: one page from interleaved runs; a missing run is left out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run_file(path: Path, rates: dict[str, float]) -> Path:
    """A serving_bench JSON as a run writes it (the fields the summary reads)."""
    rows = [
        {"path": "worker", "workload": w, "out_tok_s": r, "step_ms": r / 1e4, "rows_per_step": 200.0}
        for w, r in rates.items()
    ]
    env = {"date": "2026-12-01T00:00:00+00:00", "machine": {"processor": "x", "cpus": 16, "gpu": "H200"}}
    path.write_text(json.dumps({**env, "python": "3.12", "versions": {}, "git_commit": "abc", "rows": rows}))
    return path


def test_medians_and_worst_per_variant_over_interleaved_rounds_and_a_missing_run_left_out(
    tmp_path: Path,
) -> None:
    runs = [
        ("a", _run_file(tmp_path / "a1.json", {"unique": 10.0, "shared_prefix": 5.0})),
        ("b", _run_file(tmp_path / "b1.json", {"unique": 20.0, "shared_prefix": 7.0})),
        ("a", _run_file(tmp_path / "a2.json", {"unique": 30.0, "shared_prefix": 6.0})),
        ("b", tmp_path / "b2.json"),  # cut: never written
    ]
    script = str(ROOT / "bench/engine/serving_ab_summary.py")
    command = [sys.executable, script, "--name", "ab", "--out-dir", str(tmp_path), "--device-command", "loop"]
    command += [f"--run={variant}={path}" for variant, path in runs]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "ab.json").read_text())
    medians = {(m["variant"], m["workload"]): m for m in report["medians"]}
    assert medians[("a", "unique")]["rounds"] == 2 and medians[("a", "unique")]["median_out_tok_s"] == 20.0
    assert medians[("a", "unique")]["worst_out_tok_s"] == 10.0
    assert (
        medians[("b", "shared_prefix")]["rounds"] == 1
        and medians[("b", "shared_prefix")]["worst_out_tok_s"] == 7.0
    )
    assert [(r["variant"], r["round"]) for r in report["rows"]][::2] == [("a", 1), ("b", 1), ("a", 2)]
    assert report["machine"]["gpu"] == "H200"  # the runs' machine, not this one
    assert "b2.json" in done.stderr
    assert "| variant | path | workload | rounds |" in (tmp_path / "ab.md").read_text()
