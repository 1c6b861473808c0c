"""bench/results/ holds summaries a reader can read, a few MB in all (issue 17.4).

Committed: each page's table, its figures, and JSON with the aggregates and per-client figures the
pages cite. Raw per-request dumps and traces go to bench/results/raw/ and eval_traces/, which git
ignores; each page's header names the command that writes them again. Before issue 17 the folder
held 21 MB, with single JSON files over 100,000 lines.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = "bench/results"
# "A few MB at most": the summaries came to 5.4 MB when this was written (2026-11-30).
MAX_TOTAL_BYTES = 6_000_000
# The largest summary was 259 KB (a multi-worker table's JSON with per-client rows).
MAX_FILE_BYTES = 512_000
# A per-request dump runs to tens of thousands of lines; the longest summary was 2,762.
MAX_JSON_LINES = 10_000


def committed_results() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", RESULTS], cwd=REPO, capture_output=True, check=True, text=True
    ).stdout
    return [REPO / name for name in listed.split("\0") if name]


def test_the_committed_results_are_a_few_megabytes() -> None:
    files = committed_results()

    assert files, "git lists no bench/results files"
    assert sum(path.stat().st_size for path in files) <= MAX_TOTAL_BYTES


def test_no_committed_result_is_a_raw_dump() -> None:
    files = committed_results()

    too_big = [str(p.relative_to(REPO)) for p in files if p.stat().st_size > MAX_FILE_BYTES]
    too_long = [
        str(p.relative_to(REPO))
        for p in files
        if p.suffix == ".json" and p.read_bytes().count(b"\n") > MAX_JSON_LINES
    ]
    raw = [str(p.relative_to(REPO)) for p in files if {"raw", "eval_traces"} & set(p.relative_to(REPO).parts)]

    assert (too_big, too_long, raw) == ([], [], [])


def test_raw_dumps_and_traces_are_ignored_by_git() -> None:
    paths = [f"{RESULTS}/raw/eval_multi_worker_cpu.json", f"{RESULTS}/eval_traces/trace.jsonl.gz"]

    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True
    ).stdout.split()

    assert ignored == paths
