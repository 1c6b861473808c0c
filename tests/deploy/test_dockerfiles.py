"""The images' Dockerfile (deploy/docker/radixfair.Dockerfile, one target per service): hadolint-clean,
pinned, non-root, health-checked, its dependency layers built once and shared, radixfair's own
packages built into wheels once, and each image installing what scripts/install_service.sh (the
README set-up's script) installs for its service."""

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
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKER_DIR = REPO / "deploy" / "docker"
DOCKERFILE = DOCKER_DIR / "radixfair.Dockerfile"
REQUIREMENTS = DOCKER_DIR / "third_party_requirements.py"
INSTALL_SCRIPT = REPO / "scripts" / "install_service.sh"
SERVICES = ("router", "worker", "distiller")
# Only this stage sees radixfair's sources (it builds them into wheels); the rest see the manifests.
SOURCE_STAGES = {"radixfair-wheels"}
DEPENDENCY_STAGES = ("common-deps", "router-deps", "engine-deps", "worker-deps", "distiller-deps")


@dataclass(frozen=True)
class Stage:
    base: str
    name: str
    instructions: tuple[tuple[str, str], ...]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name) with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    last = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            last = parts[2] if len(parts) > 2 else f"stage{len(stages)}"
            stages[last] = Stage(parts[0], last, ())
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif stages:
            stage = stages[last]
            stages[last] = Stage(stage.base, stage.name, (*stage.instructions, (keyword, rest)))
    return args, stages


ARGS, STAGES = parse_dockerfile(DOCKERFILE)


def chain(target: str) -> list[Stage]:
    """The stages a target builds on, base first, ending with the target."""
    stages = [STAGES[target]]
    while stages[0].base in STAGES:
        stages.insert(0, STAGES[stages[0].base])
    return stages


def instructions(target: str, keyword: str) -> list[str]:
    """``keyword``'s arguments across a target's whole chain, in order."""
    return [rest for stage in chain(target) for k, rest in stage.instructions if k == keyword]


def test_the_dockerfiles_pass_hadolint() -> None:
    files = [DOCKERFILE, REPO / "deploy" / "local" / "standins.Dockerfile"]
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--format", "json", *map(str, files)], capture_output=True, text=True
    )

    assert sorted(p.name for p in DOCKER_DIR.glob("*.Dockerfile")) == ["radixfair.Dockerfile"]
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    hadolint = Path(sys.executable).with_name("hadolint")

    result = subprocess.run([str(hadolint), "--format", "json", str(bad)], capture_output=True, text=True)

    assert {finding["code"] for finding in json.loads(result.stdout)} >= {"DL3007"}


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_builds_on_the_pinned_base_through_the_shared_runtime(service: str) -> None:
    stages = chain(service)

    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", ARGS["PYTHON_IMAGE"])
    assert stages[0].base == "${PYTHON_IMAGE}" and stages[0].name == "runtime"
    assert all(stage.base in STAGES for stage in stages[1:])


def test_every_stage_builds_on_the_base_scratch_or_an_earlier_stage() -> None:
    names = list(STAGES)
    for index, stage in enumerate(STAGES.values()):
        # A build argument naming the base resolves, by default, to an earlier stage.
        base = (
            ARGS.get(stage.base.strip("${}"), stage.base) if stage.base != "${PYTHON_IMAGE}" else stage.base
        )
        assert base in ("${PYTHON_IMAGE}", "scratch") or base in names[:index], stage.name


def test_the_build_inputs_come_from_the_context_unless_an_image_is_named() -> None:
    copied = [rest for k, rest in STAGES["build-inputs-context"].instructions if k == "COPY"]

    assert STAGES["build-inputs"].base == "${BUILD_INPUTS}"
    assert ARGS["BUILD_INPUTS"] == "build-inputs-context"
    assert copied == ["deploy/docker/build-inputs/ /build-inputs/"]
    # Every install that reads them mounts that stage: none mounts the context's copy directly.
    runs = [rest for stage in STAGES.values() for k, rest in stage.instructions if k == "RUN"]
    assert not any("source=deploy/docker/build-inputs" in run for run in runs)
    assert all(
        "from=build-inputs,source=/build-inputs,target=/build-inputs" in run
        for run in runs
        if "/build-inputs/apply.sh" in run
    )


@pytest.mark.parametrize("service", SERVICES)
def test_no_layer_holds_radixfairs_sources_or_a_copied_venv(service: str) -> None:
    copies = instructions(service, "COPY")

    assert not any(rest.startswith("--from") for rest in copies)
    sources = r"\b(common|services|protos|model_format|engine)/"
    assert not any(re.search(sources, rest) for rest in copies), copies
    # Only the wheel-building stage mounts the sources, for the build alone.
    for stage in STAGES.values():
        for keyword, rest in stage.instructions:
            if keyword == "RUN" and "source=.," in rest:
                assert stage.name in SOURCE_STAGES, stage.name


def test_the_manifests_stage_holds_only_what_the_dependency_layers_read() -> None:
    copied = [rest.split()[0] for k, rest in STAGES["manifests"].instructions if k == "COPY"]

    assert STAGES["manifests"].base == "scratch"
    assert sorted(copied) == sorted(
        [
            "constraints.txt",
            "scripts/install_service.sh",
            "deploy/docker/third_party_requirements.py",
            "common/pyproject.toml",
            "model_format/pyproject.toml",
            "engine/pyproject.toml",
            *(f"services/{s}/pyproject.toml" for s in SERVICES),
        ]
    )


@pytest.mark.parametrize("stage", DEPENDENCY_STAGES)
def test_dependency_layers_never_see_the_sources(stage: str) -> None:
    runs = [rest for k, rest in STAGES[stage].instructions if k == "RUN"]

    assert runs
    for run in runs:
        assert "from=manifests" in run and "source=.," not in run


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_runs_as_a_numeric_non_root_user(service: str) -> None:
    users = instructions(service, "USER")

    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


@pytest.mark.parametrize(("service", "port"), [("router", 50051), ("worker", 50061), ("distiller", 50071)])
def test_image_health_checks_grpc_health_on_its_port(service: str, port: int) -> None:
    healthcheck = instructions(service, "HEALTHCHECK")[-1]
    exposed = instructions(service, "EXPOSE")[-1].split()

    assert f'"/opt/radixfair/grpc_health_check.py", "127.0.0.1:{port}"' in healthcheck
    assert str(port) in exposed


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_is_the_services_console_script(service: str) -> None:
    entrypoint = json.loads(instructions(service, "ENTRYPOINT")[-1])
    command = json.loads(instructions(service, "CMD")[-1])
    scripts = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())["project"][
        "scripts"
    ]

    assert entrypoint == [f"radixfair-{service}"]
    assert f"radixfair-{service}" in scripts
    assert command == ["--config", f"/etc/radixfair/{service}.yaml"]


@pytest.mark.parametrize("service", SERVICES)
def test_the_service_installs_radixfairs_own_wheels_by_name_with_no_index(service: str) -> None:
    runs = [rest for k, rest in STAGES[service].instructions if k == "RUN"]

    # The target's one install step: the packages third_party_requirements.py names for the
    # service, from the wheels built once, offline (their dependencies are in the layers below).
    assert len(runs) == 1
    assert "from=radixfair-wheels,source=/radixfair-wheels" in runs[0]
    assert re.search(
        rf"third_party_requirements\.py --print own (--variant \S+ )?{service}\s+>/tmp/own.txt", runs[0]
    )
    assert "pip install -q --no-cache-dir --no-index --find-links /radixfair-wheels" in runs[0]
    assert "source=.," not in runs[0]


def test_the_wheels_are_built_once_from_every_package_the_services_install() -> None:
    runs = [rest for k, rest in STAGES["radixfair-wheels"].instructions if k == "RUN"]

    assert STAGES["radixfair-wheels"].base == "common-deps"
    # The build tools once, from the build inputs; then every package without isolated builds.
    assert "--print build router worker distiller" in runs[0]
    assert "--print sources router worker distiller" in runs[1]
    assert "pip wheel -q --no-cache-dir --no-deps --no-build-isolation --no-index" in runs[1]
    assert "-w /radixfair-wheels" in runs[1]


def _install_script_directories(component: str, script: str) -> list[str]:
    """The ./package directories scripts/install_service.sh installs for ``component``, in order."""
    body = script[script.index(f"install_{component}() {{") :]
    body = body[: body.index("\n}")]
    found: list[str] = []
    for match in re.finditer(r'"?\./([\w/]+)|\binstall_(\w+)\b', body.split("{", 1)[1]):
        if match[1]:
            found.append(match[1])
        elif match[2] not in ("torch",):
            found.extend(_install_script_directories(match[2], script))
    return list(dict.fromkeys(found))


@pytest.mark.parametrize("component", [*SERVICES, "engine_stack"])
def test_the_images_install_the_packages_the_setup_script_installs(component: str) -> None:
    script = INSTALL_SCRIPT.read_text()
    listed = [Path(d).as_posix() for d in _lines("--print", "sources", "--root", ".", component)]

    # third_party_requirements.py's PACKAGES and install_service.sh name the same packages.
    assert listed == _install_script_directories(component, script)


@pytest.mark.parametrize("service", SERVICES)
def test_the_setup_installs_every_service(service: str) -> None:
    script = INSTALL_SCRIPT.read_text()
    setup = (REPO / "scripts" / "setup_env.sh").read_text()
    dev = script[script.index("install_dev() {") :]
    dev = dev[: dev.index("\n}")]

    assert "bash scripts/install_service.sh --editable dev" in setup
    assert f"install_{service}" in dev


def test_the_model_format_carries_the_conversion_extra_the_worker_and_distiller_install() -> None:
    script = INSTALL_SCRIPT.read_text()
    model_format = tomllib.loads((REPO / "model_format" / "pyproject.toml").read_text())["project"]
    worker = tomllib.loads((REPO / "services" / "worker" / "pyproject.toml").read_text())["project"]

    # The conversion's dependencies live where the conversion code does (model_format); the
    # worker's `convert` extra is only that one, under the name it had.
    assert {"gguf==0.19.0", "transformers==5.23.0"} <= set(model_format["optional-dependencies"]["convert"])
    assert worker["optional-dependencies"]["convert"] == ["radixfair-model-format[convert]"]
    assert 'pip_install "${EDITABLE[@]}" "./model_format[convert]"' in script
    for service in ("worker", "distiller"):
        assert "radixfair-model-format[convert]" in _lines("--print", "own", service), service
        assert "radixfair-model-format[convert]" in _lines("--print", "own", "--variant", "cuda", service)


def test_the_worker_extras_match_the_setup_scripts() -> None:
    script = INSTALL_SCRIPT.read_text()

    assert 'local extras=""' in script and 'cuda) extras="[gpu]"' in script
    assert "radixfair-worker" in _lines("--print", "own", "worker")
    assert "radixfair-worker[gpu]" in _lines("--print", "own", "--variant", "cuda", "worker")
    # The worker's gpu extra is the engine's (triton for its kernels); the cuda image installs both.
    assert "radixfair-engine[gpu]" in _lines("--print", "own", "--variant", "cuda", "worker")
    assert "radixfair-engine" in _lines("--print", "own", "worker")


def _radixfair_closure(component: str) -> set[str]:
    """The radixfair projects a component's image installs and every radixfair project their
    pyprojects require, transitively, through the extras named on the way."""
    projects = {}
    for directory in _lines("--print", "sources", "router", "worker", "distiller"):
        project = tomllib.loads((Path(directory) / "pyproject.toml").read_text())["project"]
        projects[canonicalize_name(project["name"])] = project
    pending = [Requirement(line) for line in _lines("--print", "own", "--variant", "cuda", component)]
    walked: set[tuple[str, str]] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        for extra in {"", *requirement.extras} - {e for n, e in walked if n == name}:
            walked.add((name, extra))
            project = projects[name]
            named = project["optional-dependencies"][extra] if extra else project.get("dependencies", [])
            pending += [r for r in map(Requirement, named) if canonicalize_name(r.name) in projects]
    return {name for name, _ in walked}


def test_the_distiller_installs_no_worker() -> None:
    script = INSTALL_SCRIPT.read_text()

    # Neither the setup script, nor the image's package list, nor any radixfair package the
    # distiller's pyproject reaches names the worker: the distiller runs the engine in process.
    assert "services/worker" not in _install_script_directories("distiller", script)
    assert "radixfair-worker" not in " ".join(_lines("--print", "own", "--variant", "cuda", "distiller"))
    assert _radixfair_closure("distiller") == {
        "radixfair",
        "radixfair-model-format",
        "radixfair-engine",
        "radixfair-distiller",
    }
    # The same walk does find the worker where it is installed.
    assert "radixfair-worker" in _radixfair_closure("worker")


def test_the_router_image_installs_nothing_with_torch() -> None:
    text = " ".join(rest for stage in chain("router") for _, rest in stage.instructions)

    assert [s.name for s in chain("router")] == ["runtime", "common-deps", "router-deps", "router"]
    assert "torch" not in text.lower() and "worker" not in text


@pytest.mark.parametrize("service", ["worker", "distiller"])
def test_the_torch_images_build_a_cpu_and_a_cuda_variant(service: str) -> None:
    runs = instructions(service, "RUN")

    for stage in ("engine-deps", f"{service}-deps", service):
        assert "TORCH_VARIANT=cpu" in [rest for k, rest in STAGES[stage].instructions if k == "ARG"], stage
    torch = next(run for run in runs if "install_service.sh torch" in run)
    assert 'TORCH_VARIANT="${TORCH_VARIANT}"' in torch
    layers = [run for run in runs if "third_party_requirements.py --variant" in run]
    assert '--variant "${TORCH_VARIANT}" engine_stack' in layers[0]
    assert f'--variant "${{TORCH_VARIANT}}" {service}' in layers[1]
    assert f'--print own --variant "${{TORCH_VARIANT}}" {service}' in runs[-1]


def test_the_worker_and_distiller_images_share_one_engine_layer_and_not_each_other() -> None:
    torch_runs = [
        stage.name
        for stage in STAGES.values()
        for k, rest in stage.instructions
        if k == "RUN" and "install_service.sh torch" in rest
    ]

    # torch is installed in one stage both images build on, so BuildKit builds it once.
    assert torch_runs == ["engine-deps"]
    assert [s.name for s in chain("worker")] == [
        "runtime",
        "common-deps",
        "engine-deps",
        "worker-deps",
        "worker",
    ]
    assert [s.name for s in chain("distiller")] == [
        "runtime",
        "common-deps",
        "engine-deps",
        "distiller-deps",
        "distiller",
    ]
    distiller = " ".join(rest for stage in chain("distiller") for _, rest in stage.instructions)
    assert "worker" not in distiller


def _lines(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS), *args], capture_output=True, text=True, check=True, cwd=REPO
    )
    return result.stdout.split()


def _requirements(*args: str) -> set[str]:
    return set(_lines(*args))


def test_the_dependency_layers_install_what_the_pyprojects_name_and_no_radixfair_package() -> None:
    router = _requirements("router")
    worker = _requirements("worker", "distiller")
    cuda = _requirements("--variant", "cuda", "worker", "distiller")

    common = tomllib.loads((REPO / "common" / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(common) <= router and set(common) <= worker
    assert "redis>=5" in router and not any(r.startswith("torch") for r in router)
    # The model format's GGUF-conversion extra always; triton (the gpu extra) only in the CUDA variant.
    assert {"torch>=2.6", "transformers==5.23.0", "gguf==0.19.0"} <= worker
    assert cuda - worker == {"triton>=3.3"}
    assert not any(r.startswith("radixfair") for r in router | cuda)


def test_the_wheelhouse_list_adds_what_building_the_packages_needs() -> None:
    listed = _requirements("--build-requires", "router", "worker", "distiller")

    assert {"setuptools>=69", "grpcio-tools==1.85.1"} <= listed
    assert _requirements("--print", "build", "router", "worker", "distiller") <= listed


def test_the_shared_dependency_layer_is_what_every_service_needs() -> None:
    common = _requirements("common")

    for service in SERVICES:
        assert common <= _requirements(service), service
    assert not any(r.startswith(("torch", "redis", "transformers")) for r in common)
    assert _lines("--print", "own", "router") == ["radixfair", "radixfair-router"]


def _dockerignore_includes(patterns: list[str], path: str) -> bool:
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(path, glob.replace("/**", "/*")):
            included = negate
    return included


def test_build_context_holds_what_the_dockerfile_reads_and_not_the_venv() -> None:
    ignore = (DOCKER_DIR / "radixfair.Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    copied = [
        source.rstrip("/")
        for stage in STAGES.values()
        for keyword, rest in stage.instructions
        if keyword == "COPY"
        for source in rest.split()[:-1]
    ]
    # The install steps mount the sources and run scripts/install_service.sh on common and services.
    mounted = [
        "scripts/install_service.sh",
        "protos",
        "common",
        "model_format",
        "engine",
        "services",
        "deploy/docker/build-inputs/apply.sh",
    ]

    for source in copied + mounted:
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        files += [path / "pyproject.toml"] if (path / "pyproject.toml").exists() else []
        for file in files[:50]:
            relative = str(file.relative_to(REPO))
            if (
                "egg-info" in relative
                or "/build/" in relative
                or relative.endswith(("_pb2.py", "_pb2_grpc.py"))
            ):
                continue
            assert _dockerignore_includes(patterns, relative), relative
    for excluded in (
        ".venv/bin/python",
        ".git/HEAD",
        "common/src/radixfair/v1/worker_pb2.py",
        "models/x.safetensors",
        # The wheelhouse reaches the builds as an image, never as context sent once per image.
        "deploy/docker/build-inputs/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "deploy/docker/build-inputs/wheels/COMPLETE",
    ):
        assert not _dockerignore_includes(patterns, excluded), excluded
