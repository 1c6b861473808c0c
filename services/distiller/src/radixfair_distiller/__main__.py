"""`radixfair-distiller --config FILE [--set key=value ...]`."""

from __future__ import annotations

import sys

from radixfair.service_process import config_from_command_line, run_service
from radixfair_distiller.config import DistillerConfig


def main(argv: list[str] | None = None) -> None:
    config = config_from_command_line(
        DistillerConfig, "radixfair-distiller", "deploy/config/distiller.yaml", argv
    )
    # Imported once the command line is good; the service imports torch (and sets its threads) only
    # once its ports are bound, which --help, a mistake in the flags or a taken port should not wait for.
    from radixfair_distiller.app import serve

    sys.exit(run_service("radixfair-distiller", serve, config))


if __name__ == "__main__":
    main()
