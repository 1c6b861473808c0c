"""The probe harness behind bench/engine/router_overhead.py and bench/engine/worker_overhead.py.

Both scripts put timestamp probes around the phases of a service's serving path (in a child process
that runs the service's own code, probes only), send one-stream requests to each target in turn, and
split each probed request's time to first token into consecutive phases. What they share lives here:

- ``Probes``: named ``time.monotonic()`` marks (CLOCK_MONOTONIC: one clock for every process on the
  host, so the client's, the front's and the engine's events line up), and wrappers that mark the start
  and end of a function without changing it;
- ``worker_bench_args``: the serving bench's worker settings both scripts start their worker with;
- ``drive_in_turn``: warm-up then measured requests, one at a time, the targets in turn;
- ``phase_medians``: each request's events cut into consecutive phases, the median of each;
- ``latency`` and ``latency_rows``: TTFT and inter-token figures per target, and what each adds;
- ``write_page``: the JSON and the markdown page (machine, versions, date, exact command);
- ``add_common_args`` and ``run_in_work_dir``: the flags and the scratch directory both take.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shlex
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from bench.engine import serving_bench
from bench.report import RESULTS_DIR, environment, markdown_table, regenerating_command

Events = list[tuple[str, float]]
# (phase, from event, to event), consecutive: the phases add up to the probed target's TTFT.
Phases = Sequence[tuple[str, str, str]]


class Probes:
    """Timestamps of named events, in order; at one stream the requests do not overlap."""

    def __init__(self) -> None:
        self.events: Events = []

    def mark(self, name: str) -> None:
        self.events.append((name, time.monotonic()))

    def around(self, owner: object, attribute: str, name: str) -> None:
        """Marks ``name:start`` / ``name:end`` around an async method or function of ``owner``."""
        original = getattr(owner, attribute)
        mark = self.mark

        @functools.wraps(original)
        async def wrapped(*args: object, **kwargs: object) -> object:
            mark(f"{name}:start")
            try:
                return await original(*args, **kwargs)
            finally:
                mark(f"{name}:end")

        setattr(owner, attribute, wrapped)

    def around_sync(self, owner: object, attribute: str, name: str) -> None:
        """As ``around``, for a plain function or method."""
        original = getattr(owner, attribute)
        mark = self.mark

        @functools.wraps(original)
        def wrapped(*args: object, **kwargs: object) -> object:
            mark(f"{name}:start")
            try:
                return original(*args, **kwargs)
            finally:
                mark(f"{name}:end")

        setattr(owner, attribute, wrapped)

    def write(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.events))


def read_events(*paths: Path) -> Events:
    """The events the probed processes wrote on their way out (none from a file that is missing)."""
    events: Events = []
    for path in paths:
        with contextlib.suppress(OSError):
            events += [(str(name), float(at)) for name, at in json.loads(path.read_text())]
    return events


def worker_bench_args(
    args: argparse.Namespace, concurrency: int = 1, new_tokens: int | None = None
) -> argparse.Namespace:
    """serving_bench's arguments for the worker: its ``--quick`` CPU preset unless ``--serving-args``,
    sized (pages, running and waiting requests) for ``concurrency`` streams of up to ``new_tokens``."""
    return serving_bench.parse_args(
        ["--quick", "--concurrency", str(concurrency), "--prompt-len", str(args.prompt_len),
         "--new-tokens", str(new_tokens or args.new_tokens), "--torch-threads", str(args.torch_threads),
         *shlex.split(args.serving_args)]
    )  # fmt: skip


async def drive_in_turn(
    names: Sequence[str],
    send: Callable[[str, serving_bench.RequestSpec], Awaitable[serving_bench.RequestRecord]],
    args: argparse.Namespace,
    between: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, list[serving_bench.RequestRecord]]:
    """``args.warmup`` then ``args.requests`` requests per target, one at a time, the targets in turn.

    Each request has its own random ``args.prompt_len``-token prompt (seeded), so none hits a prefix
    another cached. A failed request stops the run: a figure over failures would mean nothing.
    """
    records: dict[str, list[serving_bench.RequestRecord]] = {name: [] for name in names}
    rng = np.random.default_rng(0)
    for index in range(args.warmup + args.requests):
        for name in names:
            prompt = rng.integers(1000, 40000, args.prompt_len).tolist()
            record = await send(
                name, serving_bench.RequestSpec(f"{name}-{index}", 0, prompt, args.new_tokens)
            )
            if not record.ok:
                raise RuntimeError(f"{name}: request {record.request_id} failed: {record.error}")
            if index >= args.warmup:
                records[name].append(record)
            if between is not None:
                await between()
    return records


def split_by_request(events: Iterable[tuple[str, float]], first: str = "enter") -> list[Events]:
    """The events of each request, in time order, cut at each ``first`` (requests are sequential)."""
    out: list[Events] = []
    for name, at in sorted(events, key=lambda event: event[1]):
        if name == first:
            out.append([])
        if out:
            out[-1].append((name, at))
    return out


def request_phases(
    phases: Phases, events: Events, known: dict[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """One request's phase lengths (ms), and the time of each event the phases used.

    Phases are consecutive: an event not in ``known`` is the first of its name after the previous
    phase's end (so a booking that ran in the background earlier is not taken for this phase's).
    """
    times = dict(known)
    lengths: dict[str, float] = {}
    cursor = min(times.values(), default=float("-inf"))

    def at_or_after(name: str, earliest: float) -> float | None:
        """The time of ``name``: known, or its first event at or after ``earliest`` (then known)."""
        if name not in times:
            found = next((at for n, at in events if n == name and at >= earliest), None)
            if found is None:
                return None
            times[name] = found
        return times[name]

    for phase, start, end in phases:
        begin = at_or_after(start, cursor)
        if begin is None:
            continue
        stop = at_or_after(end, begin)
        if stop is None:
            continue
        lengths[phase] = 1e3 * (stop - begin)
        cursor = stop
    return lengths, times


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: float(np.median(values)) for name, values in samples.items() if values}


def latency(records: Sequence[serving_bench.RequestRecord]) -> dict[str, float]:
    """TTFT and inter-token figures as the client saw them (ms)."""
    ttft = [1e3 * (r.first - r.start) for r in records if r.first is not None]
    gaps = [1e3 * g for r in records for g in r.token_gaps]
    return {
        "ttft_p50_ms": float(np.median(ttft)),
        "ttft_p90_ms": float(np.percentile(ttft, 90)),
        "ttft_mean_ms": float(np.mean(ttft)),
        "itl_mean_ms": float(np.mean(gaps)),
        "itl_p50_ms": float(np.median(gaps)),
    }


def latency_rows(records: dict[str, list[serving_bench.RequestRecord]], baseline: str) -> list[dict]:
    """One row per target, with what it adds to ``baseline``'s TTFT p50 and mean inter-token time."""
    summary = {name: latency(rs) for name, rs in records.items()}
    base = summary[baseline]
    return [
        {
            "target": name,
            **figures,
            "added_ttft_p50_ms": figures["ttft_p50_ms"] - base["ttft_p50_ms"],
            "added_itl_mean_ms": figures["itl_mean_ms"] - base["itl_mean_ms"],
        }
        for name, figures in summary.items()
    ]


LATENCY_COLUMNS = ["target", "ttft_p50_ms", "ttft_p90_ms", "added_ttft_p50_ms", "itl_mean_ms"] + [
    "added_itl_mean_ms"
]


def phase_table(phases: dict[str, float]) -> str:
    return markdown_table([{"phase": p, "p50_ms": v} for p, v in phases.items()], ["phase", "p50_ms"])


def fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_page(
    name: str,
    args: argparse.Namespace,
    packages: Sequence[str],
    payload: dict,
    sections: Sequence[str],
    notes: str,
) -> Path:
    """Writes ``<args.out_dir>/<name>.{json,md}``: ``payload`` with the command, the environment and
    the config; the page's header, then ``sections`` (markdown) and ``notes``. Returns the md path."""
    env = environment(tuple(packages))
    config = {k: v for k, v in vars(args).items() if k not in ("out_dir",) and not k.startswith("serve_")}
    full = {"command": regenerating_command(), "environment": env, "config": config, **payload}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(full, indent=1) + "\n")
    header = [
        f"# {name}",
        "",
        f"{env['date']} · {env['machine']['processor']} ({env['machine']['cpus']} cpus, load "
        f"{tuple(round(x, 2) for x in env['machine']['load_average'])}) · Python {env['python']} · "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f" · commit {env['git_commit']}",
        "",
        f"`{full['command']}`",
    ]
    md_path = json_path.with_suffix(".md")
    md_path.write_text("\n".join([*header, *(f"\n{s}" for s in sections), "", notes, ""]))
    return md_path


def add_common_args(parser: argparse.ArgumentParser, what: str) -> None:
    """The flags both scripts take; ``what`` names the service ``--serving-args`` configures."""
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--requests", type=int, default=40, help="measured requests per target")
    parser.add_argument("--warmup", type=int, default=5, help="requests per target before measuring")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument(
        "--serving-args",
        default="",
        help=f"serving_bench flags for the {what}, e.g. '--shape smollm2-135m --device cuda "
        "--dtype bfloat16 --backend triton --tokenizer-dir DIR' (default: its --quick CPU preset)",
    )
    parser.add_argument("--logs-dir", default="", help="keep the processes' logs, configs and events here")


def run_in_work_dir(args: argparse.Namespace, prefix: str, body: Callable[[Path], Path]) -> Path:
    """Runs ``body(work)`` in ``--logs-dir`` (kept) or a scratch directory (removed), prints its page."""
    work = Path(args.logs_dir) if args.logs_dir else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        path = body(work)
    finally:
        if not args.logs_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(path.read_text())
    return path
