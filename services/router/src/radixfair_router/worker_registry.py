"""Which workers exist, which are healthy, and how loaded each one is.

Workers come from the static list in the config or register themselves
with RegisterWorker heartbeats, which expire after a TTL. A registration
never takes a worker over: a statically listed id cannot be registered at
another address, and a registered id moves to another address only after
its heartbeats have lapsed for a TTL. A monitor task
checks every worker through grpc.health.v1 and polls its LoadReport on a
short interval; a worker that fails ``unhealthy_after_failures`` checks in a
row, or fails a forwarded call, leaves rotation at once and comes back when
its checks pass again. With the defaults a dead worker is out within about
a second. Before a worker's channel is closed (it left the pool, or the
router stops), the closing listeners hear of it: closing the channel cancels
every call on it, and the relay must know that it was not the caller who
hung up (a stream with no token yet is retried elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixfair.errors import AlreadyExistsError
from radixfair.tls import ChannelSecurity
from radixfair.v1 import worker_pb2, worker_pb2_grpc
from radixfair_router.config import RegistryConfig

log = logging.getLogger(__name__)

# gRPC's default reconnect backoff grows to 120 s: a restarted worker waited up to 17 s to be
# seen again. Health checks fail fast on a channel in backoff, so a short cap is what makes
# re-admission prompt: a worker back on its address is reconnected within the cap (x 1.2, gRPC's
# jitter) and admitted by the next check.
RECONNECT_BACKOFF_CAP_S = 1.0
_RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", int(RECONNECT_BACKOFF_CAP_S * 1000)),
)

ReportListener = Callable[[str, worker_pb2.LoadReport], None]
RemovalListener = Callable[[str], None]
ClosingListener = Callable[["WorkerEndpoint", str], None]


@dataclass
class WorkerEndpoint:
    """A worker and the router's live knowledge of it (mutated only by the registry and router)."""

    worker_id: str
    address: str
    model: str
    static: bool
    channel: grpc.aio.Channel
    stub: worker_pb2_grpc.WorkerServiceStub
    health: health_pb2_grpc.HealthStub
    healthy: bool = False
    failures: int = 0
    # Dynamic workers only: monotonic time after which an unrefreshed worker is dropped.
    expires_at: float | None = None
    last_report: worker_pb2.LoadReport | None = None
    # This router's requests on the worker now, and dispatched since the last report.
    inflight: int = 0
    dispatched_since_report: int = 0
    registered_at: float = field(default_factory=time.monotonic)

    @property
    def load(self) -> int:
        """Queued plus running requests: the last report plus what this router sent since."""
        reported = 0
        if self.last_report is not None:
            reported = self.last_report.queue_length + self.last_report.running_requests
        return max(self.inflight, reported + self.dispatched_since_report)


class WorkerRegistry:
    def __init__(
        self,
        config: RegistryConfig,
        on_report: ReportListener | None = None,
        on_removed: RemovalListener | None = None,
        security: ChannelSecurity | None = None,
    ) -> None:
        self._config = config
        # Loaded once, at start-up (from config.tls unless given): a bad certificate file is a
        # start-up error, not a failed registration.
        self._security = security or ChannelSecurity.load(config.tls, "registry.tls")
        self._workers: dict[str, WorkerEndpoint] = {}
        self._on_report = on_report
        self._on_removed = on_removed
        self._monitor: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closing: list[ClosingListener] = []

    def add_closing_listener(self, listener: ClosingListener) -> None:
        """``listener(endpoint, why)`` runs before ``endpoint``'s channel is closed."""
        self._closing.append(listener)

    def start(self) -> None:
        for static in self._config.workers:
            self._add(static.worker_id, static.address, static.model, static=True)
        self._monitor = asyncio.get_running_loop().create_task(self._monitor_forever())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        for worker in list(self._workers.values()):
            self._notify_closing(worker, "the router is stopping")
            await worker.channel.close()
        self._workers.clear()

    def register(self, worker_id: str, address: str, model: str) -> float:
        """Adds or refreshes a heartbeating worker; returns the TTL in seconds.

        Raises AlreadyExistsError when the id belongs to a static worker or to a
        live registration at another address.
        """
        ttl = self._config.heartbeat_ttl_s
        worker = self._workers.get(worker_id)
        if worker is not None and worker.address != address:
            if worker.static:
                raise AlreadyExistsError(
                    f"worker id {worker_id!r} is listed in this router's config at another address; "
                    "a registration cannot replace it"
                )
            left = (worker.expires_at or 0.0) - time.monotonic()
            if left >= 0:
                raise AlreadyExistsError(
                    f"worker id {worker_id!r} is registered at another address and still heartbeating; "
                    f"it can move once that registration lapses (within {ttl:.0f}s of its last heartbeat)"
                )
            self._remove(worker_id, "its registration lapsed and it registered at another address")
            worker = None
        if worker is None:
            worker = self._add(worker_id, address, model, static=False)
            log.info("worker %s registered at %s", worker_id, address)
        if not worker.static:
            worker.expires_at = time.monotonic() + ttl
        return ttl

    def all(self) -> list[WorkerEndpoint]:
        return sorted(self._workers.values(), key=lambda w: w.worker_id)

    def healthy(self, model: str = "") -> list[WorkerEndpoint]:
        return [w for w in self.all() if w.healthy and (not model or not w.model or w.model == model)]

    def served_models(self) -> frozenset[str] | None:
        """The models the known workers serve; None while any worker's model is unknown (or none is known).

        A worker listed without a model learns it from its first load report.
        """
        models = frozenset(w.model for w in self._workers.values())
        if not models or "" in models:
            return None
        return models

    def get(self, worker_id: str) -> WorkerEndpoint | None:
        return self._workers.get(worker_id)

    def mark_failed(self, worker_id: str, why: str) -> None:
        """A forwarded call could not reach the worker: out of rotation until checks pass again."""
        worker = self._workers.get(worker_id)
        if worker is not None and worker.healthy:
            worker.healthy = False
            worker.failures = self._config.unhealthy_after_failures
            log.warning("worker %s out of rotation: %s", worker_id, why)

    async def wait_for_healthy(self, model: str, timeout_s: float) -> list[WorkerEndpoint]:
        deadline = time.monotonic() + timeout_s
        while True:
            workers = self.healthy(model)
            remaining = deadline - time.monotonic()
            if workers or remaining <= 0:
                return workers
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def _add(self, worker_id: str, address: str, model: str, static: bool) -> WorkerEndpoint:
        channel = self._security.aio_channel(address, options=_RECONNECT_OPTIONS)
        worker = WorkerEndpoint(
            worker_id=worker_id,
            address=address,
            model=model,
            static=static,
            channel=channel,
            stub=worker_pb2_grpc.WorkerServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
        )
        self._workers[worker_id] = worker
        # Check at once rather than at the next tick, so a new worker serves quickly.
        asyncio.get_running_loop().create_task(self._check(worker))
        return worker

    def _remove(self, worker_id: str, why: str) -> None:
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return
        self._notify_closing(worker, why)
        asyncio.get_running_loop().create_task(worker.channel.close())
        if self._on_removed is not None:
            self._on_removed(worker_id)

    async def _monitor_forever(self) -> None:
        while True:
            now = time.monotonic()
            for worker in list(self._workers.values()):
                if worker.expires_at is not None and worker.expires_at < now:
                    log.warning("worker %s missed its heartbeats; dropped", worker.worker_id)
                    self._remove(worker.worker_id, "it missed its heartbeats")
            await asyncio.gather(*(self._check(w) for w in list(self._workers.values())))
            await asyncio.sleep(self._config.health_check_interval_s)

    async def _check(self, worker: WorkerEndpoint) -> None:
        timeout = self._config.health_check_timeout_s
        try:
            reply = await worker.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            report = None
            if serving:
                report = (
                    await worker.stub.GetLoadReport(worker_pb2.GetLoadReportRequest(), timeout=timeout)
                ).report
        except grpc.aio.AioRpcError as error:
            serving, report = False, None
            why = f"{error.code().name}: {error.details()}"
        else:
            why = "health check says NOT_SERVING"
        if self._workers.get(worker.worker_id) is not worker:
            return  # removed while the check was in flight
        if serving and report is not None:
            self._record_report(worker, report)
            if not worker.healthy:
                log.info("worker %s (%s) is healthy", worker.worker_id, worker.address)
            worker.healthy, worker.failures = True, 0
            self._changed.set()
            return
        worker.failures += 1
        if worker.healthy and worker.failures >= self._config.unhealthy_after_failures:
            worker.healthy = False
            log.warning("worker %s out of rotation: %s", worker.worker_id, why)

    def _notify_closing(self, worker: WorkerEndpoint, why: str) -> None:
        for listener in self._closing:
            try:
                listener(worker, why)
            except Exception:  # a listener's bug must not keep a dead worker's channel open
                log.exception("closing listener failed for worker %s", worker.worker_id)

    def _record_report(self, worker: WorkerEndpoint, report: worker_pb2.LoadReport) -> None:
        worker.last_report = report
        worker.dispatched_since_report = 0
        if report.model and not worker.model:
            worker.model = report.model
        if self._on_report is not None:
            self._on_report(worker.worker_id, report)
