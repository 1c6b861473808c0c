"""`radixfair-worker --config FILE [--set key=value ...]`."""

from __future__ import annotations

import sys

from radixfair.service_process import config_from_command_line, exit_with_error, run_service
from radixfair.tls import TlsError, channel_credentials, server_credentials
from radixfair_engine.scheduler.registry import build_policy
from radixfair_worker.app import serve
from radixfair_worker.config import WorkerConfig


def main(argv: list[str] | None = None) -> None:
    config = config_from_command_line(WorkerConfig, "radixfair-worker", "deploy/config/worker.yaml", argv)
    try:  # torch-free and before the engine process starts: a bad policy is one line, at once
        build_policy(config.engine.scheduler)
        # Certificates too: a missing file is one line now, not after minutes of loading weights.
        server_credentials(config.tls, "tls")
        channel_credentials(config.router_tls, "router_tls")
    except (ValueError, TlsError) as error:
        exit_with_error("radixfair-worker", error)
    sys.exit(run_service("radixfair-worker", serve, config))


if __name__ == "__main__":
    main()
