"""`radixfair-router --config FILE [--set key=value ...]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import yaml

from radixfair.config_loading import load_config
from radixfair_router.app import serve
from radixfair_router.config import RouterConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="radixfair-router", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML file (see deploy/config/router.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set policy.name=cache_aware --set port=50052",
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config = load_config(RouterConfig, args.config, overrides=overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
