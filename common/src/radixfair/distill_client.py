"""The client side of the distiller, shared by both CLIs: submit a recipe over gRPC and watch it.

``radixfair distill --server HOST:PORT RECIPE`` and ``python -m
radixfair_distiller.cli distill --server ...`` both land here; so does the
progress bar and the evaluation table, which the in-process run prints too.
With a ``TlsConfig`` (``--ca-cert`` and, for a distiller requiring mutual TLS,
``--client-cert`` / ``--client-key``) the channel is TLS, as to a router.
Nothing here needs torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TextIO

import grpc

from radixfair.tls import TlsConfig, open_aio_channel, open_channel
from radixfair.v1 import distiller_pb2, distiller_pb2_grpc

_BAR_WIDTH = 30
# A listing is one small reply; a distiller that does not answer in this long is unreachable.
_CALL_TIMEOUT_S = 60.0

COLUMNS = (
    ("parameters", "params (M)", lambda v: f"{v / 1e6:.2f}"),
    ("size_bytes", "size (MB)", lambda v: f"{v / 1e6:.1f}"),
    ("perplexity", "perplexity", lambda v: f"{v:.2f}"),
    ("kl_to_teacher", "KL to teacher", lambda v: f"{v:.4f}"),
    ("top1_agreement", "top-1 agreement", lambda v: f"{v:.3f}"),
    ("exact_match", "exact match", lambda v: f"{v:.3f}"),
    ("decode_tokens_per_second", "decode tok/s (CPU worker)", lambda v: f"{v:.1f}"),
)


def evaluation_table(rows: list[tuple[str, Mapping[str, float]]]) -> str:
    """One markdown row per (model name, metrics); missing figures show as "-"."""
    header = "| model | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    lines = [header, rule]
    for name, metrics in rows:
        cells = [fmt(metrics[key]) if key in metrics else "-" for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def submit_and_watch(
    address: str, recipe_text: str, out: TextIO, err: TextIO, tls: TlsConfig | None = None
) -> int:
    """Submits the recipe to the distiller at ``address``, shows its progress, prints the table.

    Returns 0 when the job succeeded, 1 when it ended otherwise, 2 when it was rejected.
    """
    async with open_aio_channel(address, tls or TlsConfig(), "client tls") as channel:
        stub = distiller_pb2_grpc.DistillerServiceStub(channel)
        try:
            job_id = (await stub.SubmitJob(distiller_pb2.SubmitJobRequest(recipe_yaml=recipe_text))).job_id
        except grpc.aio.AioRpcError as error:
            return _rpc_failed(error, err)
        print(f"job {job_id}", file=out)
        bar = ProgressBar(out)
        last = None
        try:
            async for message in stub.WatchJob(distiller_pb2.WatchJobRequest(job_id=job_id)):
                event = message.event
                state = distiller_pb2.JobState.Name(event.state).removeprefix("JOB_STATE_").lower()
                bar.show_event(state, event)
                last = (state, event)
        except grpc.aio.AioRpcError as error:
            bar.close()
            return _rpc_failed(error, err)
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


def list_remote(address: str, out: TextIO, err: TextIO, tls: TlsConfig | None = None) -> int:
    """Prints the evaluation table of every artifact of the distiller at ``address``.

    Returns 0, or 2 when the call failed (said in one line on ``err``).
    """
    with open_channel(address, tls or TlsConfig(), "client tls") as channel:
        try:
            reply = distiller_pb2_grpc.DistillerServiceStub(channel).ListArtifacts(
                distiller_pb2.ListArtifactsRequest(), timeout=_CALL_TIMEOUT_S
            )
        except grpc.RpcError as error:
            return _rpc_failed(error, err)  # type: ignore[arg-type]
    print(evaluation_table([(a.name, dict(a.metrics)) for a in reply.artifacts]), file=out)
    return 0


def _rpc_failed(error: grpc.Call, err: TextIO) -> int:
    """One line for a call the distiller refused or could not be reached for (TLS mismatch included)."""
    print(f"error: {error.code().name}: {' '.join((error.details() or '').split())}", file=err)
    return 2


class JobProgress(Protocol):
    """The fields of a job progress event that the bar shows."""

    stage: str
    step: int
    total_steps: int
    loss: float
    eta_seconds: float
    message: str


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

    def show_event(self, state: str, event: JobProgress) -> None:
        """Shows a progress event: the service's protobuf one or the runner's own, same fields."""
        stage, message = event.stage, event.message
        self.show(state, stage, event.step, event.total_steps, event.loss, event.eta_seconds, message)

    def close(self) -> None:
        if self._open:
            self._out.write("\n")
            self._open = False


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
