"""/metrics listens where the service's config says, never on every interface by default (issue 12).

Linux routes all of 127.0.0.0/8 to the loopback device, so a listener on 0.0.0.0 answers on
127.0.0.2 too, while one on 127.0.0.1 refuses it: that tells the bound address apart without
reading socket tables.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest
from support.ports import free_port
from support.router_stack import router_config, running_router

from radixfair.metrics import MetricsConfig


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def test_metrics_follow_the_service_host_unless_named():
    assert MetricsConfig().bind_host("127.0.0.1") == "127.0.0.1"
    assert MetricsConfig().bind_host("10.1.2.3") == "10.1.2.3"
    assert MetricsConfig(host="0.0.0.0").bind_host("127.0.0.1") == "0.0.0.0"


@pytest.mark.parametrize(
    ("metrics_host", "on_other_loopback"), [("", False), ("0.0.0.0", True)], ids=["default", "all-interfaces"]
)
def test_a_router_serves_metrics_on_its_own_host_by_default(tiny_model_dir, metrics_host, on_other_loopback):
    port = free_port()
    config = router_config(tiny_model_dir, [])
    config = replace(config, metrics_port=port, metrics=replace(config.metrics, host=metrics_host))
    assert config.host == "127.0.0.1"

    async def scenario():
        async with running_router(config):
            return (
                await asyncio.to_thread(accepts, "127.0.0.1", port),
                await asyncio.to_thread(accepts, "127.0.0.2", port),
            )

    assert asyncio.run(scenario()) == (True, on_other_loopback)
