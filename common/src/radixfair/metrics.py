"""Prometheus exposition for one service, on its own registry, and what both services' metrics share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from radixfair.errors import (
    EngineStoppedError,
    NoWorkerAvailableError,
    QueueFullError,
    RadixfairError,
    WorkerFailedError,
)
from radixfair.listening import ListenError, ensure_port_free

# Latency buckets, in seconds, that resolve both a CPU worker's hundreds of
# milliseconds and a GPU worker's single milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# End-to-end request durations: a whole generation, up to minutes of decoding.
REQUEST_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# The label every client beyond the configured bound shares.
OTHER_CLIENTS = "other"


@dataclass(frozen=True)
class MetricsConfig:
    """Metrics settings shared by the services (``metrics.*`` in their config files)."""

    # Clients that get their own value of the ``client`` label, on every metric that has one;
    # later clients share "other". Each value is a time series (per bucket, for histograms), so
    # this bounds what a Prometheus server stores however many API keys exist.
    max_client_labels: int = 64
    # Address /metrics listens on. Empty (the default): the service's own ``host``, which is
    # loopback unless the config names the pod's address or, in a container, 0.0.0.0; so a config
    # meant for one host never serves metrics on every interface.
    host: str = ""

    def __post_init__(self) -> None:
        if self.max_client_labels < 0:
            raise ValueError("metrics.max_client_labels must be >= 0")

    def bind_host(self, service_host: str) -> str:
        """The address /metrics listens on, for a service whose gRPC port is on ``service_host``."""
        return self.host or service_host


class ClientLabels:
    """The bounded ``client`` label: the first ``limit`` clients seen keep their id, the rest are "other".

    Each client gets a row: 0, 1, ... in the order first seen, and ``limit`` for "other", so a
    batched histogram can keep its counts in an array. Called from the event loop only; the
    /metrics thread reads ``name`` of rows already handed out.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._rows: dict[str, int] = {}
        self._names: list[str] = []

    @property
    def rows(self) -> int:
        """Rows a batched histogram needs: one per own label, one for "other"."""
        return self.limit + 1

    def row(self, client_id: str) -> int:
        row = self._rows.get(client_id)
        if row is None:
            # A client literally named "other" is folded too: two series must never share a label.
            if len(self._names) >= self.limit or client_id == OTHER_CLIENTS:
                return self.limit
            row = self._rows[client_id] = len(self._names)
            self._names.append(client_id)
        return row

    def label(self, client_id: str) -> str:
        row = self.row(client_id)
        return OTHER_CLIENTS if row == self.limit else client_id

    def name(self, row: int) -> str:
        return OTHER_CLIENTS if row == self.limit else self._names[row]


class PerClient:
    """A Prometheus metric whose first label is the bounded ``client`` label.

    Every per-client metric of a service is one of these, built on the service's one
    ``ClientLabels``, so no call site can add a series per client id: ``labels(client_id, ...)``
    maps the id to its own label or "other" first. ``kind`` is Counter, Gauge or Histogram;
    ``labels`` are the label names after ``client``; ``options`` go to the metric (``buckets``).
    """

    def __init__(
        self,
        kind: type[Counter] | type[Gauge] | type[Histogram],
        name: str,
        documentation: str,
        clients: ClientLabels,
        registry: CollectorRegistry,
        labels: Sequence[str] = (),
        **options: object,
    ) -> None:
        self._metric = kind(name, documentation, ["client", *labels], registry=registry, **options)  # type: ignore[arg-type]
        self._clients = clients

    def labels(self, client_id: str, *rest: str):  # -> the metric's child
        """The child of ``client_id``'s label (its id, or "other" beyond the bound) and ``rest``."""
        return self._metric.labels(self._clients.label(client_id), *rest)


class PerClientGauge(PerClient):
    """A per-client gauge set from a whole per-client snapshot (``set_each``).

    Clients folded into "other" share one series, so setting them one by one would leave the last
    one's value; ``fold`` combines them instead (``sum`` for service, ``max`` for a counter).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        clients: ClientLabels,
        registry: CollectorRegistry,
        fold: Callable[[Iterable[float]], float] = sum,
    ) -> None:
        super().__init__(Gauge, name, documentation, clients, registry)
        self._fold = fold

    def set_each(self, values: Mapping[str, float]) -> None:
        """Sets every client's series; the clients beyond the bound set "other" to their fold."""
        folded: list[float] = []
        for client_id, value in values.items():
            if self._clients.label(client_id) == OTHER_CLIENTS:
                folded.append(value)
            else:
                self.labels(client_id).set(value)
        if folded:
            self._metric.labels(OTHER_CLIENTS).set(self._fold(folded))


# Errors whose status code alone does not say why (UNAVAILABLE covers several).
_REASONS: dict[type[RadixfairError], str] = {
    QueueFullError: "queue_full",
    NoWorkerAvailableError: "no_worker",
    WorkerFailedError: "worker_failed",
    EngineStoppedError: "engine_stopped",
}


def rejection_reason(error: BaseException) -> str:
    """The ``reason`` label of a request answered with an error status.

    Typed errors name their kind (``queue_full``, ``no_worker``, ...); any other typed error
    names its status code (``invalid_argument``, ``unauthenticated``, ...); anything else is
    ``internal``.
    """
    if not isinstance(error, RadixfairError):
        return "internal"
    for kind in type(error).__mro__:
        reason = _REASONS.get(kind)  # type: ignore[call-overload]
        if reason is not None:
            return reason
    return error.code.name.lower()


def serve_metrics(registry: CollectorRegistry, port: int, host: str) -> None:
    """Starts the /metrics HTTP endpoint on ``host``:``port`` in a daemon thread; port 0 disables it.

    ``host`` has no default: each service passes the address its config names
    (``MetricsConfig.bind_host``), never all interfaces by accident.

    A taken port raises radixfair.listening.PortInUseError, as a taken gRPC port does.
    """
    if port:
        ensure_port_free(host, port, "/metrics")
        try:
            start_http_server(port, addr=host, registry=registry)
        except OSError as error:  # taken between the check and the bind
            raise ListenError(f"cannot listen for /metrics on {host}:{port}: {error.strerror}") from error
