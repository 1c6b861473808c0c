"""Builds a trace from a workload spec and a seed: the same pair always gives the same trace.

    .venv/bin/python -m bench.workloads.generate PATTERN --seed 1 --out trace.jsonl [--set key=value ...]

writes the named pattern (see ``bench.workloads.patterns``) as JSONL.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.workloads.clients import client_requests
from bench.workloads.patterns import PATTERNS, build_pattern
from bench.workloads.spec import WorkloadSpec
from bench.workloads.trace import Trace, iter_by_arrival, save_trace


def generate_trace(spec: WorkloadSpec, seed: int) -> Trace:
    """Each client draws from its own stream (seed, client index), so adding a client changes no other."""
    requests = []
    for index, client in enumerate(spec.clients):
        rng = np.random.default_rng([seed, index])
        requests += client_requests(client, rng, spec.duration_s)
    return Trace(spec.name, seed, tuple(iter_by_arrival(requests)), describe(spec))


def describe(value: Any) -> Any:
    """A JSON-able description of a spec, with each dataclass's type name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: describe(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, tuple | list):
        if len(value) > 16 and all(dataclasses.is_dataclass(v) for v in value):
            # Thousands of clients: keep the header short, list the distinct specs once.
            distinct: dict[str, Any] = {}
            for item in value:
                d = describe(item)
                d.pop("client_id", None)
                distinct.setdefault(repr(d), d)
            return {"count": len(value), "distinct": list(distinct.values())[:16]}
        return [describe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pattern", choices=sorted(PATTERNS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], help="pattern parameter, e.g. num_clients=8")
    args = parser.parse_args(argv)
    trace = generate_trace(build_pattern(args.pattern, _parse_sets(args.set)), args.seed)
    save_trace(trace, args.out)
    print(f"{args.out}: {len(trace.requests)} requests, {len(trace.clients)} clients", file=sys.stderr)


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            out[key] = int(raw)
        except ValueError:
            out[key] = float(raw)
    return out


if __name__ == "__main__":
    main()
