"""How many router processes ``radixfair up`` starts when ``--routers`` is not given.

One router process relays about a core's worth of messages (~20k tokens/s on the H200 host), so
GPU workers get one router per 2 cores, up to 8; CPU workers get one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from radixfair.cli import _parser, _worker_device
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
    assert _worker_device(parse(["up"])) == "cpu"
    assert _worker_device(parse(["up", "--worker-set", "engine.device=cuda"])) == "cuda"
    assert _worker_device(parse(["up", "--worker-config", str(config)])) == "cuda"
    assert _worker_device(
        parse(["up", "--worker-config", str(config), "--worker-set", "engine.device=cpu"])
    ) == ("cpu")
    config.write_text("engine: [not, a, mapping]\n")  # the launcher refuses it later, with its own message
    assert _worker_device(parse(["up", "--worker-config", str(config)])) == "cpu"
    assert parse(["up"]).routers is None and parse(["up", "--routers", "3"]).routers == 3
