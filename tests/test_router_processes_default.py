"""How many router processes ``radixfair up`` starts when ``--routers`` is not given.

One router process relays about a core's worth of messages (~20k tokens/s on the H200 host), so
GPU workers get one router per 2 cores, up to 8; CPU workers get one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from radixfair.cli import _parser, _worker_device, main
from radixfair.local_stack import default_router_processes


@pytest.mark.parametrize(
    ("cpus", "device", "routers"),
    [(16, "cuda", 8), (64, "cuda:1", 8), (6, "cuda", 3), (1, "cuda", 1), (16, "cpu", 1), (2, "cpu", 1)],
)
def test_gpu_workers_get_a_router_per_two_cores_up_to_eight_and_cpu_workers_one(
    cpus: int, device: str, routers: int
) -> None:
    assert default_router_processes(cpus, device) == routers


def test_the_worker_device_comes_from_the_settings_then_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("engine:\n  device: cuda\n")
    parse = _parser().parse_args
    assert _worker_device(parse(["up"]), {}) == "cpu"
    assert _worker_device(parse(["up", "--worker-set", "engine.device=cuda"]), {}) == "cuda"
    assert _worker_device(parse(["up", "--worker-config", str(config)]), {}) == "cuda"
    assert _worker_device(
        parse(["up", "--worker-config", str(config), "--worker-set", "engine.device=cpu"]), {}
    ) == ("cpu")
    config.write_text("engine: [not, a, mapping]\n")  # the launcher refuses it later, with its own message
    assert _worker_device(parse(["up", "--worker-config", str(config)]), {}) == "cpu"
    assert parse(["up"]).routers is None and parse(["up", "--routers", "3"]).routers == 3


def test_the_worker_device_follows_the_environment_the_workers_inherit(tmp_path: Path) -> None:
    # deploy/config/worker.yaml documents RADIXFAIR_ENGINE__DEVICE=cuda; it beats the file, not --worker-set.
    config = tmp_path / "worker.yaml"
    config.write_text("engine:\n  device: cpu\n")
    env = {"RADIXFAIR_ENGINE__DEVICE": "cuda"}
    parse = _parser().parse_args
    assert _worker_device(parse(["up"]), env) == "cuda"
    assert _worker_device(parse(["up", "--worker-config", str(config)]), env) == "cuda"
    assert _worker_device(parse(["up", "--worker-set", "engine.device=cpu"]), env) == "cpu"


def test_a_worker_config_that_is_not_text_reads_as_cpu(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_bytes(bytes([0xD2, 0xFF, 0x00, 0x80]) * 16)  # not UTF-8: the launcher says so later

    assert _worker_device(_parser().parse_args(["up", "--worker-config", str(config)]), {}) == "cpu"


def test_routers_zero_is_refused_not_replaced_by_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A missing worker config would be the refusal if the count were replaced: nothing starts either way.
    argv = ["up", "--routers", "0", "--run-dir", str(tmp_path), "--worker-config", str(tmp_path / "none")]

    assert main(argv) != 0
    assert "routers must be 1 or more, got 0" in capsys.readouterr().err
