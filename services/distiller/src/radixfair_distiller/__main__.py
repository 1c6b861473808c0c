"""`radixfair-distiller --config FILE [--set key=value ...]`."""

from __future__ import annotations

import sys

from radixfair.service_process import config_from_command_line, run_service
from radixfair_distiller.config import DistillerConfig


def main(argv: list[str] | None = None) -> None:
    config = config_from_command_line(
        DistillerConfig, "radixfair-distiller", "deploy/config/distiller.yaml", argv
    )
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    # Imported once the command line is good: the service brings torch, which --help and a
    # mistake in the flags should not wait for.
    from radixfair_distiller.app import serve

    sys.exit(run_service("radixfair-distiller", serve, config))


if __name__ == "__main__":
    main()
