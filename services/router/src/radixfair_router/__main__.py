"""`radixfair-router --config FILE [--set key=value ...]`."""

from __future__ import annotations

import asyncio

from radixfair.service_process import config_from_command_line
from radixfair_router.app import serve
from radixfair_router.config import RouterConfig


def main(argv: list[str] | None = None) -> None:
    config = config_from_command_line(RouterConfig, "radixfair-router", "deploy/config/router.yaml", argv)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
