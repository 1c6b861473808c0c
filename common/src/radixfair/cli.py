"""`radixfair`: run the local stack and talk to a router.

    radixfair up [--workers 2] [--model DIR|smollm2-135m-instruct] [--policy d2lpm]
    radixfair generate --api-key KEY "Tell me a joke" [--chat] [--max-tokens 64]
    radixfair status --api-key KEY
    radixfair distill RECIPE [--server HOST:PORT] [--config distiller.yaml] [--set KEY=VALUE]

`up` starts Redis, a router and N workers and keeps serving until Ctrl-C;
with --tls every hop is TLS, from a CA made for the stack (clients pass
--ca-cert RUN_DIR/tls/ca.crt, which `up` prints); with --tls --client-certs the
router also requires a client certificate, and `up` makes one for you
(--client-cert RUN_DIR/tls/client.crt --client-key RUN_DIR/tls/client.key).
With no --api-key it makes three demo tenants (alice, bob, carol with weight
2) and prints their keys; --ready-file writes the stack's addresses and keys
as JSON once everything is healthy, for scripts that drive it.

A child that exits while `up` serves is restarted with backoff (logged on
stderr); Ctrl-C stops everything. Mistakes (an unknown policy, a taken port,
a bad --set) end in one line, before anything starts where they can be seen.

`distill` runs a distillation recipe with a progress bar and prints the
evaluation table: in this process through the distiller package (which
brings torch; under torchrun on several GPUs too), or, with --server, on a
running distiller over gRPC, which needs nothing but this package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import yaml

from radixfair.auth import ApiKeyConfig
from radixfair.client import ClientConfig, RouterClient
from radixfair.config_loading import ENV_PREFIX, ConfigError
from radixfair.distill_client import submit_and_watch
from radixfair.local_stack import (
    PACKAGED_MODEL,
    LocalStack,
    LocalStackConfig,
    StackStartError,
    default_router_processes,
)
from radixfair.redis_launcher import RedisLaunchError
from radixfair.service_process import INTERRUPTED_EXIT, USAGE_EXIT, HelpFormatter, parse_settings
from radixfair.tls import add_client_tls_arguments, client_tls_from_arguments, refusal_hint
from radixfair.tokenization import ChatTurn

DEMO_KEYS = (
    ApiKeyConfig("demo-key-alice", "alice", 1.0),
    ApiKeyConfig("demo-key-bob", "bob", 1.0),
    ApiKeyConfig("demo-key-carol", "carol", 2.0),
)


# 128 + SIGPIPE: how a shell reports a command whose reader went away (`radixfair status | head`).
BROKEN_PIPE_EXIT = 141


def main(argv: list[str] | None = None) -> int:
    """Runs one command; every expected failure is one line on stderr, never a traceback."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status = int(args.run(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except grpc.aio.AioRpcError as error:
        return _fail(f"{error.code().name}: {error.details()}{_tls_hint(args, error)}", 1)
    except (StackStartError, ConfigError, RedisLaunchError) as error:
        return _fail(str(error), USAGE_EXIT)
    except KeyboardInterrupt:
        return _fail("interrupted", INTERRUPTED_EXIT, newline=True)
    except BrokenPipeError:
        # The reader closed early. Point stdout at /dev/null so the interpreter's final flush
        # does not fail again on the way out, and leave quietly, as `head`'s writers do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


def _tls_hint(args: argparse.Namespace, error: grpc.aio.AioRpcError) -> str:
    """A parenthesised hint for a call that looks refused at the TLS handshake; empty otherwise."""
    if not hasattr(args, "ca_cert"):
        return ""
    hint = refusal_hint(client_tls_from_arguments(args), error.code(), error.details() or "")
    return f" ({hint})" if hint else ""


def _fail(message: str, status: int, newline: bool = False) -> int:
    print(f"{chr(10) if newline else ''}radixfair: error: {' '.join(message.split())}", file=sys.stderr)
    return status


class _RoutingPolicyOption(argparse.Action):
    """``up --policy NAME``: stores the name; its help lists the router registry's names.

    The names are read from radixfair_router's policies/registry.py only when the help is shown,
    so that registry stays their one home (a new routing policy edits no text here) while other
    commands do not pay the router package's import (its Redis client, about 0.3 s). Without the
    router package installed the help points to the registry instead.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)

    @property
    def help(self) -> str:  # type: ignore[override]
        try:
            # Imported here: this package must not depend on a service's at import time.
            from radixfair_router.policies.registry import names
        except ImportError:
            return "routing policy (the names: radixfair_router's policies/registry.py)"
        return "routing policy: " + ", ".join(names())

    @help.setter
    def help(self, value: str | None) -> None:
        """argparse.Action.__init__ assigns ``help``; the property above replaces it."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radixfair", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def add_command(name: str, helptext: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=helptext, description=helptext, formatter_class=HelpFormatter)

    up = add_command("up", "launch Redis, a router and N workers locally and keep serving")
    up.add_argument("--workers", type=int, default=2, help="worker processes")
    up.add_argument(
        "--routers",
        type=int,
        default=None,
        help="router processes sharing --port and one Redis ledger (default: 1 with CPU workers, "
        "with CUDA workers one per 2 cores up to 8: one relays ~20k tokens/s)",
    )
    up.add_argument("--model", default=PACKAGED_MODEL, help="model directory or the packaged model name")
    up.add_argument(
        "--cache-dir", type=Path, default=Path("~/.cache/radixfair/models"), help="converted model cache"
    )
    up.add_argument("--policy", default="d2lpm", action=_RoutingPolicyOption)
    up.add_argument("--quantum", type=float, default=4096.0, help="D2LPM quantum Q")
    up.add_argument("--port", type=int, default=50051, help="router port")
    up.add_argument(
        "--http-port", type=int, default=8000, help="router's OpenAI-compatible HTTP API port (0: off)"
    )
    up.add_argument("--redis-url", default="", help="use this Redis instead of starting one")
    up.add_argument(
        "--api-key", action="append", default=[], metavar="CLIENT=KEY[:WEIGHT]", help="a tenant (repeatable)"
    )
    up.add_argument(
        "--router-set", action="append", default=[], metavar="KEY=VALUE", help="router config field"
    )
    up.add_argument(
        "--worker-set", action="append", default=[], metavar="KEY=VALUE", help="worker config field"
    )
    up.add_argument(
        "--run-dir", type=Path, default=None, help="logs and generated configs (default: a temp dir)"
    )
    up.add_argument("--ready-file", type=Path, default=None, help="write addresses and keys here when ready")
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every hop, from a CA made for this stack in RUN_DIR/tls (clients: --ca-cert its ca.crt)",
    )
    up.add_argument(
        "--client-certs",
        action="store_true",
        help="with --tls: the router requires a client certificate; one is made in RUN_DIR/tls/client.crt",
    )
    up.add_argument(
        "--router-config",
        type=Path,
        default=None,
        help="base router config file (e.g. deploy/config/router.yaml); policy and tuning come from it",
    )
    up.add_argument(
        "--worker-config",
        type=Path,
        default=None,
        help="base worker config file (e.g. deploy/config/worker.yaml)",
    )
    up.set_defaults(run=_up)

    distill = add_command(
        "distill", "run a distillation recipe here, or on a distiller with --server HOST:PORT"
    )
    distill.add_argument("recipe", type=Path, help="recipe YAML (services/distiller/recipes/)")
    distill.add_argument("--server", default="", help="submit to the distiller at HOST:PORT and watch it")
    add_client_tls_arguments(distill)
    distill.add_argument("--config", type=Path, default=None, help="distiller config YAML (in-process run)")
    distill.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="distiller config field (in-process)"
    )
    distill.set_defaults(run=_distill)

    for name, helptext, run in (
        ("generate", "stream one completion through the router", _generate),
        ("status", "the router's policy, workers and per-client service", _status),
    ):
        sub = add_command(name, helptext)
        sub.add_argument("--router", default="127.0.0.1:50051", help="router host:port")
        sub.add_argument("--api-key", required=True, help="a tenant's API key")
        add_client_tls_arguments(sub)
        sub.set_defaults(run=run)
        if name == "generate":
            sub.add_argument("prompt", help="the prompt text")
            sub.add_argument("--chat", action="store_true", help="send the prompt as one user chat turn")
            sub.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate")
            sub.add_argument("--temperature", type=float, default=0.0, help="0 samples greedily")
            sub.add_argument("--seed", type=int, default=None, help="sampling seed")
    return parser


def _worker_device(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The device ``up``'s workers run on, with the workers' own precedence (config_loading):
    --worker-set engine.device=..., else RADIXFAIR_ENGINE__DEVICE in ``env`` (the workers inherit it),
    else the worker config file's (the launcher checks the file itself before anything starts; here a
    broken one only reads as cpu)."""
    device = parse_settings(args.worker_set).get("engine.device")
    if device is None and f"{ENV_PREFIX}ENGINE__DEVICE" in env:
        device = env[f"{ENV_PREFIX}ENGINE__DEVICE"]
    if device is None and args.worker_config is not None:
        try:
            engine = (yaml.safe_load(args.worker_config.read_text()) or {}).get("engine") or {}
            device = engine.get("device") if isinstance(engine, dict) else None
        # ValueError: a file that is not UTF-8 text (UnicodeDecodeError).
        except (OSError, ValueError, yaml.YAMLError, AttributeError):
            device = None
    return str(device or "cpu")


def _up(args: argparse.Namespace) -> int:
    keys = tuple(_parse_key(spec) for spec in args.api_key) or DEMO_KEYS
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="radixfair-up-"))
    config = LocalStackConfig(
        run_dir=run_dir,
        model=args.model,
        cache_dir=args.cache_dir,
        workers=args.workers,
        routers=(
            # 0 or less is passed on, for LocalStackConfig to refuse: only an absent flag takes the default.
            args.routers
            if args.routers is not None
            else default_router_processes(os.cpu_count() or 1, _worker_device(args, os.environ))
        ),
        router_port=args.port,
        router_http_port=args.http_port,
        policy=args.policy,
        quantum=args.quantum,
        redis_url=args.redis_url,
        api_keys=keys,
        router_settings=parse_settings(args.router_set),
        worker_settings=parse_settings(args.worker_set),
        router_config_file=args.router_config,
        worker_config_file=args.worker_config,
        tls=args.tls,
        tls_client_certificates=args.client_certs,
    )
    stack = LocalStack(config)
    # Ctrl-C or SIGTERM while starting raise KeyboardInterrupt: start() stops what it started
    # (the children run in their own sessions, so nothing else would), and main() says so.
    # Set explicitly: a shell starts background jobs with SIGINT ignored, which Python would keep.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    stack.start()
    stopping = {"now": False}

    def request_stop(*_: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        description = stack.describe()
        print(json.dumps(description, indent=2), flush=True)
        if args.ready_file is not None:
            args.ready_file.write_text(json.dumps(description))
        http = f" and {stack.http_api} (OpenAI-compatible HTTP)" if stack.http_api else ""
        print(f"serving on {stack.address} (gRPC){http}; Ctrl-C stops everything", flush=True)
        if stack.certificates is not None:
            print(f"TLS on every hop; clients trust --ca-cert {stack.certificates.ca_file}", flush=True)
        if description["client_cert"]:
            print(
                f"the router requires a client certificate: --client-cert {description['client_cert']} "
                f"--client-key {description['client_key']}",
                flush=True,
            )
        while not stopping["now"]:
            stack.supervise()
            time.sleep(0.5)
        return 0
    finally:
        stack.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _generate(args: argparse.Namespace) -> int:
    async def run() -> int:
        prompt = [ChatTurn("user", args.prompt)] if args.chat else args.prompt
        config = ClientConfig(args.router, args.api_key, tls=client_tls_from_arguments(args))
        async with RouterClient(config) as client:
            async for message in client.stream(
                prompt, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
            ):
                if message.HasField("delta"):
                    print(message.delta.text, end="", flush=True)
                else:
                    result = message.result
                    usage = result.usage
                    print(
                        f"\n[worker {result.worker_id}: {usage.prompt_tokens} prompt tokens "
                        f"({usage.cached_tokens} cached), {usage.completion_tokens} generated, "
                        f"TTFT {result.timings.time_to_first_token_ms:.0f} ms]",
                        file=sys.stderr,
                    )
        return 0

    return asyncio.run(run())


def _status(args: argparse.Namespace) -> int:
    async def run() -> int:
        config = ClientConfig(args.router, args.api_key, tls=client_tls_from_arguments(args))
        async with RouterClient(config) as client:
            status = await client.status()
        shared = "connected" if status.shared_state_connected else "DOWN"
        print(f"policy: {status.policy}   shared state: {shared}")
        print(f"{'worker':<16} {'address':<22} {'healthy':<8} {'queue':>5} {'running':>7} {'hit rate':>8}")
        for w in status.workers:
            r = w.last_report
            print(
                f"{w.worker_id:<16} {w.address:<22} {'yes' if w.healthy else 'NO':<8} "
                f"{r.queue_length:>5} {r.running_requests:>7} {r.cache_hit_rate:>8.2f}"
            )
        print(f"{'client':<16} {'weight':>6} {'requests':>8} {'service':>12}")
        for c in status.clients:
            print(f"{c.client_id:<16} {c.weight:>6g} {c.requests:>8} {c.service:>12.1f}")
        return 0

    return asyncio.run(run())


def _distill(args: argparse.Namespace) -> int:
    if not args.recipe.is_file():
        print(f"error: no recipe file {args.recipe}", file=sys.stderr)
        return 2
    if args.server:
        recipe, tls = args.recipe.read_text(), client_tls_from_arguments(args)
        return asyncio.run(submit_and_watch(args.server, recipe, sys.stdout, sys.stderr, tls))
    # Imported here, and only for an in-process run: the distiller brings torch, this package must not.
    try:
        from radixfair_distiller import cli as distiller_cli
    except ModuleNotFoundError as error:
        if error.name != "radixfair_distiller":
            raise
        print(
            "error: running a recipe in this process needs the radixfair-distiller package "
            "(pip install services/distiller, which brings torch); or submit it to a running "
            "distiller with --server HOST:PORT",
            file=sys.stderr,
        )
        return 2
    config = ["--config", str(args.config)] if args.config else []
    settings = [arg for item in args.set for arg in ("--set", item)]
    return distiller_cli.main([*config, *settings, "distill", str(args.recipe)])


def _parse_key(spec: str) -> ApiKeyConfig:
    client, sep, rest = spec.partition("=")
    key, _, weight = rest.partition(":")
    try:
        if not sep or not client or not key:
            raise ValueError
        return ApiKeyConfig(key, client, float(weight) if weight else 1.0)
    except ValueError:
        raise ConfigError(f"--api-key wants CLIENT=KEY[:WEIGHT] (WEIGHT a number), got {spec!r}") from None


if __name__ == "__main__":
    sys.exit(main())
