"""What one admission costs a local scheduling policy at 128, 1,000 and 10,000 waiting requests.

DLPM orders the waiting queue by prefix match at any depth (a radix tree of
waiting requests walked against the cache, scheduler/waiting_tree.py) rather
than sorting the whole queue or falling back to arrival order past 128
requests, as SGLang's LPM does. This measures the price: the wall time of
``pick_next`` when it admits one request, with the queue held at a fixed
depth (each admitted request finishes and a new one arrives, outside the
timed call). The cache is a real ``RadixCache`` holding half the clients'
documents; requests are a client's document plus a unique question.

    .venv/bin/python bench/eval/eval_dlpm_admission_cost.py [--depths 128 1000 10000] [--admissions 2000]

Writes bench/results/eval_dlpm_admission_cost.{json,md}; ``--out DIR`` writes there instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import RESULTS_DIR, write_results  # noqa: E402
from radixfair_engine.config import SchedulerConfig  # noqa: E402
from radixfair_engine.page_allocator import PageAllocator  # noqa: E402
from radixfair_engine.radix_cache import RadixCache  # noqa: E402
from radixfair_engine.request import Request, RequestStatus, SamplingConfig  # noqa: E402
from radixfair_engine.scheduler.registry import build_policy  # noqa: E402

PAGE = 16
OUTPUT_TOKENS = 8


class OneAdmission:
    """Admits one request per step, setting the fields the engine sets on admission."""

    def __init__(self, cache: RadixCache) -> None:
        self.cache = cache
        self.used = False

    def try_admit(self, request: Request) -> bool:
        if self.used:
            return False
        self.used = True
        matched = self.cache.match_length(request.fill_ids[:-1])
        request.num_cached_tokens = request.num_computed_tokens = matched
        request.times_admitted += 1
        request.status = RequestStatus.RUNNING
        return True

    def holds(self, request: Request) -> bool:
        return False


class Workload:
    """Clients with their own documents; half the documents are cached."""

    def __init__(self, clients: int, doc_tokens: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.docs = [list(range(c * doc_tokens + 1, (c + 1) * doc_tokens + 1)) for c in range(clients)]
        allocator = PageAllocator(clients * doc_tokens // PAGE + 64)
        self.cache = RadixCache(allocator, PAGE)
        for doc in self.docs[::2]:
            pages = allocator.allocate(len(doc) // PAGE)
            self.cache.insert(doc, pages)
            allocator.decref(pages)
        self.made = 0

    def request(self) -> Request:
        self.made += 1
        client = int(self.rng.integers(len(self.docs)))
        question = [10**7 + self.made * 64 + i for i in range(32)]
        return Request(
            f"r{self.made}",
            f"c{client:04d}",
            self.docs[client] + question,
            SamplingConfig(max_tokens=OUTPUT_TOKENS),
            arrival_time=float(self.made),
        )


def measure(
    policy_name: str, depth: int, admissions: int, clients: int, doc_tokens: int
) -> dict[str, object]:
    config = SchedulerConfig(policy=policy_name, quantum=8192.0)
    policy = build_policy(config, clock=time.monotonic)
    work = Workload(clients, doc_tokens, seed=depth)
    waiting: list[Request] = []
    for _ in range(depth):
        r = work.request()
        policy.on_arrival(r)
        waiting.append(r)
    samples = []
    for i in range(admissions + 50):
        start = time.perf_counter_ns()
        admitted = policy.pick_next(waiting, work.cache, OneAdmission(work.cache))
        elapsed = time.perf_counter_ns() - start
        if i >= 50:  # the first calls build the ordered queue: warm-up
            samples.append(elapsed / 1000)
        for r in admitted:
            waiting.remove(r)
            policy.on_output_tokens({(r.client_id, r.weight): OUTPUT_TOKENS})
            r.status = RequestStatus.FINISHED
            policy.on_finished(r)
            fresh = work.request()
            policy.on_arrival(fresh)
            waiting.append(fresh)
    us = np.array(samples)
    return {
        "policy": policy_name,
        "waiting": depth,
        "admissions": len(samples),
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depths", nargs="*", type=int, default=[128, 1000, 10000])
    parser.add_argument("--policies", nargs="*", default=["dlpm", "lpm", "vtc", "fcfs"])
    parser.add_argument("--admissions", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--doc-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results/)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    rows = []
    for depth in args.depths:
        for policy in args.policies:
            rows.append(measure(policy, depth, args.admissions, args.clients, args.doc_tokens))
            print(rows[-1], file=sys.stderr)
    notes = (
        f"Wall time of one pick_next admitting one request, queue held at the given depth; "
        f"{args.clients} clients with {args.doc_tokens}-token documents (half cached), 32-token "
        f"unique questions, {OUTPUT_TOKENS} output tokens, quantum 8192. A shared 2-core machine: "
        "tails are inflated by other load; compare depths, not absolute values."
    )
    write_results(
        "eval_dlpm_admission_cost",
        rows,
        ["policy", "waiting", "admissions", "p50_us", "p99_us", "mean_us"],
        {"args": vars(args)},
        notes,
        results_dir=args.out or RESULTS_DIR,
    )


if __name__ == "__main__":
    main()
