"""The workload patterns of the DLPM evaluation (../shared/reference/dlpm.md), as named specs.

Every pattern takes keyword parameters (rates in requests per second per
client, lengths in tokens, times in seconds); ``build_pattern(name, params)``
applies overrides to the defaults.

- shared_prefix: each client asks questions about its own long document.
- shared_prefix_unequal: the same with request rates 1x, 2x, 4x, ... by client.
- no_sharing: unique prompts only.
- heavy_client: one client floods (``heavy_factor`` x the rate) next to light ones.
- hot_prefix: a client floods questions on a hot document next to light clients without sharing.
- multi_turn: conversations that grow their own prefix, turn by turn.
- join_leave: clients that join and leave at staggered times (on/off bursts inside).
- mixed: documents, unique prompts and conversations side by side, bursty arrivals.
- many_clients: thousands of light clients with documents, for the scale runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.workloads.clients import ClientSpec
from bench.workloads.distributions import Bursty, LogNormal, OnOff, Poisson, Uniform
from bench.workloads.spec import WorkloadSpec


def shared_prefix(
    num_clients: int = 8,
    rate: float = 2.0,
    duration_s: float = 60.0,
    doc_tokens: int = 1024,
    question_low: int = 16,
    question_high: int = 64,
    output_low: int = 16,
    output_high: int = 64,
    rate_ratio: float = 1.0,
    name: str = "shared_prefix",
) -> WorkloadSpec:
    clients = tuple(
        ClientSpec(
            f"c{i:02d}",
            Poisson(rate * rate_ratio ** (i % 3)),
            Uniform(question_low, question_high),
            Uniform(output_low, output_high),
            shared_prefix_len=doc_tokens,
        )
        for i in range(num_clients)
    )
    return WorkloadSpec(name, duration_s, clients)


def shared_prefix_unequal(**params: Any) -> WorkloadSpec:
    return shared_prefix(**{"rate_ratio": 2.0, "name": "shared_prefix_unequal", **params})


def no_sharing(
    num_clients: int = 8,
    rate: float = 2.0,
    duration_s: float = 60.0,
    prompt_median: int = 512,
    output_low: int = 16,
    output_high: int = 64,
) -> WorkloadSpec:
    clients = tuple(
        ClientSpec(
            f"c{i:02d}",
            Poisson(rate),
            LogNormal(prompt_median, 0.6, 32, 4 * prompt_median),
            Uniform(output_low, output_high),
        )
        for i in range(num_clients)
    )
    return WorkloadSpec("no_sharing", duration_s, clients)


def heavy_client(
    num_light: int = 7,
    rate: float = 1.0,
    heavy_factor: float = 10.0,
    duration_s: float = 60.0,
    doc_tokens: int = 1024,
    output_low: int = 16,
    output_high: int = 64,
    num_heavy: int = 1,
) -> WorkloadSpec:
    """``num_heavy`` clients at ``heavy_factor`` x ``rate`` next to ``num_light`` clients at ``rate``."""

    def client(name: str, client_rate: float) -> ClientSpec:
        return ClientSpec(
            name,
            Poisson(client_rate),
            Uniform(16, 64),
            Uniform(output_low, output_high),
            shared_prefix_len=doc_tokens,
        )

    heavy = tuple(
        client("heavy" if num_heavy == 1 else f"heavy{i:03d}", rate * heavy_factor) for i in range(num_heavy)
    )
    light = tuple(
        client(f"light{i:05d}" if num_light > 99 else f"light{i:02d}", rate) for i in range(num_light)
    )
    return WorkloadSpec("heavy_client", duration_s, heavy + light)


def hot_prefix(
    num_light: int = 7,
    rate: float = 1.0,
    heavy_factor: float = 10.0,
    duration_s: float = 60.0,
    doc_tokens: int = 2048,
    num_heavy: int = 1,
) -> WorkloadSpec:
    """Heavy clients flooding questions on a hot document; light clients with unique, uncached prompts.

    The case that starves under LPM: every heavy request matches ``doc_tokens`` of cache and every
    light one matches nothing, so LPM admits light requests only when no heavy request waits.
    """
    heavy = tuple(
        ClientSpec(
            "heavy" if num_heavy == 1 else f"heavy{i:03d}",
            Poisson(rate * heavy_factor),
            Uniform(16, 64),
            Uniform(16, 64),
            shared_prefix_len=doc_tokens,
        )
        for i in range(num_heavy)
    )
    light = tuple(
        ClientSpec(
            f"light{i:05d}" if num_light > 99 else f"light{i:02d}",
            Poisson(rate),
            Uniform(256, 768),
            Uniform(16, 64),
        )
        for i in range(num_light)
    )
    return WorkloadSpec("hot_prefix", duration_s, heavy + light)


def multi_turn(
    num_clients: int = 8,
    rate: float = 0.5,
    duration_s: float = 60.0,
    system_tokens: int = 256,
    turns_low: int = 2,
    turns_high: int = 6,
    think_s: float = 1.0,
) -> WorkloadSpec:
    clients = tuple(
        ClientSpec(
            f"c{i:02d}",
            Poisson(rate),
            Uniform(32, 128),
            Uniform(32, 128),
            shared_prefix_len=system_tokens,
            turns=Uniform(turns_low, turns_high),
            think_s=think_s,
        )
        for i in range(num_clients)
    )
    return WorkloadSpec("multi_turn", duration_s, clients)


def join_leave(
    num_clients: int = 8,
    rate: float = 3.0,
    duration_s: float = 90.0,
    active_s: float = 40.0,
    doc_tokens: int = 1024,
) -> WorkloadSpec:
    stagger = (duration_s - active_s) / max(1, num_clients - 1)
    clients = tuple(
        ClientSpec(
            f"c{i:02d}",
            OnOff(rate, mean_on_s=10.0, mean_off_s=2.0),
            Uniform(16, 64),
            Uniform(16, 64),
            shared_prefix_len=doc_tokens,
            start_s=i * stagger,
            end_s=i * stagger + active_s,
        )
        for i in range(num_clients)
    )
    return WorkloadSpec("join_leave", duration_s, clients)


def mixed(num_clients: int = 9, rate: float = 1.5, duration_s: float = 60.0) -> WorkloadSpec:
    clients = []
    for i in range(num_clients):
        kind = i % 3
        if kind == 0:
            spec = ClientSpec(
                f"doc{i:02d}", Bursty(rate), Uniform(16, 64), Uniform(16, 64), shared_prefix_len=1024
            )
        elif kind == 1:
            spec = ClientSpec(f"uniq{i:02d}", Bursty(rate), LogNormal(384, 0.6, 32, 1536), Uniform(16, 64))
        else:
            spec = ClientSpec(
                f"chat{i:02d}",
                Poisson(rate / 3),
                Uniform(32, 96),
                Uniform(32, 96),
                shared_prefix_len=256,
                turns=Uniform(2, 5),
                think_s=1.0,
            )
        clients.append(spec)
    return WorkloadSpec("mixed", duration_s, tuple(clients))


def many_clients(
    num_clients: int = 10_000,
    rate: float = 0.02,
    duration_s: float = 60.0,
    doc_tokens: int = 512,
    documents_per_client: int = 1,
) -> WorkloadSpec:
    clients = tuple(
        ClientSpec(
            f"c{i:05d}",
            Poisson(rate),
            Uniform(16, 64),
            Uniform(16, 64),
            shared_prefix_len=doc_tokens,
            num_documents=documents_per_client,
            weight=2.0 if i % 10 == 0 else 1.0,
        )
        for i in range(num_clients)
    )
    return WorkloadSpec("many_clients", duration_s, clients)


PATTERNS: dict[str, Callable[..., WorkloadSpec]] = {
    "shared_prefix": shared_prefix,
    "shared_prefix_unequal": shared_prefix_unequal,
    "no_sharing": no_sharing,
    "heavy_client": heavy_client,
    "hot_prefix": hot_prefix,
    "multi_turn": multi_turn,
    "join_leave": join_leave,
    "mixed": mixed,
    "many_clients": many_clients,
}


def build_pattern(name: str, params: dict[str, Any] | None = None) -> WorkloadSpec:
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; choose one of {', '.join(sorted(PATTERNS))}")
    return PATTERNS[name](**(params or {}))
