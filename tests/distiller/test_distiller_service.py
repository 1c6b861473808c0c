"""The distiller's gRPC API on real distiller processes over loopback, end to end with a real worker."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.ports import free_port
from support.processes import start_service

from radixfair.v1 import distiller_pb2, distiller_pb2_grpc, generation_pb2, worker_pb2, worker_pb2_grpc
from radixfair_distiller.model_dir import content_hash

SUCCEEDED = distiller_pb2.JOB_STATE_SUCCEEDED
CANCELLED = distiller_pb2.JOB_STATE_CANCELLED


def start_distiller(work_dir, log_dir):
    port = free_port()
    args = ["--set", f"port={port}", "--set", f"work_dir={work_dir}", "--set", "device=cpu"]
    args += ["--set", "torch_threads=1"]
    return start_service("radixfair_distiller", args, f"127.0.0.1:{port}", log_dir / f"distiller-{port}.log")


def tiny_recipe(teacher, name: str = "tiny-student", steps: int = 12) -> str:
    return f"""
name: {name}
teacher: {teacher}
seed: 3
prune:
  depth: {{keep_layers: 1}}
  width: {{intermediate_size: 96, num_attention_heads: 2, num_key_value_heads: 1}}
  calibration_sequences: 4
distill:
  steps: {steps}
  batch_size: 2
  checkpoint_every: 3
  loss: {{kind: reverse_kl, hard_label_weight: 0.2}}
  on_policy: {{fraction: 0.25, max_new_tokens: 6}}
quantize: [int8]
data: {{seq_len: 64, text_max_files: 20, chat_prompts: 40, response_max_new_tokens: 8}}
evaluate: {{text_sequences: 2, chat_prompts: 3, max_new_tokens: 6, decode_tokens: 8}}
"""


@pytest.fixture(scope="module")
def distiller(tmp_path_factory):
    service = start_distiller(tmp_path_factory.mktemp("distiller-work"), tmp_path_factory.mktemp("logs"))
    yield service
    service.stop()


@pytest.fixture
def stub(distiller):
    with grpc.insecure_channel(distiller.address) as channel:
        yield distiller_pb2_grpc.DistillerServiceStub(channel)


def submit(stub, text: str) -> str:
    return stub.SubmitJob(distiller_pb2.SubmitJobRequest(recipe_yaml=text), timeout=60).job_id


def watch(stub, job_id: str, until=None, timeout: float = 300):
    """Events of the job, up to the terminal one (or the first for which ``until`` is true)."""
    events = []
    for message in stub.WatchJob(distiller_pb2.WatchJobRequest(job_id=job_id), timeout=timeout):
        events.append(message.event)
        if until is not None and until(message.event):
            break
    return events


def test_health_and_reflection_report_the_service(distiller):
    with grpc.insecure_channel(distiller.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="radixfair.v1.DistillerService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(reflection.ServerReflectionInfo(iter([request]), timeout=10)))
        names = {s.name for s in response.list_services_response.service}
        assert "radixfair.v1.DistillerService" in names


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("colour: blue", "unknown field(s) ['colour']"),
        ("prune: {depth: {keep_layers: 9}}", "keep_layers: 9 layers asked, the teacher has 2"),
        ("distill: {loss: {kind: kl}}", "kind must be one of"),
    ],
)
def test_bad_recipes_are_invalid_argument_naming_the_problem(stub, tiny_model_dir, extra, named):
    with pytest.raises(grpc.RpcError) as caught:
        submit(stub, f"name: x\nteacher: {tiny_model_dir}\n{extra}")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in caught.value.details()


def test_a_missing_teacher_is_invalid_argument(stub, tmp_path):
    with pytest.raises(grpc.RpcError) as caught:
        submit(stub, f"name: x\nteacher: {tmp_path / 'no-such-model'}")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "teacher" in caught.value.details() and "not found" in caught.value.details()


def test_undecodable_request_bytes_are_invalid_argument(distiller):
    with grpc.insecure_channel(distiller.address) as channel:
        call = channel.unary_unary("/radixfair.v1.DistillerService/SubmitJob")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_jobs_are_not_found(stub):
    for call in (
        lambda: watch(stub, "job-nope"),
        lambda: stub.CancelJob(distiller_pb2.CancelJobRequest(job_id="job-nope")),
        lambda: stub.CancelJob(distiller_pb2.CancelJobRequest(job_id="../escape")),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_running_job_is_cancelled_at_its_next_step(stub, tiny_model_dir):
    job_id = submit(stub, tiny_recipe(tiny_model_dir, name="to-cancel", steps=100_000))
    with pytest.raises(grpc.RpcError) as caught:  # one job per name while it is unfinished
        submit(stub, tiny_recipe(tiny_model_dir, name="to-cancel"))
    assert "already making 'to-cancel'" in caught.value.details()
    watch(stub, job_id, until=lambda e: e.stage == "distill" and e.step >= 1)
    reply = stub.CancelJob(distiller_pb2.CancelJobRequest(job_id=job_id))
    assert reply.state == CANCELLED
    events = watch(stub, job_id)
    assert events[-1].state == CANCELLED
    assert [e.sequence for e in events] == list(range(len(events)))
    assert max(e.step for e in events if e.stage == "distill") < 100_000
    assert stub.CancelJob(distiller_pb2.CancelJobRequest(job_id=job_id)).state == CANCELLED
    names = [a.name for a in stub.ListArtifacts(distiller_pb2.ListArtifactsRequest()).artifacts]
    assert "to-cancel" not in names


def test_a_killed_distiller_resumes_the_job_and_the_worker_serves_the_result(
    tiny_model_dir, tmp_path, start_worker
):
    work_dir = tmp_path / "work"
    first = start_distiller(work_dir, tmp_path)
    try:
        with grpc.insecure_channel(first.address) as channel:
            stub = distiller_pb2_grpc.DistillerServiceStub(channel)
            job_id = submit(stub, tiny_recipe(tiny_model_dir))
            before = watch(stub, job_id, until=lambda e: e.message == "checkpoint")
    finally:
        first.kill()  # SIGKILL: no chance to clean up or to write anything more
    checkpoint_step = before[-1].step
    assert checkpoint_step in (3, 6, 9)

    second = start_distiller(work_dir, tmp_path)
    try:
        with grpc.insecure_channel(second.address) as channel:
            stub = distiller_pb2_grpc.DistillerServiceStub(channel)
            events = watch(stub, job_id)
            artifacts = {
                a.name: a for a in stub.ListArtifacts(distiller_pb2.ListArtifactsRequest()).artifacts
            }
    finally:
        second.stop()

    # The history from before the kill is replayed unchanged, then the job goes on.
    assert [(e.sequence, e.message, e.step) for e in events[: len(before)]] == [
        (e.sequence, e.message, e.step) for e in before
    ]
    after = events[len(before) :]
    messages = [e.message for e in after]
    assert "resumed after a restart" in messages
    assert "initial student already built; reused" in messages
    resumed = next(e for e in after if e.message.startswith("resumed from checkpoint"))
    assert resumed.step >= checkpoint_step
    # No finished step is redone: training continues after the checkpoint it resumed from.
    steps_after = [e.step for e in after if e.stage == "distill" and e.loss]
    assert steps_after == list(range(resumed.step + 1, 13))
    # The teacher's answers were cached before the kill; none are generated again.
    assert not [e for e in after if e.message == "teacher answers"]

    final = events[-1]
    assert final.state == SUCCEEDED
    assert sorted(a.name for a in final.artifacts) == ["tiny-student", "tiny-student-int8"]
    student, quantized = artifacts["tiny-student"], artifacts["tiny-student-int8"]
    assert student.parent == str(tiny_model_dir) and quantized.parent == "tiny-student"
    assert quantized.quantization == "int8" and quantized.size_bytes < 0.4 * student.size_bytes
    assert student.parameters == quantized.parameters
    for key in ("perplexity", "kl_to_teacher", "top1_agreement", "exact_match", "decode_tokens_per_second"):
        assert key in quantized.metrics
    assert quantized.metrics["decode_tokens_per_second"] > 0
    assert student.content_hash != quantized.content_hash and len(student.content_hash) == 64
    assert student.job_id == quantized.job_id == job_id
    assert content_hash(Path(quantized.path)) == quantized.content_hash
    assert quantized.recipe_yaml == tiny_recipe(tiny_model_dir)

    worker = start_worker(quantized.path)
    with grpc.insecure_channel(worker.address) as channel:
        worker_stub = worker_pb2_grpc.WorkerServiceStub(channel)
        request = worker_pb2.GenerateRequest(
            client_id="alice",
            prompt=generation_pb2.Prompt(text="The standard library"),
            sampling=generation_pb2.SamplingParams(max_tokens=8, ignore_eos=True),
        )
        result = [m.result for m in worker_stub.Generate(request, timeout=60) if m.HasField("result")][0]
        report = worker_stub.GetLoadReport(worker_pb2.GetLoadReportRequest()).report
    assert result.usage.completion_tokens == 8
    assert report.model == "tiny-student-int8"
