"""The one bounded per-client label mechanism (radixfair.metrics.PerClient), on a real Prometheus registry.

Whatever clients arrive, in whatever order, a per-client metric holds at most ``limit`` + 1 values of
its ``client`` label, all its metrics agree on who keeps a label, and a per-client gauge set from a
snapshot gives "other" the fold of the clients beyond the bound, not the last one's value.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from radixfair.metrics import OTHER_CLIENTS, ClientLabels, PerClient, PerClientGauge

client_ids = st.sampled_from([f"c{n}" for n in range(12)] + [OTHER_CLIENTS])


def label_values(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        sample.labels["client"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


@given(st.lists(client_ids, max_size=40), st.integers(0, 5))
def test_a_per_client_counter_never_holds_more_than_the_bound_plus_other(seen: list[str], limit: int):
    registry = CollectorRegistry()
    clients = ClientLabels(limit)
    requests = PerClient(Counter, "requests", "by client and outcome", clients, registry, ("outcome",))
    tokens = PerClient(Counter, "tokens", "by client", clients, registry)

    for client in seen:
        requests.labels(client, "ok").inc()
        tokens.labels(client).inc(2)

    counted = label_values(registry, "requests_total")
    assert len(counted) <= limit + 1
    assert sum(counted.values()) == len(seen)
    # Both metrics share one ClientLabels: the same clients keep their own label in each.
    assert set(counted) == set(label_values(registry, "tokens_total"))


@given(st.dictionaries(client_ids, st.floats(-1e6, 1e6, allow_nan=False), max_size=12), st.integers(0, 5))
def test_a_per_client_gauge_folds_the_clients_beyond_the_bound_into_other(
    snapshot: dict[str, float], limit: int
):
    registry = CollectorRegistry()
    clients = ClientLabels(limit)
    service = PerClientGauge("service", "sum over folded clients", clients, registry)
    counter = PerClientGauge("counter", "largest over folded clients", clients, registry, fold=max)

    service.set_each(snapshot)
    counter.set_each(snapshot)

    folded = [value for client, value in snapshot.items() if clients.label(client) == OTHER_CLIENTS]
    shown = label_values(registry, "service")
    assert len(shown) <= limit + 1
    assert {c: v for c, v in shown.items() if c != OTHER_CLIENTS} == {
        c: v for c, v in snapshot.items() if clients.label(c) != OTHER_CLIENTS
    }
    if folded:
        assert shown[OTHER_CLIENTS] == sum(folded)
        assert label_values(registry, "counter")[OTHER_CLIENTS] == max(folded)
    else:
        assert OTHER_CLIENTS not in shown
