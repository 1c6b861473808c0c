"""Runs the engine on its own thread and hands each request's outputs to asyncio.

The gRPC handlers live on the asyncio event loop; the engine's compute loop
is plain synchronous code on one thread. Outputs cross over through
``loop.call_soon_threadsafe`` into one asyncio.Queue per request, and a
snapshot of load and cache contents is published after steps for reports.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from radixfair_worker.engine import Engine
from radixfair_worker.engine_outputs import LoadSnapshot, StepOutput
from radixfair_worker.request import Request

log = logging.getLogger(__name__)

# The digest walks the whole radix tree, so it is refreshed at most this often.
DIGEST_INTERVAL_S = 0.25
DIGEST_LIMIT = 4096


@dataclass(frozen=True)
class EngineFailure:
    """Delivered instead of a StepOutput when a step raised."""

    message: str


@dataclass(frozen=True)
class PublishedState:
    snapshot: LoadSnapshot
    digest: list[int]
    client_service: dict[str, float]
    # Fairness state of the policies that keep some (DLPM deficits, VTC counters).
    deficits: dict[str, float]
    virtual_counters: dict[str, float]
    refills: int


class EngineLoop:
    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self._loop = loop
        self._queues: dict[str, asyncio.Queue[StepOutput | EngineFailure]] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._digest_time = 0.0
        self.state = self._publish(force_digest=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def submit(self, request: Request) -> asyncio.Queue[StepOutput | EngineFailure]:
        """Queues the request (raising its validation errors here) and returns its output queue."""
        outputs: asyncio.Queue[StepOutput | EngineFailure] = asyncio.Queue()
        self._queues[request.request_id] = outputs
        try:
            self.engine.submit(request)
        except Exception:
            del self._queues[request.request_id]
            raise
        self._wake.set()
        return outputs

    def abort(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        self.engine.abort(request_id)
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self.engine.has_work():
                self._wake.wait(timeout=DIGEST_INTERVAL_S)
                self._wake.clear()
                self.state = self._publish(force_digest=False)
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # a failed step must not kill the worker
                log.exception("engine step failed")
                self._fail_all(f"engine step failed: {error}")
                continue
            self._loop.call_soon_threadsafe(self._deliver, outputs)
            self.state = self._publish(force_digest=False)

    def _deliver(self, outputs: list[StepOutput]) -> None:
        for output in outputs:
            queue = self._queues.get(output.request.request_id)
            if queue is not None:
                queue.put_nowait(output)
                if output.finished:
                    del self._queues[output.request.request_id]

    def _fail_all(self, message: str) -> None:
        for request in (*self.engine.running, *self.engine.waiting):
            self.engine.abort(request.request_id)

        def deliver() -> None:
            for queue in self._queues.values():
                queue.put_nowait(EngineFailure(message))
            self._queues.clear()

        self._loop.call_soon_threadsafe(deliver)

    def _publish(self, force_digest: bool) -> PublishedState:
        now = time.monotonic()
        previous = getattr(self, "state", None)
        if force_digest or previous is None or now - self._digest_time >= DIGEST_INTERVAL_S:
            digest = self.engine.cache.digest(DIGEST_LIMIT)
            self._digest_time = now
        else:
            digest = previous.digest
        policy = self.engine.policy
        return PublishedState(
            snapshot=self.engine.load_snapshot(),
            digest=digest,
            client_service=policy.client_service(),
            deficits=policy.deficits() if hasattr(policy, "deficits") else {},
            virtual_counters=policy.counters() if hasattr(policy, "counters") else {},
            refills=getattr(policy, "refill_count", 0),
        )
