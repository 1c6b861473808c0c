"""How every radixfair service process starts (config from file, env and flags) and stops (signals).

A mistake in how a service is started (a bad config field, an unknown policy, a
taken port) ends the process with one line on stderr and exit status 2, never a
traceback: ``config_from_command_line`` for the configuration, ``run_service``
for what the service finds wrong while it starts up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import yaml

from radixfair.config_loading import ConfigError, load_config
from radixfair.errors import RadixfairError
from radixfair.listening import ListenError

T = TypeVar("T")
log = logging.getLogger(__name__)

# Exit status of a process that could not start because of how it was started (as argparse's).
USAGE_EXIT = 2
# Exit status after Ctrl-C, as a shell reports a process ended by SIGINT.
INTERRUPTED_EXIT = 130


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps a description's own line breaks and shows each option's default, where it has one.

    Unlike argparse.ArgumentDefaultsHelpFormatter, an empty default (None, "", [], False)
    is left out rather than printed as noise, and so is one the help text already states.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        empty = default is None or default is False or (isinstance(default, str | list) and not default)
        if empty or default is argparse.SUPPRESS or "default" in text:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return f"{text} (default: %(default)s)"


def config_from_command_line(cls: type[T], prog: str, example: str, argv: Sequence[str] | None = None) -> T:
    """Parses ``--config FILE`` and repeated ``--set key=value`` into ``cls``; sets up logging."""
    parser = argparse.ArgumentParser(
        prog=prog, description=f"{prog} --config FILE [--set key=value ...]", formatter_class=HelpFormatter
    )
    parser.add_argument("--config", type=Path, help=f"YAML file (see {example})")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field (dotted path), e.g. --set port=50062",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        overrides = parse_settings(args.set)
        config = load_config(cls, args.config, overrides=overrides)
    except (ConfigError, yaml.YAMLError) as error:
        exit_with_error(prog, error)
    except OSError as error:
        exit_with_error(prog, f"cannot read config file {args.config}: {error.strerror}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return config


def parse_settings(items: Sequence[str]) -> dict[str, object]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``, values read as YAML; ConfigError if malformed."""
    settings: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"settings are KEY=VALUE, got {item!r}")
        try:
            settings[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"{key}: value {value!r} is not valid YAML ({_one_line(error)})") from None
    return settings


def run_service(prog: str, serve: Callable[..., Awaitable[None]], config: object) -> int:
    """Runs ``serve(config, ready=event)`` until it returns; the process's exit status.

    Before ``ready`` is set, a ValueError or OSError is a start-up mistake (a config
    value the service rejected, a missing file), said in one line; after it, it is a
    failure of a running service and keeps its traceback. A taken port, a config error
    or a typed radixfair error is always one line.
    """
    ready = asyncio.Event()
    try:
        asyncio.run(serve(config, ready=ready))  # type: ignore[call-arg]
    except KeyboardInterrupt:  # before the service installed its own signal handling
        return INTERRUPTED_EXIT
    except (ListenError, ConfigError, RadixfairError) as error:
        return _report(prog, error)
    except (ValueError, OSError) as error:
        if ready.is_set():
            raise
        return _report(prog, error)
    return 0


def exit_with_error(prog: str, error: object) -> NoReturn:
    print(f"{prog}: error: {_one_line(error)}", file=sys.stderr, flush=True)
    raise SystemExit(USAGE_EXIT)


def _report(prog: str, error: BaseException) -> int:
    log.debug("%s could not start", prog, exc_info=error)
    print(f"{prog}: error: {_one_line(error)}", file=sys.stderr, flush=True)
    return USAGE_EXIT


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


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
