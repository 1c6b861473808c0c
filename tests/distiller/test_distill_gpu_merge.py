"""One page from several GPU calls (bench/distill/distill_gpu_merge.py): rows side by side, merges repeat."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# bench/ (a package at the repository root, not installed) comes before tests/bench's namespace.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.distill.distill_gpu_merge import FIRST_CALL, call_name, merged, write_merged  # noqa: E402


def page(rows: list[dict], **meta) -> dict:
    header = {"date": "d", "git_commit": "c", "command": "cmd", "machine": {"gpu": "H200"}}
    return {**header, "phases": {"data_s": 1.0}, **meta, "rows": rows}


def student(name: str, ppl_x: float, top1: float) -> dict:
    return {"row": name, "perplexity": 30 * ppl_x, "ppl_x_teacher": ppl_x, "top1_vs_baseline": top1}


BASE = page(
    [{"row": "teacher", "perplexity": 30.0}, student("depth student", 1.5, 0.61)],
    self_agreement_baseline={"value": 0.98},
    learning_curves={"depth": [{"tokens": 1}]},
)
WIDTH = page(
    [{"row": "teacher", "perplexity": 30.1}, student("width student", 1.4, 0.66)],
    learning_curves={"width": [{"tokens": 2}]},
    command="width-cmd",
)


def test_a_later_call_adds_its_rows_next_to_the_earlier_ones_and_names_its_own_teacher():
    rows, meta = merged(BASE, WIDTH, "width")

    assert [r["row"] for r in rows] == ["teacher", "depth student", "teacher (width)", "width student"]
    assert rows[0]["perplexity"] == 30.0 and rows[2]["perplexity"] == 30.1
    assert set(meta["learning_curves"]) == {"depth", "width"}
    assert meta["calls"][FIRST_CALL]["command"] == "cmd" and meta["calls"]["width"]["command"] == "width-cmd"
    measured = {t["target"]: t["met"] for t in meta["targets"]}
    assert measured["width student perplexity <= 1.3x teacher"] is False
    assert measured["depth student top-1 >= 0.85 x baseline"] is False


def test_merging_the_same_call_again_replaces_what_it_added(tmp_path):
    write_merged(BASE, WIDTH, "width", "distill_results_gpu", tmp_path)
    once = json.loads((tmp_path / "distill_results_gpu.json").read_text())
    again_width = {**WIDTH, "rows": [student("width student", 1.3, 0.7)]}

    rows, meta = merged(once, again_width, "width")

    assert [r["row"] for r in rows] == ["teacher", "depth student", "width student"]
    assert rows[-1]["ppl_x_teacher"] == 1.3
    assert list(meta["calls"]) == [FIRST_CALL, "width"]


def test_the_call_is_named_by_what_the_page_name_adds():
    assert call_name("distill_results_gpu_width", "distill_results_gpu") == "width"
    assert call_name("distill_torchrun_gpu", "distill_results_gpu") == "distill_torchrun_gpu"
