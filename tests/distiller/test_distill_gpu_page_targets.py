"""Issue 15's "KD beats hard labels at the same budget" on the GPU results page, from its rows.

bench/distill/distill_gpu_page.targets judges the rows a GPU call wrote; these rows are made by hand
with the fields a call writes, so each outcome of the rule is seen.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.distill.distill_gpu_page import HARD_LABELS_SUFFIX, targets  # noqa: E402


def student(name: str, perplexity: float, top1: float) -> dict:
    return {
        "row": name,
        "perplexity": perplexity,
        "top1_agreement": top1,
        "ppl_x_teacher": perplexity / 26.6,
        "top1_vs_baseline": top1 / 0.98,
    }


def kd_rule(rows: list[dict]) -> list[dict]:
    return [
        t for t in targets(rows, 0.98) if "KD beats hard labels at the same budget (perplexity" in t["target"]
    ]


def test_kd_that_is_better_on_both_scores_meets_the_target():
    rows = [student("width student", 32.1, 0.667), student(f"width student{HARD_LABELS_SUFFIX}", 40.0, 0.53)]
    [rule] = kd_rule(rows)
    assert rule["met"] and rule["target"].startswith("width student")
    assert rule["measured"] == "32.1 vs 40.0, 0.667 vs 0.530"


def test_kd_worse_on_either_score_misses_it():
    perplexity_worse = [
        student("depth student", 49.1, 0.60),
        student(f"depth student{HARD_LABELS_SUFFIX}", 40.0, 0.53),
    ]
    top1_worse = [
        student("depth student", 39.0, 0.50),
        student(f"depth student{HARD_LABELS_SUFFIX}", 40.0, 0.53),
    ]
    assert [r["met"] for r in kd_rule(perplexity_worse)] == [False]
    assert [r["met"] for r in kd_rule(top1_worse)] == [False]


def test_without_a_hard_label_row_there_is_nothing_to_judge():
    assert kd_rule([student("width student", 32.1, 0.667)]) == []
