"""Every evaluation page states the command that wrote it, and that command reproduces the page.

The committed pages under bench/results/ took minutes to hours of simulation; here each simulator
script runs its page's own command with the scale arguments shrunk, twice, into two fresh
directories (traces generated afresh each time), and the two pages must agree on every number but
the wall time. The first run's page must also state exactly the command that was run.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from bench.eval import (
    eval_dlpm_admission_cost,
    eval_mixtures,
    eval_mixtures_tail,
    eval_multi_worker,
    eval_quantum_sweep,
    eval_returning_client,
    eval_single_worker,
)
from bench.eval.eval_runs import output_dir, saved_trace, trace_key
from bench.report import RAW_DIR, RESULTS_DIR
from bench.workloads import build_pattern

REPO = Path(__file__).resolve().parents[2]
# Simulator scripts: deterministic, so a page's command run twice gives the same numbers.
SCRIPTS = {
    "bench/eval/eval_single_worker.py": eval_single_worker,
    "bench/eval/eval_multi_worker.py": eval_multi_worker,
    "bench/eval/eval_quantum_sweep.py": eval_quantum_sweep,
    "bench/eval/eval_mixtures.py": eval_mixtures,
    "bench/eval/eval_returning_client.py": eval_returning_client,
}
# Scripts whose pages' commands are only parsed here: they time things, or (the tail diagnostic) refuse
# the fixed seed the small run uses.
PARSED_ONLY = {
    "bench/eval/eval_dlpm_admission_cost.py": eval_dlpm_admission_cost,
    "bench/eval/eval_mixtures_tail.py": eval_mixtures_tail,
}
COMMAND = re.compile(r"^Regenerate \(code at commit [^)]*\): `(?P<command>[^`]+)`$", re.M)
# Scale arguments replaced for the small run; everything else is the page's own.
SMALL = {
    "--patterns": ["shared_prefix_unequal"],
    "--policies": None,  # per script, below
    "--requests": ["30"],
    "--workers": ["4"],  # a heavy client offers 2 workers' capacity: the cluster needs more than that
    "--requests-per-worker": ["8"],
    "--clients-per-worker": ["2"],
    "--quanta": ["1024", "65536"],
    "--seeds": ["1101"],
}
SMALL_POLICIES = {
    "bench/eval/eval_single_worker.py": ["vtc", "dlpm"],
    "bench/eval/eval_multi_worker.py": ["cache_aware", "global_vtc", "d2lpm"],
    "bench/eval/eval_mixtures.py": ["cache_aware", "d2lpm"],
    "bench/eval/eval_returning_client.py": ["vtc", "dlpm"],
}


def page_commands() -> dict[str, str]:
    """Each committed eval page's stated command, by page name."""
    commands = {}
    for page in sorted(RESULTS_DIR.glob("eval_*.md")):
        found = COMMAND.search(page.read_text())
        if found:
            commands[page.stem] = found["command"]
    return commands


def test_every_evaluation_page_states_its_regenerating_command():
    pages = {p.stem for p in RESULTS_DIR.glob("eval_*.md")}
    assert pages and pages == set(page_commands())


PARSERS = {**SCRIPTS, **PARSED_ONLY}


@pytest.mark.parametrize("page", [p for p, c in page_commands().items() if shlex.split(c)[1] in PARSERS])
def test_a_pages_command_is_one_its_script_accepts(page):
    argv = shlex.split(page_commands()[page])
    PARSERS[argv[1]].build_parser().parse_args(argv[2:])


def shrink(argv: list[str]) -> list[str]:
    script, args = argv[1], argv[2:]
    out, i = [], 0
    while i < len(args):
        flag = args[i]
        j = i + 1
        while j < len(args) and not args[j].startswith("--"):
            j += 1
        values = args[i + 1 : j]
        if flag == "--policies":
            values = SMALL_POLICIES[script]
        elif flag in SMALL and not (flag == "--patterns" and script != "bench/eval/eval_single_worker.py"):
            values = SMALL[flag]
        out += [flag, *values]
        i = j
    # A scale argument the page left at its default is shrunk too.
    accepted = {f for a in SCRIPTS[script].build_parser()._actions for f in a.option_strings}
    for flag in ("--requests", "--workers", "--requests-per-worker", "--clients-per-worker", "--seeds"):
        if flag in accepted and flag not in out:
            out += [flag, *SMALL[flag]]
    if script in SMALL_POLICIES and "--policies" not in out:
        out += ["--policies", *SMALL_POLICIES[script]]
    return [argv[0], script, *out]


def run_command(argv: list[str], out: Path, monkeypatch) -> tuple[str, list[dict]]:
    """Runs the script's main() in process on ``argv`` + ``--out``; returns the page's command and rows."""
    full = [*argv, "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [str(REPO / full[1]), *full[2:]])
    SCRIPTS[full[1]].main()
    (page,) = out.glob("*.md")
    rows = json.loads(page.with_suffix(".json").read_text())["rows"]
    return COMMAND.search(page.read_text())["command"], rows


def first_page_of(script: str) -> str:
    return next(c for c in page_commands().values() if shlex.split(c)[1] == script)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_pages_command_at_small_scale_reproduces_its_own_numbers(script, tmp_path, monkeypatch):
    argv = shrink(shlex.split(first_page_of(script)))
    stated, first = run_command(argv, tmp_path / "a", monkeypatch)
    assert shlex.split(stated) == [*argv, "--out", str(tmp_path / "a")]
    _, second = run_command(argv, tmp_path / "b", monkeypatch)
    assert first and len(first) == len(second)
    for a, b in zip(first, second):
        a.pop("sim_wall_s", None)
        b.pop("sim_wall_s", None)
        assert a == b


def test_a_trace_is_keyed_by_every_parameter_that_shapes_it(tmp_path):
    spec = build_pattern("shared_prefix", {"num_clients": 2, "duration_s": 1.0, "rate": 4.0})
    other_rate = build_pattern("shared_prefix", {"num_clients": 2, "duration_s": 1.0, "rate": 5.0})
    assert trace_key(spec, 1) != trace_key(other_rate, 1)
    assert trace_key(spec, 1) != trace_key(spec, 2)
    _, path = saved_trace("t", spec, 1, tmp_path)
    _, again = saved_trace("t", other_rate, 1, tmp_path)
    assert path != again and len(list(tmp_path.iterdir())) == 2


def test_a_partial_run_never_writes_to_the_tracked_results():
    assert output_dir(None, complete=False) == RAW_DIR / "partial"
    assert output_dir(None, complete=True) == RESULTS_DIR


def test_mixtures_in_several_processes_give_the_rows_of_one(tmp_path, monkeypatch):
    argv = shrink(shlex.split(first_page_of("bench/eval/eval_mixtures.py")))
    _, serial = run_command([*argv, "--jobs", "1"], tmp_path / "serial", monkeypatch)
    _, parallel = run_command([*argv, "--jobs", "2"], tmp_path / "parallel", monkeypatch)
    assert serial == parallel and serial
