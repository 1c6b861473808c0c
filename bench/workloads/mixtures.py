"""Randomised mixtures of the workload patterns: workloads the policies were not tuned on.

``random_mixture(seed, workers, capacity_rps, requests_per_worker)`` draws, from
its own seeded stream, a client population for a cluster of ``workers``:

- 1 to max(1, workers/8) **flooders**, each on its own hot document (512 to
  3,072 tokens) and offering at least 1.5 workers' capacity: far beyond any
  fair share;
- 3 to 12 **light clients per worker**, each of a role drawn at random:
  ``shared`` (its own document, 256 to 3,072 tokens), ``unique`` (no sharing),
  ``drift`` (its document changes every 10 to 60 requests), ``returning``
  (weight 2, idle for a random middle stretch of 20 to 45% of the run) and
  ``chat`` (multi-turn on a 128- to 1,024-token system prompt);
- weights 1, 2 or 4 for the light clients;
- an offered load of 0.9 to 1.4 of the cluster's capacity in all, of which the
  light clients offer 0.35 to 0.75, split among them at random (Dirichlet),
  and the flooders the rest.

Every light client offers at most half its equal share (the cluster's
``capacity_rps`` x workers x its weight over the sum of weights), so it is
**within its fair share** by construction; ``roles`` says which clients those
are. ``capacity_rps`` is what one worker serves per second on 2,048-token
document requests (the heavy-client pilot of bench/eval/eval_single_worker.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.workloads.clients import ClientSpec
from bench.workloads.distributions import LogNormal, Poisson, Uniform
from bench.workloads.spec import WorkloadSpec

LIGHT_ROLES = ("shared", "unique", "drift", "returning", "chat")


@dataclass(frozen=True)
class Mixture:
    """A drawn workload and each client's role (``flood`` or one of LIGHT_ROLES)."""

    spec: WorkloadSpec
    roles: dict[str, str]
    offered_load: float

    def within_share(self) -> list[str]:
        return [c for c, role in self.roles.items() if role != "flood"]

    def flooders(self) -> list[str]:
        return [c for c, role in self.roles.items() if role == "flood"]


def random_mixture(
    seed: int, workers: int, capacity_rps: float, requests_per_worker: int, flood_load: float | None = None
) -> Mixture:
    """``flood_load``: if given, the flooders' rates are scaled after the draw so that together they
    offer this many times the cluster's capacity (the heavy-flood pattern); the light clients, their
    roles, rates and the trace's duration are those of the plain mixture of the same seed."""
    rng = np.random.default_rng([seed, workers, 7919])
    num_flood = int(rng.integers(1, max(1, workers // 8) + 1))
    num_light = int(workers * rng.integers(3, 13))
    light_weights = rng.choice([1.0, 1.0, 1.0, 2.0, 4.0], size=num_light)
    roles = [str(r) for r in rng.choice(LIGHT_ROLES, size=num_light)]
    light_weights = np.where(np.array(roles) == "returning", 2.0, light_weights)
    load = float(rng.uniform(0.9, 1.4))
    light_load = float(rng.uniform(0.35, 0.75))
    cluster = capacity_rps * workers
    # Equal shares over every client (flooders weigh 1); a light client offers at most half of its own.
    total_weight = float(light_weights.sum()) + num_flood
    cap = 0.5 * cluster * light_weights / total_weight
    light_rps = np.minimum(light_load * cluster * rng.dirichlet(np.ones(num_light)), cap)
    flood_total = max(load * cluster - float(light_rps.sum()), 1.5 * capacity_rps * num_flood)
    flood_rps = np.maximum(flood_total * rng.dirichlet(4 * np.ones(num_flood)), 1.5 * capacity_rps)
    offered = float(flood_rps.sum() + light_rps.sum())
    duration = requests_per_worker * workers / offered
    spec_name = f"mixture_s{seed}_{workers}w"
    if flood_load is not None:
        flood_rps = flood_rps * (flood_load * cluster / float(flood_rps.sum()))
        offered = float(flood_rps.sum() + light_rps.sum())
        spec_name += f"_flood{flood_load:g}"
    clients: list[ClientSpec] = []
    role_of: dict[str, str] = {}
    for i, rate in enumerate(flood_rps):
        name = f"flood{i}"
        role_of[name] = "flood"
        doc = int(rng.integers(512, 3073))
        clients.append(
            ClientSpec(name, Poisson(float(rate)), Uniform(16, 64), Uniform(16, 64), shared_prefix_len=doc)
        )
    for i, (role, weight, rate) in enumerate(zip(roles, light_weights, light_rps)):
        name = f"{role}{i:04d}"
        role_of[name] = role
        clients.append(_light(name, role, float(weight), float(rate), duration, rng))
    return Mixture(WorkloadSpec(spec_name, duration, tuple(clients)), role_of, offered / cluster)


def _light(
    name: str, role: str, weight: float, rate: float, duration: float, rng: np.random.Generator
) -> ClientSpec:
    arrivals, question, output = Poisson(rate), Uniform(16, 64), Uniform(16, 64)
    if role == "shared":
        doc = int(rng.integers(256, 3073))
        return ClientSpec(name, arrivals, question, output, weight, shared_prefix_len=doc)
    if role == "unique":
        return ClientSpec(name, arrivals, LogNormal(384, 0.6, 32, 1536), output, weight)
    if role == "drift":
        doc, every = int(rng.integers(256, 3073)), int(rng.integers(10, 61))
        return ClientSpec(name, arrivals, question, output, weight, shared_prefix_len=doc, drift_every=every)
    if role == "returning":
        doc = int(rng.integers(256, 3073))
        idle = float(rng.uniform(0.2, 0.45)) * duration
        start = float(rng.uniform(0.2, 0.8 - idle / duration)) * duration
        # Its rate while active makes up for the idle stretch: the same requests in less time.
        scaled = Poisson(rate * duration / (duration - idle))
        return ClientSpec(
            name, scaled, question, output, weight, shared_prefix_len=doc, pause=(start, start + idle)
        )
    system = int(rng.integers(128, 1025))
    turns = Uniform(2, 5)
    # Each arrival opens a conversation of 2-4 turns on average 3: a third of the rate in arrivals.
    return ClientSpec(
        name,
        Poisson(rate / 3),
        Uniform(32, 96),
        Uniform(32, 96),
        weight,
        shared_prefix_len=system,
        turns=turns,
        think_s=0.5,
    )
