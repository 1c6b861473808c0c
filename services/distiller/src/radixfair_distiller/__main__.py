"""`radixfair-distiller --config FILE [--set key=value ...]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import yaml

from radixfair.config_loading import load_config
from radixfair_distiller.app import serve
from radixfair_distiller.config import DistillerConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="radixfair-distiller", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML file (see deploy/config/distiller.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set port=50072 --set device=cpu",
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config = load_config(DistillerConfig, args.config, overrides=overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
