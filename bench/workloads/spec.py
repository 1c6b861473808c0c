"""A workload: named clients over a duration. Patterns build one, ``generate_trace`` draws a trace from it.

Its own module so that the patterns (which build specs) and the generator (whose command line
looks the patterns up by name) import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.workloads.clients import ClientSpec


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    duration_s: float
    clients: tuple[ClientSpec, ...]
