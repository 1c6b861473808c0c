"""eval_dlpm_parked_credit_cost.py simulates each tree with that tree's own engine, and states its command.

Its pages compare commits, so the test runs the script at small scale (one pattern, one seed) on two
trees: HEAD, and HEAD with dlpm.py from the fix's parent. Where the trees are the same file for file,
every number must match; the page must state the command that was run. The worker refuses to run on
an engine imported from anywhere but its tree, so a run that silently used this checkout's engine
fails here.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.eval import eval_dlpm_parked_credit_cost as script

REPO = Path(__file__).resolve().parents[2]
COMMAND = re.compile(r"^Regenerate \(code at commit [^)]*\): `(?P<command>[^`]+)`$", re.M)


def has_commit(rev: str) -> bool:
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"], cwd=REPO, capture_output=True
    )
    return found.returncode == 0


def run_script(argv: list[str], out: Path, monkeypatch) -> tuple[str, dict]:
    monkeypatch.setattr(sys, "argv", [str(REPO / "bench/eval/eval_dlpm_parked_credit_cost.py"), *argv])
    script.main()
    (page,) = out.glob("*.md")
    return COMMAND.search(page.read_text())["command"], json.loads(page.with_suffix(".json").read_text())


def test_two_copies_of_one_tree_give_the_same_numbers_and_the_page_states_its_command(tmp_path, monkeypatch):
    argv = ["--cost", "cpu", "--patterns", "shared_prefix", "--seeds", "1101", "--out", str(tmp_path)]
    argv += ["--tree", "a=HEAD", "--tree", "b=HEAD"]

    stated, page = run_script(argv, tmp_path, monkeypatch)

    assert shlex.split(stated)[2:] == argv
    a, b = page["rows"]
    assert (a["tree"], b["tree"]) == ("a", "b") and a["commit"] == b["commit"]
    assert b["seeds_changed"] == 0 and b["thr_ratio_median"] == b["thr_ratio_worst"] == 1.0
    per_seed = page["per_seed"]["shared_prefix"]
    assert per_seed["a"] == per_seed["b"] and per_seed["a"]["throughput_tok_s"][0] > 0


@pytest.mark.skipif(not has_commit("5138e56"), reason="a shallow clone without the fix's commit")
def test_an_overlaid_file_is_the_one_from_the_named_commit(tmp_path):
    spec = script.resolved("HEAD,engine/src/radixfair_engine/scheduler/dlpm.py@5138e56^")

    tree, what = script.archived("before", spec, tmp_path)

    path = "engine/src/radixfair_engine/scheduler/dlpm.py"
    old = subprocess.run(["git", "show", f"5138e56^:{path}"], cwd=REPO, capture_output=True, check=True)
    assert (tree / path).read_bytes() == old.stdout
    assert "parked_with_credit" not in old.stdout.decode()
    assert what.endswith(f"+dlpm.py@{script._short('5138e56^')}")


def test_the_patterns_are_eval_single_workers() -> None:
    from bench.eval import eval_single_worker

    assert script.PATTERNS == eval_single_worker.PATTERNS
