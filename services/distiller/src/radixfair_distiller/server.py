"""gRPC adapter of the distiller: validates, translates, and calls into the JobRunner."""

from __future__ import annotations

import asyncio

import grpc

from radixfair.errors import InvalidRequestError, RadixfairError, abort_with
from radixfair.v1 import distiller_pb2, distiller_pb2_grpc
from radixfair_distiller.artifacts import Artifact
from radixfair_distiller.events import JobEvent, JobState
from radixfair_distiller.runner import JobRunner

SERVICE_NAME = distiller_pb2.DESCRIPTOR.services_by_name["DistillerService"].full_name
_STATES = {
    JobState.QUEUED: distiller_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: distiller_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: distiller_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: distiller_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: distiller_pb2.JOB_STATE_CANCELLED,
}
# Recipes are small; anything bigger is a mistake, not a recipe.
_MAX_RECIPE_BYTES = 64 * 1024


class DistillerServicer(distiller_pb2_grpc.DistillerServiceServicer):
    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner

    async def SubmitJob(self, request, context: grpc.aio.ServicerContext):
        try:
            if not request.recipe_yaml.strip():
                raise InvalidRequestError("recipe_yaml is empty")
            if len(request.recipe_yaml.encode()) > _MAX_RECIPE_BYTES:
                raise InvalidRequestError(f"recipe_yaml is larger than {_MAX_RECIPE_BYTES} bytes")
            # Resolving the teacher may read (or, once, convert) a checkpoint: off the event loop.
            record = await asyncio.to_thread(self._runner.submit, request.recipe_yaml)
        except RadixfairError as error:
            await abort_with(context, error)
        return distiller_pb2.SubmitJobResponse(job_id=record.job_id)

    async def WatchJob(self, request, context: grpc.aio.ServicerContext):
        try:
            log = self._runner.events(request.job_id)
        except RadixfairError as error:
            await abort_with(context, error)
        async for event in log.follow():
            yield distiller_pb2.WatchJobResponse(event=self._event(event))

    async def CancelJob(self, request, context: grpc.aio.ServicerContext):
        try:
            state = self._runner.cancel(request.job_id)
        except RadixfairError as error:
            await abort_with(context, error)
        return distiller_pb2.CancelJobResponse(state=_STATES[state])

    async def ListArtifacts(self, request, context: grpc.aio.ServicerContext):
        artifacts = await asyncio.to_thread(self._runner.artifacts.all)
        return distiller_pb2.ListArtifactsResponse(artifacts=[artifact_message(a) for a in artifacts])

    def _event(self, event: JobEvent) -> distiller_pb2.JobEvent:
        artifacts = [self._runner.artifacts.get(name) for name in event.artifacts]
        return distiller_pb2.JobEvent(
            job_id=event.job_id,
            sequence=event.sequence,
            state=_STATES[event.state],
            stage=event.stage,
            step=event.step,
            total_steps=event.total_steps,
            loss=event.loss,
            eta_seconds=event.eta_seconds,
            message=event.message,
            time=event.time,
            artifacts=[artifact_message(a) for a in artifacts if a is not None],
        )


def artifact_message(artifact: Artifact) -> distiller_pb2.Artifact:
    manifest = artifact.manifest
    return distiller_pb2.Artifact(
        name=manifest.name,
        path=str(artifact.path.resolve()),
        parent=manifest.parent,
        content_hash=manifest.content_hash,
        parameters=manifest.parameters,
        size_bytes=manifest.size_bytes,
        quantization=manifest.quantization,
        metrics=manifest.evaluation,
        job_id=manifest.job_id,
        recipe_yaml=manifest.recipe_yaml,
    )
