"""Cold run of the compose stack test: where the time goes from an engine with nothing cached.

Removes every image, container, volume and the build cache from the Docker engine (the local base
image included), empties the wheelhouse down to the local torch wheel (this machine's pip cache and
apt cache stay, as on any kept machine), then runs tests/deploy/test_compose_stack.py once and
reads its phases: scripts/container_engine.sh's steps (engine.log), the parallel image build, `up
-d --build` (model-init and starting the stack), every service healthy, and the seven checks. The
machine's load average is sampled every 10 s throughout, since this box is shared and wall times
mean little without it; each set-up phase's CPU seconds (the test's cpu.json: the engine's
containers and build steps, its daemons, compose and the scripts) are the load-independent account
of its work. Then the built images' layers (`docker history`).

usage: nice -n 10 .venv/bin/python bench/compose_cold_build.py [--out-name NAME] [--warm] [--fresh-base]
  --warm  keeps the engine's images and cache (a second run: what a kept machine pays)
  --fresh-base  a cold run that also removes the kept base tarball (container_engine.sh's
          BASE_TARBALL_DIR), so the base image is made by mmdebstrap again
Writes bench/results/NAME.json and NAME.md (default compose_cold_run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import git_commit  # noqa: E402

RESULTS = REPO / "bench" / "results"
WHEELS = REPO / "deploy" / "docker" / "build-inputs" / "wheels"
ENGINE_SCRIPT = REPO / "scripts" / "container_engine.sh"
# container_engine.sh's default place for the base image's tarball, kept between runs.
BASE_TARBALL_DIR = Path(os.environ.get("BASE_TARBALL_DIR", "/var/cache/radixfair"))
TEST = "tests/deploy/test_compose_stack.py"
# The images the test builds (IMAGE_TAG=stack-test), the local base and the build inputs' image.
IMAGES = (
    "radixfair-local/python:3.11-bookworm",
    "radixfair-local/build-inputs",
    "radixfair-router:stack-test",
    "radixfair-worker:stack-test-cpu",
    "radixfair-distiller:stack-test-cpu",
    "radixfair-local/redis:stack-test",
)
LOAD_SAMPLE_S = 10.0


def docker(*args: str, timeout_s: float = 600) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def make_cold(fresh_base: bool) -> None:
    """Nothing in the engine, and a wheelhouse holding only the local torch wheel; with
    ``fresh_base``, no kept base tarball either (container_engine.sh runs mmdebstrap again)."""
    if fresh_base:
        for tarball in BASE_TARBALL_DIR.glob("bookworm-python3-*.tar"):
            tarball.unlink()
    containers = docker("ps", "-aq").split()
    if containers:
        docker("rm", "-f", "-v", *containers)
    docker("system", "prune", "-af", "--volumes")
    docker("builder", "prune", "-af")
    images = docker("image", "ls", "-q").split()
    if images:
        docker("image", "rm", "-f", *images)
    for path in WHEELS.iterdir() if WHEELS.is_dir() else ():
        if not path.name.startswith("torch-"):
            path.unlink()


class LoadSampler:
    """The 1-minute load average every LOAD_SAMPLE_S seconds, on a thread, until stopped."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(LOAD_SAMPLE_S):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        return {
            "min": ordered[0],
            "median": ordered[len(ordered) // 2],
            "max": ordered[-1],
            "samples": len(ordered),
        }


def versions() -> dict[str, str]:
    def first_line(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return "absent"

    return {
        "docker_engine": docker("version", "--format", "{{.Server.Version}}").strip(),
        "docker_compose": first_line("docker-compose", "version", "--short"),
        "mmdebstrap": first_line("mmdebstrap", "--version"),
        "commit": git_commit(),
    }


def layers(image: str) -> list[dict[str, object]]:
    """The image's layers that hold bytes, base first: size in MB and the step that made it."""
    try:
        out = docker("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image)
    except RuntimeError:
        return []
    rows = []
    for line in reversed(out.splitlines()):
        size, _, created_by = line.partition("\t")
        megabytes = size_mb(size)
        if megabytes > 0:
            step = re.sub(r"\s+", " ", created_by.replace("/bin/sh -c ", "")).strip() or "(imported)"
            rows.append({"mb": round(megabytes, 1), "step": step[:160]})
    return rows


def size_mb(size: str) -> float:
    """docker's human size ('865MB', '7.38kB', '0B', '1.2GB') in MB."""
    match = re.fullmatch(r"([\d.]+)\s*([kMG]?B)", size.strip())
    if match is None:
        return 0.0
    return float(match[1]) * {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}[match[2]]


def engine_steps(log: Path) -> dict[str, int]:
    """container_engine.sh's 'step NAME took N s' lines."""
    text = log.read_text() if log.exists() else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"step (\S+) took (\d+) s", text)}


def pytest_counts(output: str) -> dict[str, int]:
    last_line = output.splitlines()[-1] if output else ""
    counts = re.findall(r"(\d+) (passed|failed|error|errors|skipped)", last_line)
    return {kind: int(number) for number, kind in counts}


def run(out_name: str, warm: bool, fresh_base: bool) -> dict[str, object]:
    if not warm:
        subprocess.run(["bash", str(ENGINE_SCRIPT), "engine"], check=True, timeout=600)
        make_cold(fresh_base)
    tested = versions()  # the commit the images are built from, before anyone commits meanwhile
    basetemp = Path(tempfile.mkdtemp(prefix="compose-cold-"))
    command = [
        str(REPO / ".venv" / "bin" / "pytest"),
        "-q",
        "-rA",
        TEST,
        "-p",
        "no:cacheprovider",
        "--timeout=3600",
        "--durations=0",
        "--basetemp",
        str(basetemp),
    ]
    started = time.monotonic()
    with LoadSampler() as load:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=4 * 3600)
    total_s = time.monotonic() - started
    output = result.stdout + result.stderr
    run_dir = next(basetemp.glob("compose-stack*"), basetemp)
    phases_file = run_dir / "phases.json"
    phases = json.loads(phases_file.read_text()) if phases_file.exists() else {}
    cpu_file = run_dir / "cpu.json"
    cpu = json.loads(cpu_file.read_text()) if cpu_file.exists() else {}
    # Raw logs are regenerated, not committed (bench/results/raw/ is git-ignored).
    kept = RESULTS / "raw" / f"{out_name}_logs"
    kept.mkdir(parents=True, exist_ok=True)
    for name in (
        "engine.log",
        "build.log",
        "up.log",
        "phases.json",
        "cpu.json",
        "health.txt",
        "model-init.log",
    ):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, kept / name)
    (kept / "pytest.log").write_text(output[-20000:])
    return {
        "what": f"{TEST}, {'warm' if warm else 'cold'}: where the time goes",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.node()}, shared with other sessions' work",
        "versions": tested,
        "command": f"nice -n {os.nice(0)} .venv/bin/python bench/compose_cold_build.py --out-name {out_name}"
        + (" --warm" if warm else "")
        + (" --fresh-base" if fresh_base else ""),
        "cold": not warm,
        "base_tarball_kept": not warm and not fresh_base,
        "load_average_1min": load.summary(),
        "engine_script_steps_s": engine_steps(run_dir / "engine.log"),
        "phases_s": {name: round(seconds, 1) for name, seconds in phases.items()},
        "phases_cpu_s": cpu,
        "image_layers_mb": {image: layers(image) for image in IMAGES},
        "whole_test_s": round(total_s, 1),
        "tests": pytest_counts(output.strip()),
        "pytest_exit_code": result.returncode,
    }


def markdown(report: dict[str, object]) -> str:
    load = report["load_average_1min"]
    rows = [f"| container_engine.sh step `{k}` | {v} | |" for k, v in report["engine_script_steps_s"].items()]
    cpu = report.get("phases_cpu_s", {})
    rows += [
        f"| {k} | {v} | {sum(cpu[k].values()):.0f} ({', '.join(f'{w} {s:.0f}' for w, s in cpu[k].items())}) |"
        if k in cpu
        else f"| {k} | {v} | |"
        for k, v in report["phases_s"].items()
    ]
    layer_rows = [
        f"| `{image}` | {sum(row['mb'] for row in rows_):.0f} | "
        + "; ".join(f"{row['mb']:.0f} MB `{row['step'][:70]}`" for row in rows_ if row["mb"] >= 1)
        + " |"
        for image, rows_ in report.get("image_layers_mb", {}).items()
        if rows_
    ]
    tests = ", ".join(f"{n} {kind}" for kind, n in report["tests"].items())
    return "\n".join(
        [
            f"# Compose stack test, {'cold' if report['cold'] else 'warm'} run ({report['date']})",
            "",
            f"Machine: {report['machine']}. Load average (1 min) during the run: min {load['min']:.1f}, "
            f"median {load['median']:.1f}, max {load['max']:.1f} ({load['samples']} samples).",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
            f"Command: `{report['command']}`.",
            "",
            "| phase | seconds | CPU seconds (where) |",
            "|---|---:|---|",
            *rows,
            f"| **whole test (set-up, 7 checks, tear-down)** | **{report['whole_test_s']}** | |",
            "",
            "| image | MB | layers of 1 MB or more, base first |",
            "|---|---:|---|",
            *layer_rows,
            "",
            f"Tests: {tests} (pytest exit code {report['pytest_exit_code']}). "
            f"Logs: `bench/results/raw/{report['out_name']}_logs/` (not committed).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-name", default="compose_cold_run")
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--fresh-base", action="store_true")
    args = parser.parse_args()
    report = run(args.out_name, args.warm, args.fresh_base)
    report["out_name"] = args.out_name
    (RESULTS / f"{args.out_name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{args.out_name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
