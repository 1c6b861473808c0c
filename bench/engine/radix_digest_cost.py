"""What the radix cache's digest and its hot-path operations cost, before and after the recency list.

The worker's engine loop publishes ``RadixCache.digest(4096)`` at most every 0.25 s, on the engine
process's one thread (the serving path's bottleneck). The digest used to sort every node by last
access; it now reads a recency list the cache keeps in step on every touch. That moves cost from
the digest to every match and insert, so this script times both sides on the same cache shapes:

- ``digest``: one ``digest(4096)`` call (median of repeats);
- ``match``: ``match_prefix`` of a cached 1,088-token request (two nodes touched);
- ``insert``: ``insert`` of a new 1,088-token request (the shared node touched, one leaf added);
- ``insert_below``: one completed decode page cached below the node a request holds, and the lock
  moved to it, as ``PageBinder.cache_computed`` does (every ancestor touched; eight per request);
- ``evict``: ``evict(4)``, one 4-page leaf.

The cache holds N requests of a 1,024-token shared prefix plus 64 unique tokens (page size 16, the
serving bench's shared-prefix shape), so N + 1 nodes, a tenth of them touched again in random order.
"before" is ``radix_cache.py`` at ``--baseline`` loaded from git, "after" is the working tree's; the
two are timed interleaved block by block, on the same shapes, in one process.

    .venv/bin/python bench/engine/radix_digest_cost.py            # about a minute on 2 busy cores

Writes ``bench/results/radix_digest_cost_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import REPO_ROOT, RESULTS_DIR, write_results  # noqa: E402
from radixfair_engine import radix_cache as radix_cache_now  # noqa: E402
from radixfair_engine.page_allocator import PageAllocator  # noqa: E402

PAGE = 16
SHARED = 1024
UNIQUE = 64
DIGEST_LIMIT = 4096  # the worker's (services/worker/src/radixfair_worker/engine_loop.py)
# The commit before the recency list: radix_cache.py there sorts every node per digest.
BASELINE = "737a875aeb24487664e92ee6697e5454e7c5550a"
SOURCE = "engine/src/radixfair_engine/radix_cache.py"


def module_at(revision: str) -> ModuleType:
    """``radix_cache`` as it was at ``revision``, imported under its own name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:{SOURCE}"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout
    name = f"radix_cache_at_{revision[:10]}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # dataclasses look their module up while building RadixNode
    exec(compile(source, f"{revision[:10]}:{SOURCE}", "exec"), module.__dict__)
    return module


class Shape:
    """The token ids of a shared-prefix workload, the same for every implementation timed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.shared = [self.rng.randrange(1000, 50000) for _ in range(SHARED)]

    def request(self) -> list[int]:
        return self.shared + [self.rng.randrange(1000, 50000) for _ in range(UNIQUE)]

    def page(self) -> list[int]:
        return [self.rng.randrange(1000, 50000) for _ in range(PAGE)]


def insert_fresh(cache, tokens: list[int]):  # noqa: ANN001, ANN201 - either implementation
    pages = cache.allocator.allocate(len(tokens) // PAGE)
    match = cache.insert(tokens, pages)
    cache.allocator.decref(pages)
    return match


def filled_cache(module: ModuleType, requests: list[list[int]], touched: list[int], spare_pages: int):  # noqa: ANN201
    pages = (SHARED + UNIQUE * len(requests)) // PAGE + spare_pages
    cache = module.RadixCache(PageAllocator(pages), PAGE)
    for tokens in requests:
        insert_fresh(cache, tokens)
    for index in touched:
        cache.match_prefix(requests[index])
    return cache


BLOCK = 4  # calls timed together


def interleaved_us(actions: dict[str, object], count: int) -> dict[str, float]:
    """Microseconds per call of each ``actions[name](i)``, i in range(count): the median block's mean.

    Small blocks of the implementations alternate (one first, then the other), so both see the same
    load and the same state of the CPU caches; on a shared 2-core machine a long run's mean moves
    with its neighbours' load by more than the difference measured here, and the median of many
    short blocks does not."""
    blocks: dict[str, list[float]] = {name: [] for name in actions}
    for number, first in enumerate(range(0, count, BLOCK)):
        calls = range(first, min(first + BLOCK, count))
        for name in list(actions) if number % 2 == 0 else list(reversed(actions)):
            action = actions[name]
            started = time.perf_counter_ns()
            for i in calls:
                action(i)  # type: ignore[operator]
            blocks[name].append((time.perf_counter_ns() - started) / len(calls) / 1e3)
    return {name: statistics.median(values) for name, values in blocks.items()}


def median_us(actions: dict[str, object], repeats: int) -> dict[str, float]:
    """Median microseconds of one call of each action, calls alternating."""
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for number in range(repeats):
        for name in list(actions) if number % 2 == 0 else list(reversed(actions)):
            started = time.perf_counter_ns()
            actions[name](0)  # type: ignore[operator]
            samples[name].append((time.perf_counter_ns() - started) / 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(
    caches: dict, requests: list[list[int]], extra: list[list[int]], pages: list[list[int]], repeats: int
):  # noqa: ANN001, ANN201
    """Per-operation microseconds of each cache, interleaved (the caches change: inserts, evictions)."""
    gc.collect()
    out: dict[str, dict[str, float]] = {name: {} for name in caches}

    def record(key: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            out[name][key] = value

    digests = {n: lambda _, c=c: c.digest(DIGEST_LIMIT) for n, c in caches.items()}
    # Alternating with the other implementation's digest, as the engine's other work between two
    # digests would, leaves the CPU caches cold for each call; back to back, the walk is warm.
    record("digest_us", median_us(digests, repeats))
    record("digest_repeat_us", interleaved_us(digests, repeats))
    hits = [requests[(i * 7919) % len(requests)] for i in range(len(extra))]
    record(
        "match_us",
        interleaved_us({n: lambda i, c=c: c.match_prefix(hits[i]) for n, c in caches.items()}, len(hits)),
    )
    record(
        "insert_us",
        interleaved_us({n: lambda i, c=c: insert_fresh(c, extra[i]) for n, c in caches.items()}, len(extra)),
    )
    # Decode: a request holds its leaf and caches one completed page at a time below it, 8 pages each.
    held = {name: [cache.match_prefix(tokens).node for tokens in extra] for name, cache in caches.items()}
    for name, cache in caches.items():
        for node in held[name]:
            cache.lock(node)

    def cache_one_page(cache, rows: list, i: int) -> None:  # noqa: ANN001
        row = i % len(rows)
        page = cache.allocator.allocate(1)
        match = cache.insert_below(rows[row], pages[i], page)
        cache.allocator.decref(page)
        cache.lock(match.node)
        cache.unlock(rows[row])
        rows[row] = match.node

    record(
        "insert_below_us",
        interleaved_us(
            {n: lambda i, c=c, r=held[n]: cache_one_page(c, r, i) for n, c in caches.items()}, len(pages)
        ),
    )
    for name, cache in caches.items():
        for node in held[name]:
            cache.unlock(node)
    record(
        "evict_us",
        interleaved_us({n: lambda _, c=c: c.evict(UNIQUE // PAGE) for n, c in caches.items()}, len(extra)),
    )
    return out


# One digest interval (0.25 s) of decoding at the in-process engine's H200 rate, ~99k tokens/s:
# 1,536 completed 16-token pages over 256 running requests, each finishing after 8 pages (128 new
# tokens) and replaced by a newly admitted one.
INTERVAL_PAGES = 1536
ROWS = 256
PAGES_PER_REQUEST = 8


class Serving:
    """One implementation's running requests during the interval measure."""

    def __init__(self, cache, admissions: list[list[int]]) -> None:  # noqa: ANN001
        self.cache, self.admissions = cache, admissions
        self.rows = [self._admit() for _ in range(ROWS)]
        self.counts = [0] * ROWS

    def _admit(self):  # noqa: ANN202
        match = insert_fresh(self.cache, self.admissions.pop())
        self.cache.lock(match.node)
        return match.node

    def interval(self, pages: list[list[int]]) -> tuple[float, float]:
        """Caches ``pages`` one per step-row as decoding completes them, then digests: (ms, digest us)."""
        cache, rows, counts = self.cache, self.rows, self.counts
        size = cache._nodes
        started = time.perf_counter_ns()
        for i, tokens in enumerate(pages):
            row = i % ROWS
            page = cache.allocator.allocate(1)
            match = cache.insert_below(rows[row], tokens, page)
            cache.allocator.decref(page)
            cache.lock(match.node)
            cache.unlock(rows[row])
            rows[row] = match.node
            counts[row] += 1
            if counts[row] == PAGES_PER_REQUEST:
                cache.unlock(rows[row])
                rows[row], counts[row] = self._admit(), 0
        digest_started = time.perf_counter_ns()
        cache.digest(DIGEST_LIMIT)
        ended = time.perf_counter_ns()
        while cache._nodes > size and cache.evict(1):  # untimed: a full cache keeps its size
            pass
        return (ended - started) / 1e6, (ended - digest_started) / 1e3


def measure_intervals(caches: dict, shape: Shape, intervals: int) -> dict[str, dict[str, float]]:  # noqa: ANN001
    """Median interval time and digest time of each cache, implementations alternating."""
    admissions = [shape.request() for _ in range(ROWS + intervals * INTERVAL_PAGES // PAGES_PER_REQUEST)]
    pages = [[shape.page() for _ in range(INTERVAL_PAGES)] for _ in range(intervals)]
    serving = {name: Serving(cache, list(admissions)) for name, cache in caches.items()}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in caches}
    for number in range(intervals):
        gc.collect()
        for name in list(serving) if number % 2 == 0 else list(reversed(serving)):
            times[name].append(serving[name].interval(pages[number]))
    return {
        name: {
            "interval_ms": statistics.median(t for t, _ in values),
            "interval_digest_us": statistics.median(d for _, d in values),
        }
        for name, values in times.items()
    }


def main() -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--nodes", type=int, nargs="+", default=[256, 5000, 20000])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the 'before' radix_cache.py")
    parser.add_argument("--ops", type=int, default=400, help="calls timed per hot-path operation")
    parser.add_argument("--repeats", type=int, default=31, help="digest calls (the median is reported)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size, fresh caches each")
    parser.add_argument("--intervals", type=int, default=8, help="digest intervals served per round")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    implementations = {"before": module_at(args.baseline), "after": radix_cache_now}
    rows = []
    for nodes in args.nodes:
        shape = Shape(seed=nodes)
        requests = [shape.request() for _ in range(nodes)]
        touched = random.Random(1).sample(range(nodes), nodes // 10)
        extra = [shape.request() for _ in range(args.ops)]
        pages = [shape.page() for _ in range(8 * args.ops)]
        results: dict[str, list[dict[str, float]]] = {name: [] for name in implementations}
        for _ in range(args.rounds):
            spare = len(extra) * 5 + len(pages)
            caches = {name: filled_cache(m, requests, touched, spare) for name, m in implementations.items()}
            cached_nodes = caches["after"]._nodes
            for name, values in measure(caches, requests, extra, pages, args.repeats).items():
                results[name].append(values)
            for cache in caches.values():
                assert len(cache.digest(DIGEST_LIMIT)) == min(DIGEST_LIMIT, cache.cached_pages)
            del caches
            spare = 2 * (ROWS * UNIQUE // PAGE + INTERVAL_PAGES * (1 + UNIQUE // PAGE // PAGES_PER_REQUEST))
            caches = {name: filled_cache(m, requests, touched, spare) for name, m in implementations.items()}
            for name, values in measure_intervals(caches, shape, args.intervals).items():
                results[name][-1].update(values)
            del caches
        for name, runs in results.items():
            row: dict[str, object] = {"cached_nodes": cached_nodes, "implementation": name}
            for key in runs[0]:
                row[key] = statistics.median(run[key] for run in runs)
            rows.append(row)
        before, after = rows[-2], rows[-1]
        after["digest_speedup"] = before["digest_us"] / after["digest_us"]  # type: ignore[operator]
        after["interval_saved_ms"] = before["interval_ms"] - after["interval_ms"]  # type: ignore[operator]
        for key in ("match_us", "insert_us", "insert_below_us", "evict_us"):
            after[f"{key[:-3]}_added_us"] = after[key] - before[key]  # type: ignore[operator]
        # The same interval from the per-call figures: the digest saved less the touches added.
        admissions = INTERVAL_PAGES // PAGES_PER_REQUEST
        added_us = INTERVAL_PAGES * after["insert_below_added_us"] + admissions * after["insert_added_us"]  # type: ignore[operator]
        saved_us = before["interval_digest_us"] - after["interval_digest_us"]  # type: ignore[operator]
        after["model_saved_ms"] = (saved_us - added_us) / 1e3
        print(before, after, flush=True)
    md = write_results(
        f"radix_digest_cost_{args.tag}",
        rows,
        [
            "cached_nodes",
            "implementation",
            "digest_us",
            "digest_speedup",
            "digest_repeat_us",
            "match_us",
            "match_added_us",
            "insert_us",
            "insert_below_us",
            "insert_below_added_us",
            "evict_us",
            "interval_ms",
            "interval_digest_us",
            "interval_saved_ms",
            "model_saved_ms",
        ],
        {
            "baseline": args.baseline,
            "ops": args.ops,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "intervals": args.intervals,
        },
        (
            f"Microseconds per call, median of {args.rounds} rounds (fresh caches each) of the median "
            f"block of {BLOCK} calls, the two implementations' blocks alternating. digest: median of "
            f"{args.repeats} digest({DIGEST_LIMIT}) calls, each after the other implementation's (cold "
            "CPU caches, as after an engine step); digest_repeat: the same calls back to back. match / "
            f"insert / evict: {args.ops} calls; insert_below: {8 * args.ops} one-page inserts below a "
            "held node, lock moved (chains 2-10 nodes deep). before: radix_cache.py at the baseline "
            "commit (digest sorts every node); after: the recency list (digest reads the newest "
            "nodes). *_added_us: after minus before. interval: one digest interval of decoding at the "
            f"in-process engine's H200 rate ({INTERVAL_PAGES} completed pages over {ROWS} running "
            f"requests, one finishing and one admitted every {PAGES_PER_REQUEST} pages), then the "
            f"digest: its whole time (median of {args.intervals} per round) and the digest's part (the "
            "tree then holds the running requests' new nodes too). model_saved_ms: the interval's "
            f"digest saved less the per-call touches added ({INTERVAL_PAGES} x insert_below_added and "
            f"{INTERVAL_PAGES // PAGES_PER_REQUEST} x insert_added), as whole intervals on a shared 2-core "
            "machine swing by tens of ms with the neighbours' load, the per-call medians much less."
        ),
        results_dir=Path(args.out_dir),
    )
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
