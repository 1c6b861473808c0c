"""Writes a benchmark's results as JSON plus a short markdown table, with machine, versions and date."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def environment(packages: Sequence[str] = ("torch", "transformers", "triton")) -> dict[str, object]:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "gpu": _gpu_name(),
        },
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": _git_commit(),
    }


def write_results(
    name: str, rows: list[dict[str, object]], columns: list[str], meta: dict[str, object], notes: str = ""
) -> Path:
    """Writes results/<name>.json and results/<name>.md; returns the markdown path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    env = environment()
    (RESULTS_DIR / f"{name}.json").write_text(
        json.dumps({**env, **meta, "rows": rows}, indent=2, default=str)
    )
    lines = [
        f"# {name}",
        "",
        f"{env['date']} · {env['machine']['processor']} ({env['machine']['cpus']} cpus)"
        f" · GPU: {env['machine']['gpu'] or 'none'} · Python {env['python']} · "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        "",
    ]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    if notes:
        lines += ["", notes.strip()]
    path = RESULTS_DIR / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def markdown_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
