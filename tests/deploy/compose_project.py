"""A docker-compose project of the repo's compose file, driven the way a user drives it.

The engine and the local base image come from scripts/container_engine.sh; the public images that
cannot be pulled here are replaced by deploy/local/compose.standins.yml. Every wait is bounded by a
deadline: on containers' health, woken by the engine's health events; on an answer, a poll.
"""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from deploy_support import COMPOSE_FILE, REPO

ENGINE_SCRIPT = REPO / "scripts" / "container_engine.sh"
STANDINS_FILE = REPO / "deploy" / "local" / "compose.standins.yml"
BASE_IMAGE = "radixfair-local/python:3.11-bookworm"
# The build inputs with the wheelhouse, as an image (container_engine.sh inputs-image): never sent
# as build context.
BUILD_INPUTS_IMAGE = "radixfair-local/build-inputs"
# scripts/container_engine.sh exits 3 when no engine can be installed here (not root, no apt-get).
NO_ENGINE_HERE = 3

T = TypeVar("T")
# wait_healthy looks again this often without a health event.
HEALTH_RECHECK_S = 10.0
# The engine's containers and build steps, together (cgroup v1 with the cgroupfs driver, as here).
DOCKER_CGROUP_CPU = Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far, by where it runs: the engine's containers and build steps (its cgroup,
    when this machine has that file), the engine's own daemons (context transfers, layer commits),
    and this process's finished children (compose, the docker CLI, container_engine.sh with
    mmdebstrap). A load-independent account of a phase's work, on a machine shared with others."""
    used: dict[str, float] = {}
    if DOCKER_CGROUP_CPU.exists():
        used["containers and build steps"] = int(DOCKER_CGROUP_CPU.read_text()) / 1e9
    ticks = os.sysconf("SC_CLK_TCK")
    daemons = 0.0
    for name in ("dockerd", "containerd"):
        pids = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime and stime only: their reaped children (runc) are in the cgroup already.
            daemons += (int(fields[11]) + int(fields[12])) / ticks
    used["dockerd and containerd"] = daemons
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    used["compose, docker CLI, container_engine.sh"] = children.ru_utime + children.ru_stime
    return used


def cpu_used_since(before: dict[str, float]) -> dict[str, float]:
    now = cpu_seconds()
    return {key: round(now[key] - before.get(key, 0.0), 1) for key in now}


def prepare_engine(timeout_s: float, log: Path | None = None) -> dict[str, str]:
    """Engine up, base image and build inputs ready; the environment compose must run with.

    ``log`` gets the script's messages (each step's time among them)."""
    env = {"BASE_IMAGE": BASE_IMAGE, "BUILD_INPUTS_IMAGE": BUILD_INPUTS_IMAGE, **os.environ}
    result = subprocess.run(
        ["bash", str(ENGINE_SCRIPT), "engine", "base", "inputs", "wheels", "inputs-image", "cli-dir"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
    )
    if log is not None:
        log.write_text(result.stderr)
    if result.returncode == NO_ENGINE_HERE:
        pytest.skip(f"no container engine can be installed here: {result.stderr.strip()}")
    assert result.returncode == 0, f"container_engine.sh failed:\n{result.stderr}"
    cli_dir = result.stdout.strip().splitlines()[-1]
    # Compose builds through `docker build`, with BuildKit (the Dockerfiles' RUN --mount), using
    # the first `docker` on PATH: the one container_engine.sh names.
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("COMPOSE_", "RADIXFAIR_", "DOCKER_"))
    } | {
        "PATH": f"{cli_dir}:{os.environ['PATH']}",
        "DOCKER_BUILDKIT": "1",
        "COMPOSE_DOCKER_CLI_BUILD": "1",
        # Each build step with its time, in the log a run keeps (where a cold build's time goes).
        "BUILDKIT_PROGRESS": "plain",
    }


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float, poll_s: float = 1.0) -> T:
    """Polls ``check`` until it returns a value that is not None; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value is not None:
                return value
        except Exception as error:  # noqa: BLE001 - kept for the failure message
            last_error = error
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last error: {last_error!r})")
        time.sleep(poll_s)


@dataclass(frozen=True)
class ComposeProject:
    """One compose project: its name, env file and the environment compose runs in."""

    name: str
    env_file: Path
    env: dict[str, str]
    profiles: tuple[str, ...] = ("cpu", "metrics")

    def command(self) -> list[str]:
        args = [
            "docker-compose",
            "--project-name",
            self.name,
            "--project-directory",
            str(REPO),
            "-f",
            str(COMPOSE_FILE),
            "-f",
            str(STANDINS_FILE),
            "--env-file",
            str(self.env_file),
        ]
        for profile in self.profiles:
            args += ["--profile", profile]
        return args

    def run(self, *args: str, timeout_s: float, log: Path | None = None) -> str:
        """Runs `docker-compose ARGS`; its stdout, and both streams into ``log`` when given."""
        result = subprocess.run(
            [*self.command(), *args], capture_output=True, text=True, env=self.env, timeout=timeout_s
        )
        if log is not None:
            log.write_text(result.stdout + result.stderr)
        assert result.returncode == 0, f"docker-compose {' '.join(args)} failed:\n{result.stderr[-4000:]}"
        return result.stdout

    def exec_python(self, service: str, script: Path, *args: str, timeout_s: float = 300) -> str:
        """Runs ``script`` with the service container's own Python (`python - ARGS`, script on stdin)."""
        result = subprocess.run(
            [*self.command(), "exec", "-T", service, "python", "-", *args],
            input=script.read_text(),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout_s,
        )
        assert result.returncode == 0, f"{script.name} in {service} failed:\n{result.stderr[-4000:]}"
        return result.stdout

    def docker(self, *args: str, timeout_s: float = 60) -> str:
        result = subprocess.run(
            ["docker", *args], capture_output=True, text=True, env=self.env, timeout=timeout_s
        )
        assert result.returncode == 0, f"docker {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    def health(self) -> dict[str, list[str]]:
        """{service: the health (or, without a health check, the state) of each of its containers}.

        Two docker CLI calls for the whole project, by the labels compose puts on its containers:
        asking `docker-compose ps` per service started a Python process of ~0.6 s of CPU per
        service per poll, which on 2 cores slowed the very start-up it waited for."""
        ids = self.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}").split()
        if not ids:
            return {}
        template = (
            '{{index .Config.Labels "com.docker.compose.service"}} '
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
        )
        states: dict[str, list[str]] = {}
        for line in self.docker("inspect", "--format", template, *ids).splitlines():
            service, _, state = line.partition(" ")
            states.setdefault(service, []).append(state)
        return states

    def started_and_checked(self) -> str:
        """One line per container: name, start time, then its kept health checks (start, exit code)."""
        ids = self.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}").split()
        template = (
            "{{.Name}} started {{.State.StartedAt}} finished {{.State.FinishedAt}}"
            "{{if .State.Health}} checks{{range .State.Health.Log}} {{.Start}}={{.ExitCode}}{{end}}{{end}}"
        )
        return self.docker("inspect", "--format", template, *ids) if ids else ""

    def wait_healthy(self, services: Sequence[str], timeout_s: float) -> None:
        """Until each service has exactly one container and it is healthy.

        Woken by the engine's health events for the project's containers (a change of health is
        seen at once, and nothing is asked in between), with a look every ``HEALTH_RECHECK_S``
        as well for what sends no health event (a container that exits)."""
        events = subprocess.Popen(
            ["docker", "events", "--filter", "type=container", "--filter", "event=health_status"]
            + ["--filter", f"label=com.docker.compose.project={self.name}", "--format", "{{.ID}}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )
        assert events.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            # Asked after the event stream is started: a change it missed while it connected is
            # seen at the next look.
            while any((states := self.health()).get(service) != ["healthy"] for service in services):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{', '.join(services)} healthy: not within {timeout_s:.0f} s ({states})"
                    )
                ready, _, _ = select.select([events.stdout], [], [], min(remaining, HEALTH_RECHECK_S))
                if ready:
                    os.read(events.stdout.fileno(), 65536)
        finally:
            events.kill()
            events.wait()

    def purge(self) -> None:
        """Removes whatever a run killed half-way left behind (even two networks of one name,
        which `down` cannot resolve), by the project label compose puts on everything it makes."""
        label = f"label=com.docker.compose.project={self.name}"
        containers = self.docker("ps", "-aq", "--filter", label).split()
        if containers:
            self.docker("rm", "-f", "-v", *containers, timeout_s=120)
        for kind in ("network", "volume"):
            ids = self.docker(kind, "ls", "-q", "--filter", label).split()
            if ids:
                self.docker(kind, "rm", *ids)

    def labelled(self, kind: str) -> list[str]:
        """Names of the containers, volumes or networks compose made for this project."""
        label = f"label=com.docker.compose.project={self.name}"
        if kind == "container":
            return self.docker("ps", "-a", "--filter", label, "--format", "{{.Names}}").split()
        return self.docker(kind, "ls", "--filter", label, "--format", "{{.Name}}").split()


def http_json(url: str, timeout_s: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())
