"""`radixfair-worker --config FILE [--set key=value ...]`."""

from __future__ import annotations

import sys

from radixfair.service_process import config_from_command_line, run_service
from radixfair_worker.app import serve
from radixfair_worker.config import WorkerConfig


def main(argv: list[str] | None = None) -> None:
    config = config_from_command_line(WorkerConfig, "radixfair-worker", "deploy/config/worker.yaml", argv)
    sys.exit(run_service("radixfair-worker", serve, config))


if __name__ == "__main__":
    main()
