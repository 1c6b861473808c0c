"""`radixfair up` / the demo put N workers on one host: they share its cores instead of oversubscribing."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from radixfair.local_stack import LocalStack, LocalStackConfig, worker_torch_threads


@given(cpus=st.integers(1, 512), workers=st.integers(1, 64))
def test_workers_never_ask_for_more_threads_than_the_host_has_unless_each_needs_one(cpus, workers):
    threads = worker_torch_threads(cpus, workers)
    assert threads >= 1
    assert threads * workers <= max(cpus, workers)


def test_each_worker_of_a_stack_gets_its_share_and_an_explicit_setting_wins(tmp_path):
    shared = LocalStack(LocalStackConfig(run_dir=tmp_path, workers=2))
    settings = shared._worker_settings(0, 1234)
    assert settings["torch_threads"] == worker_torch_threads(os.cpu_count() or 1, 2)
    pinned = LocalStack(LocalStackConfig(run_dir=tmp_path, workers=2, worker_settings={"torch_threads": 3}))
    assert pinned._worker_settings(1, 1235)["torch_threads"] == 3
