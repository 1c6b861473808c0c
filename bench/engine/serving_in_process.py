"""The serving bench's ceiling: the worker's own engine driven in-process, closed loop, no gRPC."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engine.serving_clients import ClosedLoop, RequestRecord, RequestSpec, by_client  # noqa: E402


def build_in_process_engine(settings: dict[str, object]) -> object:
    """The worker's engine, built by the worker's builder from the worker's config and settings."""
    import torch

    from radixfair.config_loading import load_config
    from radixfair.gc_tuning import tune_for_serving
    from radixfair_engine.engine_builder import build_engine
    from radixfair_model_format.model_store import resolve_model_dir
    from radixfair_worker.config import WorkerConfig

    config = load_config(WorkerConfig, env={}, overrides=settings)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    engine = build_engine(config.engine, resolve_model_dir(config.model, Path(config.cache_dir))).engine
    # The worker's engine process runs under these collector settings (engine_loop.run_engine_process);
    # without them the in-process ceiling pays young collections every ~700 allocations, several
    # per step at 256 streams, and more with long prompts' live objects.
    tune_for_serving()
    return engine


def run_cell_in_process(
    engine: object, specs: list[RequestSpec], tenants: int, plan: ClosedLoop | None = None
) -> list[RequestRecord]:
    """Closed loop like the gRPC clients: each client submits its next request when one finishes.

    The next one is the client's next listed request, or in a timed cell (``plan``) a new one until
    the cell's duration is up (serving_clients.client_loop's rule).
    """
    from radixfair_engine.request import Request, SamplingConfig

    queues = {c: list(reversed(s)) for c, s in by_client(specs).items()}
    rounds = dict.fromkeys(queues, 0)
    live: dict[int, tuple[int, RequestRecord]] = {}
    until = time.monotonic() + plan.duration_s if plan is not None else None

    def submit(client: int) -> None:
        if plan is not None:
            spec = queues[client].pop() if queues[client] else plan.spec(client, rounds[client])
        else:
            spec = queues[client].pop()
        rounds[client] += 1
        # Before the Request, whose arrival stamp the worker-side TTFT starts from (as a client's
        # send precedes the worker's arrival).
        record = RequestRecord(spec.request_id, time.monotonic(), client=client)
        sampling = SamplingConfig(max_tokens=spec.max_tokens, ignore_eos=True)
        request = Request(spec.request_id, f"tenant-{client % tenants}", list(spec.prompt), sampling)
        # As in the worker: the engine makes no text for a request without stop strings (the serving
        # front does, in its own process), so this is the engine the worker runs, nothing more.
        request.text_in_engine = False
        live[id(request)] = (client, record)
        engine.submit(request)  # type: ignore[attr-defined]

    def has_next(client: int) -> bool:
        if until is not None:
            return time.monotonic() < until
        return bool(queues[client])

    for client in queues:
        submit(client)
    done: list[RequestRecord] = []
    while engine.has_work():  # type: ignore[attr-defined]
        outputs = engine.step()  # type: ignore[attr-defined]
        now = time.monotonic()
        for out in outputs:
            client, record = live[id(out.request)]
            record.on_tokens(len(out.new_token_ids), now)
            if out.finished:
                request = out.request
                record.end = now
                record.prompt_tokens = len(request.prompt_ids)
                record.cached_tokens = request.num_cached_tokens
                if request.admitted_time is not None and request.first_token_time is not None:
                    record.worker_queue_ms = 1e3 * (request.admitted_time - request.arrival_time)
                    record.worker_ttft_ms = 1e3 * (request.first_token_time - request.arrival_time)
                    record.worker_total_ms = 1e3 * (request.finished_time - request.arrival_time)
                record.ok = record.tokens == len(request.output_ids) == request.sampling.max_tokens
                done.append(record)
                del live[id(request)]
                if has_next(client):
                    submit(client)
    return done
