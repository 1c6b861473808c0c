"""`python -m radixfair_distiller.cli distill RECIPE`: runs a recipe with a progress bar, prints the table.

By default the job runs in this process (and, when interrupted, resumes the
next time the same recipe is run with the same work dir). With
``--server HOST:PORT`` it is submitted to a running distiller and watched
over gRPC instead. ``list`` prints the artifacts made so far.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TextIO

import yaml

from radixfair.config_loading import load_config
from radixfair.errors import RadixfairError
from radixfair_distiller.config import DistillerConfig
from radixfair_distiller.report import evaluation_table

_BAR_WIDTH = 30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="radixfair-distill", description=__doc__)
    parser.add_argument("--config", type=Path, help="distiller config YAML (work_dir, device, ...)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    distill = commands.add_parser("distill", help="run a recipe")
    distill.add_argument("recipe", type=Path)
    distill.add_argument("--server", help="submit to the distiller at HOST:PORT instead of running here")
    listing = commands.add_parser("list", help="list artifacts")
    listing.add_argument("--server", help="ask the distiller at HOST:PORT")
    args = parser.parse_args(argv)
    overrides = {key: yaml.safe_load(value) for key, _, value in (s.partition("=") for s in args.set)}
    config = load_config(DistillerConfig, args.config, overrides=overrides)
    try:
        if args.command == "distill":
            text = args.recipe.read_text()
            if args.server:
                return asyncio.run(_distill_remote(args.server, text, sys.stdout))
            return asyncio.run(distill_here(config, text, sys.stdout))
        return _list(config, args.server, sys.stdout)
    except RadixfairError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


async def distill_here(config: DistillerConfig, recipe_text: str, out: TextIO) -> int:
    """Runs the recipe in this process; re-attaches to an unfinished job of the same name."""
    from radixfair_distiller.recipe import parse_recipe
    from radixfair_distiller.runner import JobRunner

    name = parse_recipe(recipe_text).name
    runner = JobRunner(config)
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
            bar.show(
                event.state.value,
                event.stage,
                event.step,
                event.total_steps,
                event.loss,
                event.eta_seconds,
                event.message,
            )
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


async def _distill_remote(address: str, recipe_text: str, out: TextIO) -> int:
    import grpc

    from radixfair.v1 import distiller_pb2, distiller_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = distiller_pb2_grpc.DistillerServiceStub(channel)
        try:
            job_id = (await stub.SubmitJob(distiller_pb2.SubmitJobRequest(recipe_yaml=recipe_text))).job_id
        except grpc.aio.AioRpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
        print(f"job {job_id}", file=out)
        bar = ProgressBar(out)
        last = None
        async for message in stub.WatchJob(distiller_pb2.WatchJobRequest(job_id=job_id)):
            event = message.event
            state = distiller_pb2.JobState.Name(event.state).removeprefix("JOB_STATE_").lower()
            bar.show(
                state,
                event.stage,
                event.step,
                event.total_steps,
                event.loss,
                event.eta_seconds,
                event.message,
            )
            last = (state, event)
        bar.close()
        if last is None or last[0] != "succeeded":
            print(
                f"job ended {last[0] if last else 'without events'}: {last[1].message if last else ''}",
                file=out,
            )
            return 1
        rows = [(a.name, dict(a.metrics)) for a in last[1].artifacts]
        print(evaluation_table(rows), file=out)
        return 0


def _list(config: DistillerConfig, server: str | None, out: TextIO) -> int:
    if server:
        import grpc

        from radixfair.v1 import distiller_pb2, distiller_pb2_grpc

        with grpc.insecure_channel(server) as channel:
            reply = distiller_pb2_grpc.DistillerServiceStub(channel).ListArtifacts(
                distiller_pb2.ListArtifactsRequest()
            )
        rows = [(a.name, dict(a.metrics)) for a in reply.artifacts]
        print(evaluation_table(rows), file=out)
        return 0
    from radixfair_distiller.artifacts import ArtifactStore

    print(_table(ArtifactStore(config.artifacts_dir).all()), file=out)
    return 0


def _table(artifacts) -> str:
    rows = []
    if artifacts and artifacts[0].manifest.teacher_evaluation:
        rows.append((f"{artifacts[0].manifest.teacher} (teacher)", artifacts[0].manifest.teacher_evaluation))
    rows.extend((a.manifest.name, a.manifest.evaluation) for a in artifacts)
    return evaluation_table(rows)


class ProgressBar:
    """A one-line bar for the distill stage (redrawn in place on a terminal), a line per other event."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._live = out.isatty()
        self._open = False

    def show(
        self, state: str, stage: str, step: int, total: int, loss: float, eta: float, message: str
    ) -> None:
        if stage == "distill" and total and not message.startswith(("resumed", "checkpoint")):
            filled = int(_BAR_WIDTH * step / total)
            line = (
                f"distill [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {step}/{total} "
                f"loss {loss:.4f} eta {_clock(eta)}{' ' + message if message else ''}"
            )
            if self._live:
                self._out.write("\r" + line)
                self._open = True
            else:
                self._out.write(line + "\n")
            self._out.flush()
            return
        self.close()
        where = f"{stage}: " if stage else ""
        counter = f" {step}/{total}" if total else ""
        self._out.write(f"[{state}] {where}{message}{counter}\n")
        self._out.flush()

    def close(self) -> None:
        if self._open:
            self._out.write("\n")
            self._open = False


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


if __name__ == "__main__":
    sys.exit(main())
