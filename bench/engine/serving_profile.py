"""Where the serving path's time goes: a sampling profile of the worker front, the engine and the router.

Starts the same stack as ``bench/engine/serving_bench.py`` (its helpers, not a copy: tiny random Llama, a
``python -m radixfair_worker`` process, Redis + a router listing it), warms each path up, then for each
workload (``unique`` short prompts; ``shared_prefix``: one long prefix + a short suffix) and each path
(``worker`` direct, ``router`` in front) drives ``--concurrency`` streams while ``py-spy`` samples the
worker front, its engine process (``--subprocesses``) and the router. py-spy samples only threads that
are running (not idle), so a function's share of a process's samples is its share of that process's CPU.

Reported per process and cell: CPU seconds (from /proc, exact), CPU per request and per streamed message,
the top functions by self and by cumulative samples, and "probes": the cumulative share of the functions
whose cost can scale with the prompt length (pickling across the engine pipe, tokenization/validation,
radix matching, the cache digest, load reports). Also the pickled size of one submit command per
workload, which the front's sender thread writes and the engine's receiver thread unpickles.

    .venv/bin/python bench/engine/serving_profile.py                 # CPU, ~2-4 min on 2 shared cores
    .venv/bin/python bench/engine/serving_profile.py --tag cpu_after # a second run, e.g. after a change

Writes ``bench/results/serving_profile_<tag>.{json,md}`` (aggregates only). Needs ``py-spy`` in the venv
(``pip install py-spy``) and permission to attach to one's own child processes (ptrace).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engine import serving_bench  # noqa: E402
from bench.report import RESULTS_DIR, environment, markdown_table  # noqa: E402

# Substrings of a py-spy frame ("function (file:line)") whose cumulative share is reported per process.
PROBES = {
    "pipe send (pickle + write)": ("Connection.send (", "Connection._send_bytes"),
    "pipe recv (read + unpickle)": ("Connection.recv (", "Connection._recv_bytes"),
    "build_request (tokenize/validate)": ("build_request (",),
    "Engine.submit": ("Engine.submit (",),
    "radix match_prefix": ("match_prefix (",),
    "cache digest": ("digest (",),
    "load report / state": ("_take_state (", "load_report (", "_load_report (", "current_state ("),
    "Engine.step": ("Engine.step (",),
    "front _deliver (batch -> streams)": ("EngineClient._deliver (",),
    "front Generate/_stream (protobuf out)": ("WorkerServicer._stream (",),
    "grpc aio machinery": ("grpc/_cython", "_cygrpc"),
    "protobuf": ("google/protobuf",),
}
TOP_N = 15


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream per profiled cell")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--prefix-len", type=int, default=1024)
    parser.add_argument("--suffix-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--paths", nargs="+", choices=("worker", "router"), default=["worker", "router"])
    parser.add_argument(
        "--workloads", nargs="+", choices=serving_bench.WORKLOADS, default=list(serving_bench.WORKLOADS)
    )
    parser.add_argument(
        "--rate", type=int, default=97, help="py-spy samples per second; 0: CPU seconds per process only"
    )
    parser.add_argument(
        "--client-procs", type=int, default=1, help="client processes (their CPU is counted once they exit)"
    )
    parser.add_argument("--torch-threads", type=int, default=1)
    # The GPU run (bench/engine/gpu_serving_session.sh, PROFILE=1): the serving bench's model settings.
    parser.add_argument("--shape", default="tiny", help="random-weight shape (serving_bench SHAPES)")
    parser.add_argument("--tokenizer-dir", default="")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--py-spy", default="", help="the py-spy binary (default: next to this Python)")
    return parser.parse_args(argv)


def bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """The serving bench's own arguments for the same shapes (its model, settings and prompts)."""
    return serving_bench.parse_args(
        [
            "--shape", args.shape,
            *(["--tokenizer-dir", args.tokenizer_dir] if args.tokenizer_dir else []),
            "--device", args.device,
            "--dtype", args.dtype,
            "--backend", args.backend,
            "--paths", *args.paths,
            "--workloads", *args.workloads,
            "--concurrency", str(args.concurrency),
            "--prompt-len", str(args.prompt_len),
            "--prefix-len", str(args.prefix_len),
            "--suffix-len", str(args.suffix_len),
            "--new-tokens", str(args.new_tokens),
            "--min-requests", str(args.concurrency * args.rounds),
            "--warmup-requests", "4",
            "--torch-threads", str(args.torch_threads),
            "--client-procs", str(args.client_procs),
        ]
    )  # fmt: skip


# ---- processes ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _cpu_seconds(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_and_waited_children_cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def find_processes() -> dict[str, int]:
    """The worker front, its engine process and the router among this script's descendants."""
    found: dict[str, int] = {}
    for pid in _children(os.getpid()):
        command = _cmdline(pid)
        if "radixfair_worker" in command:
            found["front"] = pid
            for child in _children(pid):
                if "multiprocessing-fork" in _cmdline(child):
                    found["engine"] = child
        elif "radixfair_router" in command:
            found["router"] = pid
    return found


# ---- py-spy output -----------------------------------------------------------------------------


def _frame_key(frame: str) -> str:
    """``func (…/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``: one row per function."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def aggregate(raw: Path, roles: dict[int, str], attached: str) -> dict[str, dict[str, object]]:
    """Per role: total samples, self and cumulative samples per function, and the probes' samples.

    py-spy names the process in a stack only with ``--subprocesses``; other stacks are ``attached``'s.
    """
    stats: dict[str, dict[str, Counter]] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        role = roles.get(int(processes[-1].split()[1].split(":")[0])) if processes else attached
        if role is None:
            continue
        code = [f for f in frames if not f.startswith(("process ", "thread "))]
        entry = stats.setdefault(
            role, {"total": Counter(), "self": Counter(), "cum": Counter(), "probe": Counter()}
        )
        entry["total"]["samples"] += count
        if code:
            entry["self"][_frame_key(code[-1])] += count
        for key in {_frame_key(f) for f in code}:
            entry["cum"][key] += count
        for probe, needles in PROBES.items():
            if any(n in f for f in code for n in needles):
                entry["probe"][probe] += count
    return {
        role: {
            "samples": s["total"]["samples"],
            "self": s["self"].most_common(TOP_N),
            "cumulative": s["cum"].most_common(TOP_N),
            "probes": dict(s["probe"]),
        }
        for role, s in stats.items()
    }


class Sampler:
    """py-spy attached to the worker front (with its engine subprocess) and the router, for one cell."""

    def __init__(self, processes: dict[str, int], out_dir: Path, name: str, rate: int, spy: str = "") -> None:
        self.processes = processes
        self._spies: list[tuple[subprocess.Popen[bytes], Path, str]] = []
        spy = spy or str(Path(sys.executable).with_name("py-spy"))
        for role, subprocesses in (("front", True), ("router", False)):
            if role not in processes or rate == 0:
                continue
            out = out_dir / f"{name}-{role}.txt"
            command = [spy, "record", "--pid", str(processes[role]), "-r", str(rate), "--format", "raw"]
            command += ["-o", str(out), "--nonblocking"] + (["--subprocesses"] if subprocesses else [])
            spy_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self._spies.append((spy_process, out, role))
        if self._spies:
            time.sleep(1.0)  # py-spy attaches before the cell starts
        self._cpu_start = {role: _cpu_seconds(pid) for role, pid in processes.items()}

    def stop(self) -> tuple[dict[str, float], list[tuple[Path, str]]]:
        cpu = {role: _cpu_seconds(pid) - self._cpu_start[role] for role, pid in self.processes.items()}
        for process, _, _ in self._spies:
            process.send_signal(signal.SIGINT)
        for process, out, _ in self._spies:
            _, err = process.communicate(timeout=60)
            if not out.exists():
                raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
        return cpu, [(out, role) for _, out, role in self._spies]


# ---- cells -------------------------------------------------------------------------------------


def submit_pickle_bytes(workload: str, bargs: argparse.Namespace) -> int:
    """Bytes of one pickled submit command (a list of one), as the front's sender writes it."""
    from radixfair_engine.request import Request, SamplingConfig
    from radixfair_worker.engine_protocol import SubmitRequest

    spec = serving_bench.cell_requests(bargs, workload, 1, 7)[0]
    request = Request("r0", "tenant-0", list(spec.prompt), SamplingConfig(max_tokens=spec.max_tokens))
    return len(pickle.dumps([SubmitRequest(request)], protocol=pickle.HIGHEST_PROTOCOL))


async def profile_cell(
    args: argparse.Namespace,
    bargs: argparse.Namespace,
    paths: serving_bench.Paths,
    path: str,
    workload: str,
    spy_dir: Path,
) -> dict[str, object]:
    target = paths.worker if path == "worker" else paths.router
    assert target is not None
    specs = serving_bench.cell_requests(
        bargs, workload, args.concurrency, serving_bench.cell_seed(path, workload, 7)
    )
    processes = find_processes()
    sampler = Sampler(processes, spy_dir, f"{path}-{workload}", args.rate, args.py_spy)
    client_cpu = _own_and_waited_children_cpu()
    records = await serving_bench.run_cell_grpc(target, specs, args.client_procs)
    # The clients' CPU (this process and the client processes, which have exited and been waited for by
    # now; the py-spy processes have not): near wall_s x client_procs means the clients set the pace.
    client_cpu = _own_and_waited_children_cpu() - client_cpu
    cpu, outs = sampler.stop()
    summary = serving_bench.summarize(records)
    roles = {pid: role for role, pid in processes.items()}
    profiles: dict[str, dict[str, object]] = {}
    for out, attached in outs:
        profiles.update(aggregate(out, roles, attached))
    messages = sum(len(r.message_gaps) + (1 if r.first is not None else 0) for r in records)
    completed = int(summary["completed"])  # type: ignore[arg-type]
    per_process = {}
    for role in ("front", "engine", "router"):
        if role not in cpu:
            continue
        profile = profiles.get(role, {"samples": 0, "self": [], "cumulative": [], "probes": {}})
        samples = int(profile["samples"]) or 1  # type: ignore[arg-type]
        per_process[role] = {
            "cpu_s": cpu[role],
            "cpu_ms_per_request": 1e3 * cpu[role] / max(1, completed),
            "cpu_us_per_message": 1e6 * cpu[role] / max(1, messages),
            **profile,
            "probe_share": {k: v / samples for k, v in profile["probes"].items()},  # type: ignore[union-attr]
            "probe_cpu_ms_per_request": {
                k: 1e3 * cpu[role] * v / samples / max(1, completed)
                for k, v in profile["probes"].items()  # type: ignore[union-attr]
            },
        }
    return {
        "path": path,
        "workload": workload,
        "concurrency": args.concurrency,
        "requests": len(records),
        "completed": completed,
        "messages": messages,
        "out_tok_s": summary["out_tok_s"],
        "wall_s": summary["wall_s"],
        "ttft_p50_ms": summary["ttft_p50_ms"],
        "client_cpu_s": client_cpu,
        "submit_pickle_bytes": submit_pickle_bytes(workload, bargs),
        "processes": per_process,
    }


async def run(
    args: argparse.Namespace,
    bargs: argparse.Namespace,
    paths: serving_bench.Paths,
    spy_dir: Path,
    meta: dict[str, object],
):
    for workload in args.workloads:
        for path in args.paths:
            await serving_bench.run_cell(bargs, paths, path, workload, bargs.warmup_requests, None)
    cells = []
    for workload in args.workloads:
        for path in args.paths:
            cells.append(await profile_cell(args, bargs, paths, path, workload, spy_dir))
            print(json.dumps({k: cells[-1][k] for k in ("path", "workload", "out_tok_s")}), file=sys.stderr)
            write_report(args, cells, meta)  # a run cut short still leaves what it measured
    return cells


# ---- report ------------------------------------------------------------------------------------


def write_report(args: argparse.Namespace, cells: list[dict[str, object]], meta: dict[str, object]) -> Path:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(("torch", "grpcio", "protobuf", "py-spy"))
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    name = f"serving_profile_{args.tag}"
    (out_dir / f"{name}.json").write_text(
        json.dumps({**env, "command": command, **meta, "cells": cells}, indent=2)
    )
    machine = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)  # type: ignore[union-attr]
    summary_rows, probe_rows = [], []
    for cell in cells:
        summary_rows.append(
            {
                "path": cell["path"],
                "workload": cell["workload"],
                "out_tok_s": cell["out_tok_s"],
                "process": f"clients ({args.client_procs} proc)",
                "cpu_s": cell["client_cpu_s"],
                "cpu_ms_per_request": 1e3 * float(cell["client_cpu_s"]) / max(1, int(cell["completed"])),  # type: ignore[arg-type]
                "cpu_us_per_message": 1e6 * float(cell["client_cpu_s"]) / max(1, int(cell["messages"])),  # type: ignore[arg-type]
                "samples": "",
            }
        )
        for role, p in cell["processes"].items():  # type: ignore[union-attr]
            summary_rows.append(
                {
                    "path": cell["path"],
                    "workload": cell["workload"],
                    "out_tok_s": cell["out_tok_s"],
                    "process": role,
                    "cpu_s": p["cpu_s"],
                    "cpu_ms_per_request": p["cpu_ms_per_request"],
                    "cpu_us_per_message": p["cpu_us_per_message"],
                    "samples": p["samples"],
                }
            )
            for probe, share in sorted(p["probe_share"].items(), key=lambda kv: -kv[1]):
                probe_rows.append(
                    {
                        "path": cell["path"],
                        "workload": cell["workload"],
                        "process": role,
                        "probe": probe,
                        "share": share,
                        "cpu_ms_per_request": p["probe_cpu_ms_per_request"][probe],
                    }
                )
    lines = [
        f"# {name}",
        "",
        f"{env['date']} · {machine['processor']} ({machine['cpus']} cpus, load {machine['load_average']})"  # type: ignore[index]
        f" · Python {env['python']} · {versions} · commit {env['git_commit']}",
        "",
        f"`{command}`",
        "",
        str(meta["notes"]),
        "",
        "## CPU per process",
        "",
        markdown_table(summary_rows, list(summary_rows[0]) if summary_rows else []),
        "",
        "Pickled submit command, bytes: "
        + ", ".join(
            f"{c['workload']} {c['submit_pickle_bytes']}" for c in cells if c["path"] == args.paths[0]
        ),
        "",
        "## Probes: cumulative share of the process's samples, and CPU ms per request",
        "",
        markdown_table(probe_rows, ["path", "workload", "process", "probe", "share", "cpu_ms_per_request"]),
    ]
    for cell in cells:
        for role, p in cell["processes"].items():  # type: ignore[union-attr]
            samples = max(1, int(p["samples"]))
            lines += [
                "",
                f"## {cell['path']} / {cell['workload']} / {role}: top functions ({p['samples']} samples)",
                "",
            ]
            rows = [
                {"self_share": s / samples, "self": f, "cum_share": c / samples, "cumulative": g}
                for (f, s), (g, c) in zip(p["self"], p["cumulative"], strict=False)
            ]
            lines.append(markdown_table(rows, ["self_share", "self", "cum_share", "cumulative"]))
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def notes(args: argparse.Namespace) -> str:
    return (
        f"Random weights of serving_bench's `{args.shape}` shape, {args.device}/{args.dtype}/{args.backend}, "
        f"torch_threads {args.torch_threads}, {args.client_procs} client process(es). wall_s per cell is "
        "in the JSON; the clients' CPU (their processes' start-up included) near wall_s x processes "
        "means the clients set the pace. "
        f"{args.concurrency} concurrent streams, {args.rounds} request(s) each, "
        f"{args.new_tokens} new tokens, ignore_eos. unique = {args.prompt_len}-token prompts; "
        f"shared_prefix = one {args.prefix_len}-token prefix + {args.suffix_len} unique tokens. "
        f"py-spy {args.rate} Hz on running threads only; "
        "front = the worker's gRPC process, engine = its engine process, router = the router process "
        "(idle in worker-path cells). cpu_s from /proc (user+sys) over the cell; per-message = per "
        "streamed message the clients received. Shares are of the process's own samples, so shares of one "
        "process add up across rows only for self time."
    )


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    bargs = bench_args(args)
    work_dir = Path(tempfile.mkdtemp(prefix="radixfair-profile-"))
    try:
        model_dir = serving_bench.prepare_model(bargs, work_dir)
        settings = serving_bench.worker_settings(bargs, model_dir)
        meta = {
            "config": vars(args),
            "worker_settings": {k: v for k, v in settings.items() if k != "model"},
            "notes": notes(args),
        }
        with serving_bench.started_paths(bargs, settings, work_dir / "logs") as paths:
            cells = asyncio.run(run(args, bargs, paths, work_dir, meta))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    path = write_report(args, cells, meta)
    print(path.read_text())
    return path


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGTERM, serving_bench._exit_on_sigterm)
    main()
