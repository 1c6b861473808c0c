"""The Dockerfiles: hadolint-clean, multi-stage, non-root, pinned, health-checked, and installing
through the very script the README set-up runs (scripts/install_service.sh)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_support import REPO

DOCKER_DIR = REPO / "deploy" / "docker"
SERVICES = ("router", "worker", "distiller")


@dataclass(frozen=True)
class Stage:
    base: str
    name: str
    instructions: tuple[tuple[str, str], ...]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 else "", ()))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif stages:
            last = stages[-1]
            stages[-1] = Stage(last.base, last.name, (*last.instructions, (keyword, rest)))
    return args, stages


def dockerfile(service: str) -> Path:
    return DOCKER_DIR / f"{service}.Dockerfile"


def test_every_dockerfile_passes_hadolint() -> None:
    files = sorted(DOCKER_DIR.glob("*.Dockerfile"))
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--format", "json", *map(str, files)], capture_output=True, text=True
    )

    assert [f.name for f in files] == [f"{s}.Dockerfile" for s in sorted(SERVICES)]
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    hadolint = Path(sys.executable).with_name("hadolint")

    result = subprocess.run([str(hadolint), "--format", "json", str(bad)], capture_output=True, text=True)

    assert {finding["code"] for finding in json.loads(result.stdout)} >= {"DL3007"}


@pytest.mark.parametrize("service", SERVICES)
def test_image_is_multi_stage_on_a_pinned_base(service: str) -> None:
    args, stages = parse_dockerfile(dockerfile(service))
    base = args["PYTHON_IMAGE"]

    assert len(stages) >= 2
    assert all(stage.base == "${PYTHON_IMAGE}" for stage in stages)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    # The final image copies the built virtualenv only; build tools and sources stay behind.
    final = stages[-1]
    copies = [rest for keyword, rest in final.instructions if keyword == "COPY"]
    assert any(rest.startswith(f"--from={stages[0].name} /opt/venv") for rest in copies)
    assert not any(re.search(r"\b(common|services|protos)/", rest) for rest in copies)


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_runs_as_a_numeric_non_root_user(service: str) -> None:
    _, stages = parse_dockerfile(dockerfile(service))
    users = [rest for keyword, rest in stages[-1].instructions if keyword == "USER"]

    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


@pytest.mark.parametrize(("service", "port"), [("router", 50051), ("worker", 50061), ("distiller", 50071)])
def test_image_health_checks_grpc_health_on_its_port(service: str, port: int) -> None:
    _, stages = parse_dockerfile(dockerfile(service))
    healthcheck = next(rest for keyword, rest in stages[-1].instructions if keyword == "HEALTHCHECK")
    exposed = next(rest for keyword, rest in stages[-1].instructions if keyword == "EXPOSE").split()

    assert f'"/opt/radixfair/grpc_health_check.py", "127.0.0.1:{port}"' in healthcheck
    assert str(port) in exposed


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_is_the_services_console_script(service: str) -> None:
    _, stages = parse_dockerfile(dockerfile(service))
    entrypoint = json.loads(
        next(rest for keyword, rest in stages[-1].instructions if keyword == "ENTRYPOINT")
    )
    command = json.loads(next(rest for keyword, rest in stages[-1].instructions if keyword == "CMD"))
    scripts = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())["project"][
        "scripts"
    ]

    assert entrypoint == [f"radixfair-{service}"]
    assert f"radixfair-{service}" in scripts
    assert command == ["--config", f"/etc/radixfair/{service}.yaml"]


@pytest.mark.parametrize("service", SERVICES)
def test_install_step_is_the_setup_scripts_command_for_that_service(service: str) -> None:
    _, stages = parse_dockerfile(dockerfile(service))
    runs = [rest for keyword, rest in stages[0].instructions if keyword == "RUN"]

    # The last step installs the service; an earlier one may install torch alone (a layer that a
    # source change does not invalidate), through the same script.
    assert re.search(rf"PYTHON=/opt/venv/bin/python .*bash scripts/install_service\.sh {service}$", runs[-1])
    for run in runs[:-1]:
        assert re.search(r"PYTHON=/opt/venv/bin/python .*bash scripts/install_service\.sh torch$", run), run
    setup = (REPO / "scripts" / "setup_env.sh").read_text()
    assert "bash scripts/install_service.sh --editable dev" in setup
    install = (REPO / "scripts" / "install_service.sh").read_text()
    dev = install[install.index("install_dev() {") :]
    dev = dev[: dev.index("\n}")]
    # dev installs every service: through the very function the image runs, or one that calls it.
    assert f"install_{service}" in dev or service == "worker" and "install_distiller" in dev


def test_router_image_copies_and_installs_nothing_with_torch() -> None:
    _, stages = parse_dockerfile(dockerfile("router"))
    sources = " ".join(
        rest for stage in stages for keyword, rest in stage.instructions if keyword in ("COPY", "RUN")
    )

    assert "services/worker" not in sources and "services/distiller" not in sources
    instructions = [
        line for line in dockerfile("router").read_text().splitlines() if not line.startswith("#")
    ]
    assert "torch" not in "\n".join(instructions).lower()


def test_worker_image_builds_a_cpu_and_a_cuda_variant() -> None:
    _, stages = parse_dockerfile(dockerfile("worker"))
    build_args = [rest for keyword, rest in stages[0].instructions if keyword == "ARG"]

    assert "TORCH_VARIANT=cpu" in build_args
    assert 'TORCH_VARIANT="${TORCH_VARIANT}"' in stages[0].instructions[-1][1]
    install = (REPO / "scripts" / "install_service.sh").read_text()
    assert re.search(r'cuda\) extras="convert,gpu"', install)


def test_distiller_image_is_the_worker_image_plus_the_distiller() -> None:
    worker_args, worker = parse_dockerfile(dockerfile("worker"))
    distiller_args, distiller = parse_dockerfile(dockerfile("distiller"))

    def normalized(stage: Stage, service: str) -> list[tuple[str, str]]:
        return [
            (k, r.replace(f"install_service.sh {service}", "install_service.sh SERVICE"))
            for k, r in stage.instructions
            if not (k == "COPY" and r.startswith("services/distiller/"))
            and k not in ("EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD")
            and not (k == "RUN" and "mkdir -p" in r)
        ]

    assert distiller_args == worker_args
    assert normalized(distiller[0], "distiller") == normalized(worker[0], "worker")
    assert normalized(distiller[1], "distiller") == normalized(worker[1], "worker")


def _dockerignore_includes(patterns: list[str], path: str) -> bool:
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(path, glob.replace("/**", "/*")):
            included = negate
    return included


@pytest.mark.parametrize("service", SERVICES)
def test_build_context_holds_what_the_dockerfile_copies_and_not_the_venv(service: str) -> None:
    ignore = (DOCKER_DIR / f"{service}.Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    _, stages = parse_dockerfile(dockerfile(service))
    sources = [
        source.rstrip("/")
        for stage in stages
        for keyword, rest in stage.instructions
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]

    for source in sources:
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        for file in files[:50]:
            relative = str(file.relative_to(REPO))
            if "egg-info" in relative or relative.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            assert _dockerignore_includes(patterns, relative), relative
    for excluded in (
        ".venv/bin/python",
        ".git/HEAD",
        "common/src/radixfair/v1/worker_pb2.py",
        "models/x.safetensors",
    ):
        assert not _dockerignore_includes(patterns, excluded), excluded
