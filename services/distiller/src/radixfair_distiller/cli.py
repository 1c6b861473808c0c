"""`python -m radixfair_distiller.cli distill RECIPE`: runs a recipe with a progress bar, prints the table.

By default the job runs in this process (and, when interrupted, resumes the
next time the same recipe is run with the same work dir). With
``--server HOST:PORT`` it is submitted to a running distiller and watched
over gRPC instead (``--ca-cert`` for a distiller serving TLS; ``--client-cert`` and
``--client-key`` when it requires mutual TLS). ``list`` prints the artifacts made so far.

On several GPUs, launch it with torchrun; each process trains on its own GPU
and rank 0 does the rest (see distributed.py):

    torchrun --nproc_per_node 4 -m radixfair_distiller.cli --config distiller.yaml distill RECIPE
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from prometheus_client import CollectorRegistry

from radixfair.config_loading import ConfigError, load_config
from radixfair.distill_client import ProgressBar, evaluation_table, list_remote, submit_and_watch
from radixfair.errors import InvalidRequestError, RadixfairError
from radixfair.listening import ListenError
from radixfair.metrics import serve_metrics
from radixfair.service_process import INTERRUPTED_EXIT, HelpFormatter, parse_settings
from radixfair.tls import add_client_tls_arguments, client_tls_from_arguments
from radixfair_distiller.config import DistillerConfig

if TYPE_CHECKING:
    from radixfair_distiller.distributed import DistributedContext, TorchrunEnv


PROG = "python -m radixfair_distiller.cli"


def main(argv: list[str] | None = None) -> int:
    # The installed ways in are `radixfair distill` (which calls this) and this module under
    # python -m or torchrun; there is no radixfair-distill command, so usage names the module.
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", type=Path, help="distiller config YAML (work_dir, device, ...)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    distill = commands.add_parser("distill", help="run a recipe", formatter_class=HelpFormatter)
    distill.add_argument("recipe", type=Path, help="recipe YAML (services/distiller/recipes/)")
    distill.add_argument("--server", help="submit to the distiller at HOST:PORT instead of running here")
    add_client_tls_arguments(distill)
    listing = commands.add_parser("list", help="list artifacts", formatter_class=HelpFormatter)
    listing.add_argument("--server", help="ask the distiller at HOST:PORT")
    add_client_tls_arguments(listing)
    args = parser.parse_args(argv)
    try:
        config = load_config(DistillerConfig, args.config, overrides=parse_settings(args.set))
        # The flags of the caller's side of a TLS hop to --server (a distiller serving TLS).
        tls = client_tls_from_arguments(args)
        if args.command == "list":
            if args.server:
                return list_remote(args.server, sys.stdout, sys.stderr, tls)
            return _list(config, sys.stdout)
        if not args.recipe.is_file():
            raise InvalidRequestError(f"no recipe file {args.recipe}")
        text = args.recipe.read_text()
        if args.server:
            return asyncio.run(submit_and_watch(args.server, text, sys.stdout, sys.stderr, tls))
        import torch

        from radixfair_distiller.distributed import TorchrunEnv

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        # torchrun's placement is read here, at the edge, and passed down.
        placement = TorchrunEnv.from_env(os.environ)
        if placement is not None:
            return _distill_distributed(config, text, placement)
        return asyncio.run(distill_here(config, text, sys.stdout))
    except (RadixfairError, ConfigError, ListenError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The job's checkpoints stay in the work dir; the same recipe resumes it.
        print("\ninterrupted; run the same recipe again to resume", file=sys.stderr)
        return INTERRUPTED_EXIT


def _distill_distributed(config: DistillerConfig, recipe_text: str, placement: TorchrunEnv) -> int:
    """One rank of a torchrun job: rank 0 runs the job and reports; the others follow it into training."""
    from radixfair_distiller.distributed import start_distributed, stop_distributed
    from radixfair_distiller.follower import follow_main
    from radixfair_distiller.recipe import parse_recipe

    spec = parse_recipe(recipe_text).distill
    if spec is not None and spec.batch_size % placement.world_size:
        # Every rank reaches this before any collective, so all of them exit cleanly.
        raise InvalidRequestError(
            f"distill.batch_size {spec.batch_size} is not a multiple of the {placement.world_size} ranks"
        )
    dist = start_distributed(
        placement, config.device, config.distributed_step_timeout_s, config.distributed_wait_timeout_s
    )
    try:
        if not dist.is_main:
            follow_main(config, dist)
            return 0
        try:
            return asyncio.run(distill_here(config, recipe_text, sys.stdout, dist))
        finally:
            dist.broadcast(None)  # no more jobs: the other ranks exit
    finally:
        stop_distributed()


async def distill_here(
    config: DistillerConfig, recipe_text: str, out: TextIO, dist: DistributedContext | None = None
) -> int:
    """Runs the recipe in this process; re-attaches to an unfinished job of the same name.

    Serves /metrics on ``config.metrics_port`` (when set) while it runs.
    """
    from radixfair_distiller.distiller_metrics import DistillerMetrics
    from radixfair_distiller.recipe import parse_recipe
    from radixfair_distiller.runner import JobRunner

    name = parse_recipe(recipe_text).name
    metrics = DistillerMetrics(CollectorRegistry())
    serve_metrics(metrics.registry, config.metrics_port, config.host)
    runner = JobRunner(config, metrics, dist)
    runner.start()
    try:
        unfinished = [r for r in runner.store.all() if r.name == name and not r.state.is_terminal]
        if unfinished:
            job_id = unfinished[0].job_id
            print(f"resuming job {job_id}", file=out)
        else:
            job_id = (await asyncio.to_thread(runner.submit, recipe_text)).job_id
            print(f"job {job_id}", file=out)
        bar = ProgressBar(out)
        last = None
        async for event in runner.events(job_id).follow():
            bar.show_event(event.state.value, event)
            last = event
        bar.close()
        if last is None or last.state.value != "succeeded":
            print(
                f"job ended {last.state.value if last else 'without events'}: {last.message if last else ''}",
                file=out,
            )
            return 1
        artifacts = [runner.artifacts.get(name) for name in last.artifacts]
        print(_table([a for a in artifacts if a is not None]), file=out)
        return 0
    finally:
        await asyncio.to_thread(runner.stop)


def _list(config: DistillerConfig, out: TextIO) -> int:
    from radixfair_distiller.artifacts import ArtifactStore

    print(_table(ArtifactStore(config.artifacts_dir).all()), file=out)
    return 0


def _table(artifacts) -> str:
    rows = []
    if artifacts and artifacts[0].manifest.teacher_evaluation:
        rows.append((f"{artifacts[0].manifest.teacher} (teacher)", artifacts[0].manifest.teacher_evaluation))
    rows.extend((a.manifest.name, a.manifest.evaluation) for a in artifacts)
    return evaluation_table(rows)


if __name__ == "__main__":
    sys.exit(main())
