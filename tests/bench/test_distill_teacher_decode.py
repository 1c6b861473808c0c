"""bench/distill/distill_teacher_decode.py: interleaved decode rounds, rows judged against bf16."""

from __future__ import annotations

import statistics
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bench.distill.distill_decode_speed import (
    DecodeRun,
    DecodeSpeedConfig,
    InterleavedSpeeds,
    interleaved_decode_speeds,
)
from bench.distill.distill_teacher_decode import speed_rows
from radixfair_distiller.quantize import quantize_model_dir


def _speeds(tok_s: dict[tuple[str, int], list[float]]) -> InterleavedSpeeds:
    runs = {key: [DecodeRun(rate, 1e3 / rate) for rate in rates] for key, rates in tok_s.items()}
    return InterleavedSpeeds(runs=runs)


def test_rows_give_median_worst_and_the_ratio_of_medians_to_bf16_at_the_same_batch() -> None:
    speeds = _speeds(
        {
            ("bf16", 1): [100.0, 90.0, 110.0],
            ("int8", 1): [120.0, 60.0, 130.0],
            ("bf16", 128): [1000.0, 1000.0, 900.0],
            ("int8", 128): [990.0, 1000.0, 980.0],
        }
    )

    rows = speed_rows(speeds, "bf16", {"bf16": 269.0, "int8": 135.0})

    assert [(r["variant"], r["batch"]) for r in rows] == [
        ("bf16", 1),
        ("int8", 1),
        ("bf16", 128),
        ("int8", 128),
    ]
    int8_b1, int8_b128 = rows[1], rows[3]
    assert (int8_b1["rounds"], int8_b1["median_tok_s"], int8_b1["worst_tok_s"]) == (3, 120.0, 60.0)
    assert int8_b1["ratio_to_bf16"] == 1.2
    assert int8_b1["worst_ratio"] == 60.0 / 90.0
    assert int8_b1["target"] == "faster: yes"
    assert int8_b1["weights_MB"] == 135.0
    assert int8_b128["ratio_to_bf16"] == 0.99
    assert int8_b128["target"] == "no slower: NO"
    assert "target" not in rows[0]


_RATES = st.lists(st.floats(1.0, 1e6, allow_nan=False), min_size=1, max_size=7)


@given(bf16_b1=_RATES, fp8_b1=_RATES, bf16_b8=_RATES, fp8_b8=_RATES)
def test_every_row_orders_worst_median_best_and_its_target_follows_the_ratio_of_medians(
    bf16_b1: list[float], fp8_b1: list[float], bf16_b8: list[float], fp8_b8: list[float]
) -> None:
    speeds = _speeds({("bf16", 1): bf16_b1, ("fp8", 1): fp8_b1, ("bf16", 8): bf16_b8, ("fp8", 8): fp8_b8})

    rows = speed_rows(speeds, "bf16")

    for row in rows:
        assert row["worst_tok_s"] <= row["median_tok_s"] <= row["best_tok_s"]
        if row["variant"] == "bf16":
            assert row["ratio_to_bf16"] == 1.0
    fp8 = {row["batch"]: row for row in rows if row["variant"] == "fp8"}
    ratio_b1 = statistics.median(fp8_b1) / statistics.median(bf16_b1)
    ratio_b8 = statistics.median(fp8_b8) / statistics.median(bf16_b8)
    assert fp8[1]["target"] == ("faster: yes" if ratio_b1 > 1 else "faster: NO")
    assert fp8[8]["target"] == ("no slower: yes" if ratio_b8 >= 1 else "no slower: NO")


def test_every_model_is_timed_once_a_round_at_every_batch_on_the_worker_engine(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    dirs = {"fp32": tiny_model_dir, "int8": quantize_model_dir(tiny_model_dir, tmp_path / "int8", "int8")}
    config = DecodeSpeedConfig(batches=(1, 2), prompt_len=6, new_tokens=3, device="cpu")
    order: list[str] = []

    speeds = interleaved_decode_speeds(dirs, config, rounds=2, log=order.append)

    assert sorted(speeds.runs) == [("fp32", 1), ("fp32", 2), ("int8", 1), ("int8", 2)]
    assert all(len(runs) == 2 and all(r.tok_s > 0 for r in runs) for runs in speeds.runs.values())
    assert set(speeds.build_s) == {"fp32", "int8"}
    timed = [line.split(":")[0] for line in order if line.startswith("round")]
    assert timed == [
        f"round {i} {name} batch {b}" for i in (0, 1) for name in ("fp32", "int8") for b in (1, 2)
    ]
