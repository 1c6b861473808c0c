"""bench/distill/gpu_distill_ddp.py's verdict: torchrun's loss curve vs one process's, within rounding?"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ (a package at the repository root, not installed) comes before tests/bench's namespace.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.distill.gpu_distill_ddp import compare, within_noise  # noqa: E402

# A falling curve whose consecutive steps differ by ~0.05 (other rows each step).
SINGLE = [3.0 - 0.01 * i + (0.05 if i % 2 else -0.05) for i in range(40)]


def test_a_drift_below_the_curves_own_step_noise_is_within_noise_on_the_gpu():
    drifted = [x + 1e-4 * i for i, x in enumerate(SINGLE)]  # 0 at the first step, 0.004 at the last

    numbers = compare({"losses": SINGLE}, {"losses": drifted})

    assert numbers["first_step_abs_diff"] == 0.0 and numbers["steps_compared"] == 40
    assert numbers["max_abs_diff"] < numbers["curve_step_noise"]
    assert within_noise(numbers, cpu=False)


def test_a_first_step_apart_by_more_than_the_loss_sums_rounding_is_not_within_noise():
    # A rank on the wrong rows or a loss weighted wrong shows at the first step, before any update.
    shifted = [x * 1.01 for x in SINGLE]

    assert not within_noise(compare({"losses": SINGLE}, {"losses": shifted}), cpu=False)


def test_on_the_cpu_fp32_a_difference_of_one_in_ten_thousand_is_too_much():
    drifted = SINGLE[:1] + [x * (1 + 2e-4) for x in SINGLE[1:]]

    assert not within_noise(compare({"losses": SINGLE}, {"losses": drifted}), cpu=True)
    assert within_noise(compare({"losses": SINGLE}, {"losses": list(SINGLE)}), cpu=True)


def test_a_cut_run_is_compared_over_the_steps_both_made():
    numbers = compare({"losses": SINGLE}, {"losses": SINGLE[:7]})

    assert numbers["steps_compared"] == 7 and numbers["max_abs_diff"] == 0.0
