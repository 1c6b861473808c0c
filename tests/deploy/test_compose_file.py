"""docker-compose.yml, parsed and validated by a real compose implementation (Debian's docker-compose).

`docker-compose config` needs no Docker engine: it interpolates the env file,
merges the YAML anchors, validates against the compose schema and prints the
resolved file, which these tests then read like a reviewer.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import COMPOSE_FILE, ENV_EXAMPLE, REPO, compose_config, env_file_values, make_env_file

RADIXFAIR_SERVICES = (
    "router-1",
    "router-2",
    "distiller",
    "worker-1",
    "worker-2",
    "worker-cpu-1",
    "worker-cpu-2",
)


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a user does first: deploy/compose/make-env.sh (.env.example plus generated secrets)."""
    return make_env_file(tmp_path_factory.mktemp("compose") / ".env")


@pytest.fixture(scope="module")
def config(env_file: Path) -> dict[str, Any]:
    return compose_config(env_file)


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    return config["services"]


def test_compose_defines_the_whole_stack(services: dict[str, Any]) -> None:
    assert set(services) == {
        "redis",
        "model-init",
        "router-1",
        "router-2",
        "router-lb",
        "worker-1",
        "worker-2",
        "worker-cpu-1",
        "worker-cpu-2",
        "distiller",
        "otel-collector",
        "jaeger",
        "prometheus",
    }


@pytest.mark.parametrize("profiles", [("cpu",), ("gpu",), ("gpu", "metrics")])
def test_compose_config_is_valid_with_each_profile(env_file: Path, profiles: tuple[str, ...]) -> None:
    assert "router-lb" in compose_config(env_file, profiles)["services"]


def test_long_running_services_have_health_checks(services: dict[str, Any]) -> None:
    # The collector and Prometheus images carry no shell or HTTP client to check with; nothing
    # waits on their health (services only need them started).
    for name in (*RADIXFAIR_SERVICES, "redis", "router-lb", "jaeger"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name


def test_radixfair_services_check_health_through_grpc_health_on_their_port(services: dict[str, Any]) -> None:
    ports = {"router": "50051", "worker": "50061", "distiller": "50071"}
    for name in RADIXFAIR_SERVICES:
        kind = name.split("-")[0]
        test = services[name]["healthcheck"]["test"]
        assert test[1:3] == ["python", "/opt/radixfair/grpc_health_check.py"], name
        assert test[3] == f"127.0.0.1:{ports[kind]}", name


def test_services_wait_on_health_never_on_sleeps(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for condition in service.get("depends_on", {}).values():
            assert condition["condition"] in (
                "service_healthy",
                "service_completed_successfully",
                "service_started",
            ), name
        command = " ".join(map(str, [*service.get("entrypoint", []), *service.get("command", [])]))
        assert not re.search(r"\bsleep\b", command), name
    for router in ("router-1", "router-2"):
        assert services[router]["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert services[router]["depends_on"]["model-init"] == {"condition": "service_completed_successfully"}
    for worker in ("worker-1", "worker-2", "worker-cpu-1", "worker-cpu-2", "distiller"):
        assert services[worker]["depends_on"]["model-init"] == {"condition": "service_completed_successfully"}
    assert services["router-lb"]["depends_on"] == {
        "router-1": {"condition": "service_healthy"},
        "router-2": {"condition": "service_healthy"},
    }


def test_two_router_replicas_sit_behind_one_published_port(services: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    one, two = services["router-1"], services["router-2"]

    assert published["router-lb"] == [
        {"published": 50051, "target": 50051},
        {"published": 8000, "target": 8000},
    ]
    assert "router-1" not in published and "router-2" not in published
    assert (
        one["image"] == two["image"] and one["volumes"] == two["volumes"] and one["command"] == two["command"]
    )
    assert one["environment"]["RADIXFAIR_ROUTER_ID"] != two["environment"]["RADIXFAIR_ROUTER_ID"]
    balancer = (REPO / "deploy" / "compose" / "nginx-grpc.conf").read_text()
    assert re.findall(r"server (router-\d):50051", balancer) == ["router-1", "router-2"]
    assert re.search(r"grpc_pass grpc://", balancer)


def test_only_the_entry_points_publish_ports_and_no_worker_does(services: dict[str, Any]) -> None:
    published = {name for name, service in services.items() if service.get("ports")}

    # The router balancer, Jaeger's UI and (with --profile metrics) Prometheus; never a worker,
    # which listens on every interface of its container for the routers on the compose network.
    assert published <= {"router-lb", "jaeger", "prometheus"}
    for name in ("worker-1", "worker-2", "worker-cpu-1", "worker-cpu-2"):
        assert "ports" not in services[name] and "network_mode" not in services[name], name


def test_gpu_workers_reserve_a_gpu_and_the_cpu_profile_needs_none(services: dict[str, Any]) -> None:
    for name in ("worker-1", "worker-2"):
        device = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert services[name]["profiles"] == ["gpu"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert services[name]["environment"]["RADIXFAIR_ENGINE__DEVICE"] == "cuda"
        assert services[name]["image"].endswith("-cuda")
    for name in ("worker-cpu-1", "worker-cpu-2"):
        assert services[name]["profiles"] == ["cpu"]
        assert "deploy" not in services[name]
        assert services[name]["image"].endswith("-cpu")


def test_either_profile_gives_the_routers_the_worker_names_they_list(services: dict[str, Any]) -> None:
    router = yaml.safe_load((REPO / "deploy" / "config" / "router.yaml").read_text())
    listed = {w["address"].split(":")[0] for w in router["registry"]["workers"]}

    gpu_names = {"worker-1", "worker-2"}
    cpu_names = {
        alias
        for name in ("worker-cpu-1", "worker-cpu-2")
        for alias in services[name]["networks"]["default"]["aliases"]
    }
    assert listed == gpu_names == cpu_names


def test_model_weights_come_from_a_volume_filled_by_an_init_step(config: dict[str, Any]) -> None:
    services = config["services"]
    init = services["model-init"]

    assert init["entrypoint"] == ["python", "/opt/radixfair/prepare_model.py"]
    assert "models:/models:rw" in init["volumes"]
    for name in ("router-1", "worker-1", "worker-cpu-1"):
        assert "models:/models:ro" in services[name]["volumes"], name
    assert "models" in config["volumes"]


def test_traces_flow_to_jaeger_through_the_collector_and_the_ui_is_published(
    services: dict[str, Any],
) -> None:
    collector = yaml.safe_load((REPO / "deploy" / "otel" / "collector.yaml").read_text())
    pipeline = collector["service"]["pipelines"]["traces"]

    assert {"published": 16686, "target": 16686} in services["jaeger"]["ports"]
    assert collector["exporters"][pipeline["exporters"][0]]["endpoint"] == "jaeger:4317"
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    # The distiller has no tracing settings (an unknown RADIXFAIR_* field would stop it).
    for name in (n for n in RADIXFAIR_SERVICES if n != "distiller"):
        env = services[name]["environment"]
        assert env["RADIXFAIR_TRACING__EXPORTER"] == "otlp", name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317", name


def test_pipeline_components_are_all_defined() -> None:
    collector = yaml.safe_load((REPO / "deploy" / "otel" / "collector.yaml").read_text())
    for pipeline in collector["service"]["pipelines"].values():
        for section in ("receivers", "processors", "exporters"):
            assert set(pipeline[section]) <= set(collector[section]), section
    assert set(collector["service"]["extensions"]) <= set(collector["extensions"])


def test_no_secret_is_written_in_the_compose_file() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    text = COMPOSE_FILE.read_text()

    assert "RADIXFAIR_AUTH__API_KEYS" not in text.replace("# The API keys (RADIXFAIR_AUTH__API_KEYS)", "")
    for name, service in raw["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if re.search(r"KEY|SECRET|PASSWORD|TOKEN", key):
                # Only a reference to .env that compose refuses to start without.
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key} set inline"


def test_a_missing_service_secret_stops_compose_with_the_script_to_run(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())

    result = subprocess.run(
        [
            "docker-compose",
            "--project-directory",
            str(REPO),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
            "config",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "KEYS_ENV_FILE": str(env_file)},
        timeout=60,
    )

    assert result.returncode != 0
    assert "IDENTITY_SECRET is empty; run deploy/compose/make-env.sh" in result.stderr


def test_make_env_generates_each_secret_once_and_keeps_it(tmp_path: Path) -> None:
    env_file = make_env_file(tmp_path / ".env")
    first = env_file_values(env_file)
    other = env_file_values(make_env_file(tmp_path / "other.env"))

    subprocess.run(["bash", str(REPO / "deploy/compose/make-env.sh"), str(env_file)], check=True)

    for name in ("IDENTITY_SECRET", "REGISTRATION_TOKEN"):
        assert re.fullmatch(r"[0-9a-f]{64}", first[name]), name
        assert other[name] != first[name], f"{name} is not random"
    assert env_file_values(env_file) == first
    assert env_file.stat().st_mode & 0o077 == 0


def test_routers_and_workers_share_the_identity_secret_of_the_env_file(
    env_file: Path, services: dict[str, Any]
) -> None:
    secrets = env_file_values(env_file)

    for router in ("router-1", "router-2"):
        environment = services[router]["environment"]
        assert environment["RADIXFAIR_FORWARD__IDENTITY_SECRET"] == secrets["IDENTITY_SECRET"]
        assert environment["RADIXFAIR_REGISTRY__REGISTRATION_TOKEN"] == secrets["REGISTRATION_TOKEN"]
    for worker in ("worker-1", "worker-2", "worker-cpu-1", "worker-cpu-2"):
        assert services[worker]["environment"]["RADIXFAIR_IDENTITY_SECRET"] == secrets["IDENTITY_SECRET"]


def test_routers_take_their_api_keys_from_the_env_file(services: dict[str, Any]) -> None:
    expected = next(
        line.split("=", 1)[1]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.startswith("RADIXFAIR_AUTH__API_KEYS=")
    )
    for router in ("router-1", "router-2"):
        assert services[router]["environment"]["RADIXFAIR_AUTH__API_KEYS"] == expected
    for name in ("worker-1", "worker-cpu-1", "distiller"):
        assert "RADIXFAIR_AUTH__API_KEYS" not in services[name].get("environment", {}), name


def test_env_example_sets_no_radixfair_variable_but_the_keys() -> None:
    # Routers read the whole env file; every RADIXFAIR_* variable there becomes a config field.
    names = [
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [n for n in names if n.startswith("RADIXFAIR_")] == ["RADIXFAIR_AUTH__API_KEYS"]


def test_the_real_env_file_is_never_committed() -> None:
    result = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)

    assert result.returncode == 0


def test_redis_persistence_is_a_choice(env_file: Path, services: dict[str, Any]) -> None:
    persistent = compose_config(env_file, extra_env={"REDIS_APPENDONLY": "yes"})["services"]["redis"][
        "command"
    ]

    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "no"
    assert persistent[persistent.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data:rw" in services["redis"]["volumes"]
