"""Renders the Helm chart and the compose file the way a user's tools would, for the deploy tests.

The chart goes through the Helm library embedded in the helm-python-sdk wheel;
the compose file through Debian's docker-compose (`docker-compose config`,
which needs no Docker engine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "radixfair"
PRODUCTION_VALUES = REPO / "deploy" / "helm" / "values-production.yaml"
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
# The oldest Kubernetes the chart supports (gRPC probes are GA from 1.27) and a recent one.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"


def production_values() -> dict[str, Any]:
    return yaml.safe_load(PRODUCTION_VALUES.read_text())


@dataclass(frozen=True)
class Rendered:
    """The manifests of one chart render, parsed."""

    documents: tuple[dict[str, Any], ...]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        matches = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(matches) == 1, (
            f"expected one {kind} {name}, found {[d['metadata']['name'] for d in self.of_kind(kind)]}"
        )
        return matches[0]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(workload name, pod spec) of every Deployment, StatefulSet, Job and CronJob."""
        for doc in self.documents:
            template = pod_template(doc)
            if template is not None:
                yield doc["metadata"]["name"], template["spec"]

    def containers(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """("workload/container", container) of every container and init container."""
        for name, spec in self.pod_specs():
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                yield f"{name}/{container['name']}", container


def pod_template(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return None


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    api_versions: tuple[str, ...] = (),
    release: str = "radixfair",
    namespace: str = "radixfair",
) -> Rendered:
    """Renders the chart as `helm template` would, offline."""
    options: dict[str, Any] = {"name": release, "namespace": namespace}
    with helm.Chart.load(CHART) as chart:
        if api_versions:
            # Chart.render does not expose the API versions the cluster serves (helm template
            # --api-versions); the pinned helm-c-sdk's render call takes them as "api_versions".
            from helm_python import _native

            raw = _native.call_string(
                "helm_render",
                chart._raw(),
                json.dumps(dict(values or {})),
                json.dumps({**options, "api_versions": list(api_versions)}),
            )
            manifests: dict[str, str] = json.loads(raw)
        else:
            manifests = chart.render(dict(values or {}), name=release, namespace=namespace)
    documents: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(tuple(documents), notes)


def lint_chart(values: Mapping[str, Any] | None, kube_version: str, chart: Path = CHART) -> dict[str, Any]:
    return helm.lint(
        str(chart), dict(values) if values is not None else None, strict=True, kube_version=f"v{kube_version}"
    )


def secret_data(rendered: Rendered, name: str) -> dict[str, str]:
    import base64

    secret = rendered.named("Secret", name)
    return {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}


MAKE_ENV = REPO / "deploy" / "compose" / "make-env.sh"


def make_env_file(path: Path) -> Path:
    """What the README has a user do first: deploy/compose/make-env.sh (.env.example plus
    generated service secrets) into ``path``, which must not exist yet."""
    assert not path.exists()
    subprocess.run(["bash", str(MAKE_ENV), str(path)], check=True, capture_output=True, timeout=30)
    return path


def env_file_values(path: Path) -> dict[str, str]:
    """NAME=value lines of an env file."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def require_docker_compose() -> str:
    """Path of docker-compose; CI must have it (scripts/install_service.sh installs it)."""
    path = shutil.which("docker-compose")
    if path is None:
        message = "docker-compose is not installed (scripts/setup_env.sh installs Debian's package as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def compose_config(
    env_file: Path, profiles: tuple[str, ...] = (), extra_env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`docker-compose config` of the repo's compose file: interpolated, merged, validated."""
    compose = require_docker_compose()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("COMPOSE_", "RADIXFAIR_", "DOCKER_"))
    }
    env.update({"KEYS_ENV_FILE": str(env_file), **(extra_env or {})})
    args = [compose, "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)
