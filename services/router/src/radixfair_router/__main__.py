"""`radixfair-router --config FILE [--set key=value ...]`."""

from __future__ import annotations

import sys

from radixfair.service_process import config_from_command_line, run_service
from radixfair_router.app import serve
from radixfair_router.config import RouterConfig


def main(argv: list[str] | None = None) -> None:
    config = config_from_command_line(RouterConfig, "radixfair-router", "deploy/config/router.yaml", argv)
    sys.exit(run_service("radixfair-router", serve, config))


if __name__ == "__main__":
    main()
