"""The shared pieces of the operator metrics: the bounded client label and the rejection reasons."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from radixfair.errors import (
    EngineStoppedError,
    InvalidRequestError,
    NotFoundError,
    NoWorkerAvailableError,
    PermissionDeniedError,
    QueueFullError,
    RadixfairError,
    UnauthenticatedError,
    WorkerFailedError,
)
from radixfair.metrics import OTHER_CLIENTS, ClientLabels, MetricsConfig, rejection_reason
from radixfair_worker.worker_metrics import BatchHistogram

CLIENT_IDS = st.sampled_from(["a", "b", "c", "d", "e", OTHER_CLIENTS])
clients = st.lists(CLIENT_IDS, max_size=40)


@given(seen=clients, limit=st.integers(0, 4))
def test_the_first_clients_up_to_the_bound_keep_their_label_and_the_rest_share_other(seen, limit):
    labels = ClientLabels(limit)
    got = [labels.label(client) for client in seen]

    distinct = list(dict.fromkeys(c for c in seen if c != OTHER_CLIENTS))
    own = set(distinct[:limit])
    assert got == [c if c in own else OTHER_CLIENTS for c in seen]
    assert len(set(got)) <= limit + 1
    # Stable: asking again changes nothing, and rows name what labels said.
    assert [labels.label(c) for c in seen] == got
    assert [labels.name(labels.row(c)) for c in seen] == got


@given(batches=st.lists(st.lists(st.tuples(st.floats(0, 100), CLIENT_IDS)), max_size=6))
def test_a_client_labelled_batch_histogram_exposes_what_per_client_histograms_would(batches):
    buckets = (0.01, 0.1, 1.0, 10.0)
    batched, reference_registry = CollectorRegistry(), CollectorRegistry()
    labels = ClientLabels(2)
    histogram = BatchHistogram("latency_seconds", "doc", buckets, batched, labels)
    reference = Histogram("latency_seconds", "doc", ["client"], buckets=buckets, registry=reference_registry)
    for batch in batches:
        values = [value for value, _ in batch]
        owners = [owner for _, owner in batch]
        histogram.observe_many(values, [labels.row(c) for c in owners])
        for value, client in zip(values, owners):
            reference.labels(labels.label(client)).observe(value)

    def samples(registry):
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    expected, got = samples(reference_registry), samples(batched)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (InvalidRequestError("x"), "invalid_argument"),
        (UnauthenticatedError("x"), "unauthenticated"),
        (PermissionDeniedError("x"), "permission_denied"),
        (NotFoundError("x"), "not_found"),
        (QueueFullError("x"), "queue_full"),
        (NoWorkerAvailableError("x"), "no_worker"),
        (WorkerFailedError("x"), "worker_failed"),
        (EngineStoppedError("x"), "engine_stopped"),
        (ValueError("a bug"), "internal"),
    ],
)
def test_each_error_kind_has_its_rejection_reason(error, reason):
    assert rejection_reason(error) == reason


def test_a_status_passed_through_is_named_by_its_code():
    class RelayedError(RadixfairError):
        code = grpc.StatusCode.DEADLINE_EXCEEDED

    assert rejection_reason(RelayedError("slow")) == "deadline_exceeded"


def test_a_negative_client_label_bound_is_a_config_error():
    with pytest.raises(ValueError, match="max_client_labels"):
        MetricsConfig(max_client_labels=-1)
