"""How every radixfair service process starts (config from file, env and flags) and stops (signals)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import yaml

from radixfair.config_loading import load_config

T = TypeVar("T")


def config_from_command_line(cls: type[T], prog: str, example: str, argv: Sequence[str] | None = None) -> T:
    """Parses ``--config FILE`` and repeated ``--set key=value`` into ``cls``; sets up logging."""
    parser = argparse.ArgumentParser(prog=prog, description=f"{prog} --config FILE [--set key=value ...]")
    parser.add_argument("--config", type=Path, help=f"YAML file (see {example})")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field (dotted path), e.g. --set port=50062",
    )  # fmt: skip
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config = load_config(cls, args.config, overrides=overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return config


async def wait_for_shutdown_signal() -> None:
    """Returns on SIGINT or SIGTERM (or never, off the main thread, until cancelled)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    await stop.wait()
