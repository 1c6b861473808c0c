"""One config path for every service: defaults < file < environment < flags."""

from __future__ import annotations

import pytest

from radixfair.config_loading import ConfigError, by_name, load_config
from radixfair_worker.config import WorkerConfig


def test_file_env_and_overrides_layer_in_order(tmp_path):
    path = tmp_path / "worker.yaml"
    path.write_text("port: 6000\nengine:\n  page_size: 8\n  scheduler:\n    quantum: 100\n")
    env = {"RADIXFAIR_ENGINE__SCHEDULER__QUANTUM": "200", "RADIXFAIR_PORT": "6001", "OTHER": "x"}
    config = load_config(WorkerConfig, path, env=env, overrides={"port": 6002})
    assert config.port == 6002
    assert config.engine.page_size == 8
    assert config.engine.scheduler.quantum == 200.0
    assert config.engine.scheduler.policy == "dlpm"  # untouched default


def test_a_partial_nested_section_keeps_the_other_defaults():
    config = load_config(WorkerConfig, env={}, overrides={"tracing.exporter": "otlp"})
    assert config.tracing.exporter == "otlp"
    assert config.tracing.service_name == "radixfair-worker"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"engine.pagesize": 4}, "unknown field"),
        ({"port": "not-a-number"}, "expected int"),
        ({"engine.max_running_requests": 1000, "engine.max_batched_tokens": 10}, "max_running_requests"),
    ],
)
def test_bad_settings_are_rejected_with_the_field_named(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(WorkerConfig, env={}, overrides=overrides)


def test_a_registry_table_refuses_two_classes_of_one_name_naming_both():
    class First:
        name = "fcfs"

    class Second:
        name = "fcfs"

    class Other:
        name = "lpm"

    assert by_name("scheduling policy", (First, Other)) == {"fcfs": First, "lpm": Other}
    with pytest.raises(ValueError, match=r"two scheduling policy classes are named 'fcfs': First, Second"):
        by_name("scheduling policy", (First, Other, Second))
