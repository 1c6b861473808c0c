"""The workload generator: reproducible traces whose patterns have the structure they claim."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from bench.workloads import (
    answer_tokens,
    build_pattern,
    generate_trace,
    load_trace,
    prompt_token_ids,
    save_trace,
)
from bench.workloads.distributions import Bursty, OnOff, Poisson

PAGE = 16


def by_client(trace):
    out = defaultdict(list)
    for request in trace.requests:
        out[request.client_id].append(request)
    return out


def test_the_same_spec_and_seed_give_the_same_trace_and_another_seed_does_not():
    spec = build_pattern("mixed", {"duration_s": 20.0})
    first, again, other = generate_trace(spec, 3), generate_trace(spec, 3), generate_trace(spec, 4)
    assert first.requests == again.requests
    assert [prompt_token_ids(r) for r in first.requests] == [prompt_token_ids(r) for r in again.requests]
    assert first.requests != other.requests


def test_a_saved_trace_loads_back_identical(tmp_path):
    trace = generate_trace(build_pattern("multi_turn", {"duration_s": 20.0}), 1)
    for name in ("t.jsonl", "t.jsonl.gz"):
        save_trace(trace, tmp_path / name)
        loaded = load_trace(tmp_path / name)
        assert (loaded.name, loaded.seed, loaded.requests) == (trace.name, trace.seed, trace.requests)


def test_shared_prefix_clients_each_reuse_their_own_document():
    trace = generate_trace(build_pattern("shared_prefix", {"duration_s": 20.0, "doc_tokens": 512}), 1)
    docs = {}
    for client, requests in by_client(trace).items():
        heads = {tuple(prompt_token_ids(r)[:512]) for r in requests}
        assert len(heads) == 1 and len(requests) > 5
        docs[client] = heads.pop()
    assert len({d[:PAGE] for d in docs.values()}) == len(docs)


def test_no_sharing_prompts_share_not_even_a_first_page():
    trace = generate_trace(build_pattern("no_sharing", {"duration_s": 20.0}), 1)
    firsts = [tuple(prompt_token_ids(r)[:PAGE]) for r in trace.requests]
    assert len(set(firsts)) == len(firsts)


def test_the_heavy_client_sends_about_heavy_factor_times_a_light_clients_requests():
    trace = generate_trace(build_pattern("heavy_client", {"duration_s": 60.0, "heavy_factor": 10.0}), 1)
    counts = {c: len(rs) for c, rs in by_client(trace).items()}
    light = np.mean([n for c, n in counts.items() if c != "heavy"])
    assert 6 < counts["heavy"] / light < 15


def test_each_conversation_turn_extends_the_previous_turn_and_its_answer():
    trace = generate_trace(build_pattern("multi_turn", {"duration_s": 30.0}), 1)
    by_id = {r.request_id: r for r in trace.requests}
    followers = [r for r in trace.requests if r.after is not None]
    assert followers
    for turn in followers:
        previous = by_id[turn.after]
        expected_head = prompt_token_ids(previous) + list(
            answer_tokens(previous.request_id, previous.max_tokens)
        )
        tokens = prompt_token_ids(turn)
        assert tokens[: len(expected_head)] == expected_head and len(tokens) > len(expected_head)
        assert turn.client_id == previous.client_id and turn.think_s > 0


def test_join_leave_clients_send_only_inside_staggered_windows():
    params = {"num_clients": 4, "duration_s": 60.0, "active_s": 20.0}
    trace = generate_trace(build_pattern("join_leave", params), 1)
    starts = []
    for client, requests in sorted(by_client(trace).items()):
        index = int(client[1:])
        window = (index * 40.0 / 3, index * 40.0 / 3 + 20.0)
        assert all(window[0] <= r.arrival_s < window[1] for r in requests)
        starts.append(min(r.arrival_s for r in requests))
    assert starts == sorted(starts)


def test_arrival_processes_have_their_rate_and_burstiness():
    rng = np.random.default_rng(0)
    poisson = np.diff(Poisson(10.0).times(rng, 0.0, 500.0))
    bursty = np.diff(Bursty(10.0, cv=3.0).times(rng, 0.0, 500.0))
    assert abs(1 / poisson.mean() - 10.0) < 1.0 and 0.8 < poisson.std() / poisson.mean() < 1.2
    assert abs(1 / bursty.mean() - 10.0) < 3.0 and bursty.std() / bursty.mean() > 2.0
    onoff = np.diff(OnOff(10.0, mean_on_s=5.0, mean_off_s=5.0).times(rng, 0.0, 500.0))
    assert onoff.max() > 2.0  # silent off-periods


def test_many_clients_scales_to_ten_thousand_clients():
    trace = generate_trace(
        build_pattern("many_clients", {"num_clients": 10_000, "rate": 0.1, "duration_s": 30.0}), 1
    )
    assert len(trace.clients) > 9_000
    assert {r.weight for r in trace.requests} == {1.0, 2.0}


def test_a_drifting_client_moves_to_a_new_document_every_drift_every_requests():
    from bench.workloads.clients import ClientSpec
    from bench.workloads.distributions import AllAtStart, Uniform
    from bench.workloads.spec import WorkloadSpec

    spec = ClientSpec("d", AllAtStart(25), Uniform(8, 8), Uniform(4, 4), shared_prefix_len=64, drift_every=10)
    trace = generate_trace(WorkloadSpec("drift", 1.0, (spec,)), 1)
    docs = [r.prompt[0].key for r in trace.requests]
    assert docs == ["d/doc0"] * 10 + ["d/doc1"] * 10 + ["d/doc2"] * 5


def test_a_paused_client_sends_nothing_inside_its_pause_and_resumes_after():
    from bench.workloads.clients import ClientSpec
    from bench.workloads.distributions import Uniform
    from bench.workloads.spec import WorkloadSpec

    spec = ClientSpec("r", Poisson(50.0), Uniform(8, 8), Uniform(4, 4), pause=(4.0, 7.0))
    times = [r.arrival_s for r in generate_trace(WorkloadSpec("pause", 10.0, (spec,)), 2).requests]
    assert not [t for t in times if 4.0 <= t < 7.0]
    assert any(t < 4.0 for t in times) and any(t >= 7.0 for t in times)


def test_random_mixtures_differ_by_seed_and_keep_light_clients_within_their_share():
    from bench.workloads.mixtures import random_mixture

    capacity = 20.0  # requests per second per worker
    first, again, other = (random_mixture(s, 8, capacity, 20) for s in (5, 5, 6))
    assert first == again and first.spec != other.spec
    for mixture in (first, other):
        spec = mixture.spec
        total_weight = sum(c.weight for c in spec.clients if mixture.roles[c.client_id] != "flood")
        total_weight += len(mixture.flooders())
        trace = generate_trace(spec, 5)
        sent = by_client(trace)
        assert mixture.flooders() and set(mixture.within_share()) | set(mixture.flooders()) == set(
            mixture.roles
        )
        for c in spec.clients:
            share = capacity * 8 * c.weight / total_weight  # requests/s of an equal split
            role = mixture.roles[c.client_id]
            if role == "flood":
                assert c.arrivals.rate >= 1.5 * capacity > share
            elif role != "chat":  # chat: a conversation's turns follow its arrival
                active = spec.duration_s - (c.pause[1] - c.pause[0] if c.pause else 0.0)
                assert c.arrivals.rate * active / spec.duration_s <= 0.5 * share + 1e-9
        assert {r.client_id for r in trace.requests} <= set(mixture.roles)
        assert len(sent) >= len(mixture.flooders())
