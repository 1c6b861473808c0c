"""Train / calibration / evaluation splits that never overlap and never depend on a recipe.

An item's split is a pure function of its stable key (a prompt id, or a
docstring's file and qualified name), so every recipe, seed and machine puts
the same item in the same split: students are always evaluated on text none
of them trained or calibrated on.
"""

from __future__ import annotations

import hashlib

TRAIN = "train"
CALIBRATION = "calibration"
EVAL = "eval"
SPLITS = (TRAIN, CALIBRATION, EVAL)

# Percent of items per split: 80 train, 5 calibration, 15 eval.
_BOUNDS = ((80, TRAIN), (85, CALIBRATION), (100, EVAL))


def split_of(key: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return next(name for bound, name in _BOUNDS if bucket < bound)
