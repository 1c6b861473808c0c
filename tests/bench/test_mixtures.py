"""The heavy-flood mixtures: the same light clients as the plain mixture of the seed, a heavier flood."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.workloads.mixtures import random_mixture


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000), workers=st.sampled_from([4, 16, 64]), flood_load=st.sampled_from([2.0, 4.0])
)
def test_a_heavy_flood_scales_only_the_flooders_to_the_stated_load(seed, workers, flood_load):
    capacity = 3.0
    plain = random_mixture(seed, workers, capacity, 30)
    heavy = random_mixture(seed, workers, capacity, 30, flood_load)
    assert heavy.roles == plain.roles and heavy.spec.duration_s == plain.spec.duration_s
    assert heavy.spec.name != plain.spec.name  # a different trace, saved under another name
    light = {c.client_id: c for c in plain.spec.clients if plain.roles[c.client_id] != "flood"}
    assert {c.client_id: c for c in heavy.spec.clients if c.client_id in light} == light
    flood = sum(c.arrivals.rate for c in heavy.spec.clients if heavy.roles[c.client_id] == "flood")
    assert flood == pytest.approx(flood_load * capacity * workers)
