"""What the containers will read is a config the services accept.

Each service builds its config from one YAML file plus RADIXFAIR_* variables
(radixfair.config_loading), and rejects unknown fields. These tests load the
exact file and environment that compose and the chart give each container
through the services' own config classes, so a typo, a renamed field or a
stray RADIXFAIR_* variable fails here rather than in a crash-looping pod.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    REPO,
    Rendered,
    compose_config,
    make_env_file,
    pod_template,
    production_values,
    render_chart,
)

from radixfair.config_loading import load_config
from radixfair.service_process import parse_settings
from radixfair_distiller.config import DistillerConfig
from radixfair_router.config import RouterConfig
from radixfair_worker.config import WorkerConfig

CONFIG_DIR = REPO / "deploy" / "config"


def test_example_configs_load_as_the_services_read_them() -> None:
    worker = load_config(WorkerConfig, CONFIG_DIR / "worker.yaml", env={})
    router = load_config(RouterConfig, CONFIG_DIR / "router.yaml", env={})

    # The worker file binds loopback: run on a bare host (`radixfair up --worker-config`) it opens
    # nothing to the network; compose and the chart give the containers their own address.
    assert (worker.host, worker.port, worker.metrics_port) == ("127.0.0.1", 50061, 9461)
    assert worker.metrics.bind_host(worker.host) == "127.0.0.1"
    assert (router.host, router.port, router.metrics_port) == ("0.0.0.0", 50051, 9451)
    assert router.tokenizer_dir == Path(worker.cache_dir) / worker.model


def test_distiller_example_config_loads() -> None:
    config = load_config(DistillerConfig, CONFIG_DIR / "distiller.yaml", env={})

    assert (config.host, config.port) == ("0.0.0.0", 50071)
    worker = load_config(WorkerConfig, CONFIG_DIR / "worker.yaml", env={})
    # The teacher is found where the workers' prepare-model step put the model.
    assert config.model_cache_dir == worker.cache_dir


# ---- docker compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env_file = make_env_file(tmp_path_factory.mktemp("compose-configs") / ".env")
    return compose_config(env_file, ("cpu", "gpu"))["services"]


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in (service.get("environment") or {}).items()}


def _compose_overrides(service: dict[str, Any]) -> dict[str, object]:
    """The ``--set KEY=VALUE`` flags of the service's command, as the service parses them."""
    command = list(service.get("command") or [])
    return parse_settings([command[i + 1] for i, arg in enumerate(command) if arg == "--set"])


def _compose_config_file(service: dict[str, Any], target: str) -> Path:
    mount = next(v for v in service["volumes"] if v.split(":")[1] == target)
    return Path(mount.split(":")[0])


@pytest.mark.parametrize("name", ["worker-1", "worker-2", "worker-cpu-1", "worker-cpu-2", "model-init"])
def test_compose_workers_config_loads(compose_services: dict[str, Any], name: str) -> None:
    service = compose_services[name]

    config = load_config(
        WorkerConfig,
        _compose_config_file(service, "/etc/radixfair/worker.yaml"),
        env=_compose_env(service),
        overrides=_compose_overrides(service),
    )

    if name != "model-init":
        assert config.tracing.exporter == "otlp"
        assert config.worker_id in ("worker-1", "worker-2")
        # Every interface of the container: its address on the private compose network, which
        # the routers call by name; the host reaches it only if a port is published (none is).
        assert config.host == "0.0.0.0" and not service.get("ports")
        # Prometheus scrapes /metrics from its own container, so it listens there too.
        assert config.metrics.bind_host(config.host) == "0.0.0.0"


@pytest.mark.parametrize("name", ["router-1", "router-2"])
def test_compose_routers_config_loads_with_the_keys_from_the_env_file(
    compose_services: dict[str, Any], name: str
) -> None:
    service = compose_services[name]

    config = load_config(
        RouterConfig, _compose_config_file(service, "/etc/radixfair/router.yaml"), env=_compose_env(service)
    )

    assert {key.client_id for key in config.auth.api_keys} == {"alice", "bob"}
    assert config.ledger.redis_url == "redis://redis:6379/0"
    assert config.router_id == name
    assert len(config.registry.registration_token) >= 32


@pytest.mark.parametrize("worker", ["worker-1", "worker-2", "worker-cpu-1", "worker-cpu-2"])
def test_compose_workers_check_the_identity_the_routers_sign(
    compose_services: dict[str, Any], worker: str
) -> None:
    def loaded(kind: type, name: str, file: str) -> Any:
        service = compose_services[name]
        return load_config(kind, _compose_config_file(service, file), env=_compose_env(service))

    secrets = {
        loaded(RouterConfig, r, "/etc/radixfair/router.yaml").forward.identity_secret
        for r in ("router-1", "router-2")
    }

    assert secrets == {loaded(WorkerConfig, worker, "/etc/radixfair/worker.yaml").identity_secret}
    assert len(secrets.pop()) >= 32


def test_compose_distiller_config_loads(compose_services: dict[str, Any]) -> None:
    service = compose_services["distiller"]
    config_file = _compose_config_file(service, "/etc/radixfair/distiller.yaml")

    config = load_config(DistillerConfig, config_file, env=_compose_env(service))

    mounts = {v.split(":")[1]: v for v in service["volumes"]}
    assert str(config.work_dir) in mounts and str(config.model_cache_dir) in mounts


def test_compose_routers_list_the_workers_by_the_ids_they_report(compose_services: dict[str, Any]) -> None:
    router = load_config(RouterConfig, CONFIG_DIR / "router.yaml", env={})
    worker_port = load_config(WorkerConfig, CONFIG_DIR / "worker.yaml", env={}).port
    ids = {_compose_env(compose_services[n])["RADIXFAIR_WORKER_ID"] for n in ("worker-1", "worker-2")}

    assert {w.worker_id for w in router.registry.workers} == ids
    assert {w.address for w in router.registry.workers} == {f"{i}:{worker_port}" for i in ids}


# ---- Helm -------------------------------------------------------------------------------------


def _container(rendered: Rendered, kind: str, name: str) -> dict[str, Any]:
    template = pod_template(rendered.named(kind, name))
    assert template is not None
    return template["spec"]["containers"][0]


def _pod_env(
    rendered: Rendered, container: dict[str, Any], secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The RADIXFAIR_* environment the container gets, with Secret references resolved."""
    env: dict[str, str] = {}
    for entry in container["env"]:
        if not entry["name"].startswith("RADIXFAIR_"):
            continue
        if "value" in entry:
            env[entry["name"]] = entry["value"].replace("$(POD_NAME)", "radixfair-worker-0")
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def _secrets(
    rendered: Rendered, existing: dict[str, dict[str, str]] | None = None
) -> dict[str, dict[str, str]]:
    secrets = dict(existing or {})
    for secret in rendered.of_kind("Secret"):
        secrets[secret["metadata"]["name"]] = {
            k: base64.b64decode(v).decode() for k, v in secret["data"].items()
        }
    return secrets


# The Secrets values-production.yaml expects an operator to create, as its header says.
EXISTING_SECRETS = {
    "radixfair-api-keys": {
        "RADIXFAIR_AUTH__API_KEYS": '[{key: "sha256:' + "ab" * 32 + '", client_id: acme, weight: 2}]'
    },
    "radixfair-redis": {"redis-url": "rediss://:pw@redis.example.internal:6380/0"},
    "radixfair-internal": {"identity-secret": "s" * 64, "registration-token": "t" * 64},
}
TLS_VALUES = {"enabled": True, "secretName": "radixfair-tls", "requireClientCert": True}
VALUE_SETS = {
    "default": {"auth": {"apiKeys": [{"key": "k", "client_id": "alice", "weight": 1.5}]}},
    "production": production_values(),
    "tls": {"auth": {"apiKeys": [{"key": "k", "client_id": "alice"}]}, "tls": TLS_VALUES},
}


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_chart_router_config_loads(values_name: str) -> None:
    rendered = render_chart(VALUE_SETS[values_name])
    config_map = rendered.named("ConfigMap", "radixfair-config")["data"]
    router = _container(rendered, "Deployment", "radixfair-router")

    config = _load(
        RouterConfig,
        config_map["router.yaml"],
        _pod_env(rendered, router, _secrets(rendered, EXISTING_SECRETS)),
    )

    assert config.port == next(p["containerPort"] for p in router["ports"] if p["name"] == "grpc")
    assert config.metrics_port == next(p["containerPort"] for p in router["ports"] if p["name"] == "metrics")
    assert config.auth.api_keys and config.ledger.redis_url
    assert str(config.tokenizer_dir).startswith("/models/")
    assert config.policy.name == VALUE_SETS[values_name].get("router", {}).get("config", {}).get(
        "policy", {}
    ).get("name", "d2lpm")


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_chart_worker_config_loads_and_matches_the_router_list(values_name: str) -> None:
    rendered = render_chart(VALUE_SETS[values_name])
    config_map = rendered.named("ConfigMap", "radixfair-config")["data"]
    worker = _container(rendered, "StatefulSet", "radixfair-worker")

    secrets = _secrets(rendered, EXISTING_SECRETS)
    config = _load(WorkerConfig, config_map["worker.yaml"], _pod_env(rendered, worker, secrets))
    routers = _load(
        RouterConfig,
        config_map["router.yaml"],
        _pod_env(rendered, _container(rendered, "Deployment", "radixfair-router"), secrets),
    )

    router = yaml.safe_load(config_map["router.yaml"])
    listed = router["registry"]["workers"][0]
    assert listed["worker_id"] == config.worker_id == "radixfair-worker-0"
    # The pod's own network namespace: the routers and the scrapers reach both ports.
    assert config.host == config.metrics.bind_host(config.host) == "0.0.0.0"
    # The routers sign each tenant's identity with the very secret the workers check.
    assert len(config.identity_secret) >= 32
    assert routers.forward.identity_secret == config.identity_secret
    assert listed["address"].endswith(f":{config.port}")
    assert config.port == next(p["containerPort"] for p in worker["ports"] if p["name"] == "grpc")
    if values_name == "production":
        assert (config.engine.dtype, config.engine.backend, config.model) == (
            "bfloat16",
            "triton",
            "/models/SmolLM2-1.7B-Instruct",
        )


@pytest.mark.parametrize("require_client_cert", [False, True])
def test_chart_tls_configs_read_the_files_of_the_mounted_secret(require_client_cert: bool) -> None:
    rendered = render_chart({"tls": {**TLS_VALUES, "requireClientCert": require_client_cert}})
    config_map = rendered.named("ConfigMap", "radixfair-config")["data"]

    router = _load(
        RouterConfig, config_map["router.yaml"], {"RADIXFAIR_LEDGER__REDIS_URL": "redis://r:6379/0"}
    )
    worker = _load(WorkerConfig, config_map["worker.yaml"], {})

    mount = _tls_mount(rendered, "Deployment", "radixfair-router")
    assert _tls_mount(rendered, "StatefulSet", "radixfair-worker") == mount
    secret_files = {f"{mount}/{key}": key for key in ("tls.crt", "tls.key", "ca.crt")}
    # Callers of the router: its certificate, and client certificates only when asked for.
    assert secret_files[router.tls.cert_file] == "tls.crt" and secret_files[router.tls.key_file] == "tls.key"
    assert router.tls.require_client_cert is require_client_cert
    assert (secret_files.get(router.tls.ca_file) == "ca.crt") is require_client_cert
    # Router -> worker is always mutual: the worker admits only certificates from ca.crt, and
    # the router presents its own.
    assert worker.tls.require_client_cert and secret_files[worker.tls.ca_file] == "ca.crt"
    assert secret_files[worker.tls.cert_file] == "tls.crt"
    assert secret_files[router.registry.tls.ca_file] == "ca.crt"
    assert secret_files[router.registry.tls.cert_file] == "tls.crt"


def _tls_mount(rendered: Rendered, kind: str, name: str) -> str:
    """Where the pod mounts the TLS Secret (read-only), checking the volume is that Secret."""
    template = pod_template(rendered.named(kind, name))
    assert template is not None
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == TLS_VALUES["secretName"]
    mount = next(m for m in template["spec"]["containers"][0]["volumeMounts"] if m["name"] == "tls")
    assert mount["readOnly"] is True
    return mount["mountPath"]


def test_chart_service_links_cannot_leak_into_the_config() -> None:
    # What Kubernetes would inject for the router Service of a release named "radixfair" if
    # service links were on: the config loader rejects it, which is why the chart turns them off.
    with pytest.raises(ValueError, match="unknown field"):
        load_config(
            RouterConfig, CONFIG_DIR / "router.yaml", env={"RADIXFAIR_ROUTER_SERVICE_HOST": "10.0.0.1"}
        )


def _load(cls: type, text: str, env: dict[str, str]) -> Any:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        file.write(text)
        file.flush()
        return load_config(cls, Path(file.name), env=env)


def test_chart_distiller_jobs_config_loads_with_their_environment() -> None:
    rendered = render_chart(production_values())
    config_map = rendered.named("ConfigMap", "radixfair-config")["data"]
    job = rendered.of_kind("Job")[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}

    config = _load(DistillerConfig, config_map["distiller.yaml"], _pod_env(rendered, container, {}))

    assert config.device == "cuda"
    assert str(config.work_dir) in mounts and str(config.model_cache_dir) in mounts
