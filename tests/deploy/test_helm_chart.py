"""The Helm chart, rendered and linted through the real Helm library, checked like a reviewer would.

Renders use the default values and deploy/helm/values-production.yaml; every
manifest is validated against the Kubernetes schemas (kubernetes-validate).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_support import (
    CHART,
    KUBE_VERSIONS,
    PRODUCTION_VALUES,
    REPO,
    SERVICE_MONITOR_API,
    Rendered,
    lint_chart,
    pod_template,
    production_values,
    render_chart,
    secret_data,
)

KEYS = {"auth": {"apiKeys": [{"key": "test-key", "client_id": "alice", "weight": 1.0}]}}
VALUE_SETS = {
    "default": {},
    "production": production_values(),
    "cpu": {"worker": {"gpu": {"count": 0}}, "distiller": {"gpu": {"count": 0}}, **KEYS},
    "tls": {"tls": {"enabled": True, "secretName": "radixfair-tls", "requireClientCert": True}, **KEYS},
}
HEALTH_CHECK_SCRIPT = "/opt/radixfair/grpc_health_check.py"


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render_chart(VALUE_SETS[request.param])


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render_chart({})


@pytest.fixture(scope="module")
def production() -> Rendered:
    return render_chart(production_values())


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", ["default", "production", "tls"])
def test_chart_lints_clean(values_name: str, kube_version: str) -> None:
    report = lint_chart(VALUE_SETS[values_name], kube_version)

    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; 1 (info) is only "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_catches_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "radixfair"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("kind: ConfigMap\nmetadata: {name: x\n")

    report = lint_chart({}, KUBE_VERSIONS[0], chart=broken)

    assert report["errors"] or [m for m in report["messages"] if m["severity"] == 3]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(rendered: Rendered, kube_version: str) -> None:
    for doc in rendered.documents:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: not in the core schemas; see test_service_monitor_*
        kubernetes_validate.validate(doc, kube_version, strict=True)


def test_values_yaml_is_documented_line_by_line() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- ") and ":" not in stripped:
            continue
        if re.match(r"^\s*(- )?[A-Za-z0-9_.\-/]+:", line) is None:
            continue
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            undocumented.append(f"line {number + 1}: {stripped}")
    assert undocumented == []


def test_pods_run_as_non_root_with_a_locked_down_container(rendered: Rendered) -> None:
    for name, spec in rendered.pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        # Service links would inject RADIXFAIR_ROUTER_*-style variables, which the config loader
        # would read as (unknown) config fields.
        assert spec["enableServiceLinks"] is False, name
        assert spec["automountServiceAccountToken"] is False, name
    for name, container in rendered.containers():
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["capabilities"]["drop"] == ["ALL"], name


def test_every_container_has_resource_requests_and_limits(rendered: Rendered) -> None:
    for name, container in rendered.containers():
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name} {bound}"


def _container(rendered: Rendered, kind: str, name: str, container: str) -> dict[str, Any]:
    template = pod_template(rendered.named(kind, name))
    assert template is not None
    return next(c for c in template["spec"]["containers"] if c["name"] == container)


@pytest.mark.parametrize(
    ("kind", "name", "container"),
    [("Deployment", "radixfair-router", "router"), ("StatefulSet", "radixfair-worker", "worker")],
)
def test_router_and_worker_probe_through_grpc_health(
    rendered: Rendered, kind: str, name: str, container: str
) -> None:
    spec = _container(rendered, kind, name, container)
    grpc_port = next(p["containerPort"] for p in spec["ports"] if p["name"] == "grpc")
    tls_mount = next((m["mountPath"] for m in spec["volumeMounts"] if m["name"] == "tls"), None)

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if tls_mount is None:
            assert spec[probe]["grpc"]["port"] == grpc_port, probe
        else:
            # The kubelet's gRPC probe cannot speak TLS: the image's script checks with the
            # mounted certificates (tests/deploy/test_container_scripts.py runs this command).
            command = spec[probe]["exec"]["command"]
            assert command[:3] == ["python", HEALTH_CHECK_SCRIPT, f"127.0.0.1:{grpc_port}"], probe
            assert f"{tls_mount}/ca.crt" in command and f"{tls_mount}/tls.crt" in command, probe


def test_worker_startup_probe_allows_minutes_to_load_the_model(rendered: Rendered) -> None:
    startup = _container(rendered, "StatefulSet", "radixfair-worker", "worker")["startupProbe"]

    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_workers_request_gpus_by_default() -> None:
    rendered = render_chart({})
    worker = _container(rendered, "StatefulSet", "radixfair-worker", "worker")

    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["image"].endswith("-cuda")
    assert "device: cuda" in rendered.named("ConfigMap", "radixfair-config")["data"]["worker.yaml"]


def test_cpu_workers_request_no_gpu_and_run_the_cpu_image() -> None:
    rendered = render_chart(VALUE_SETS["cpu"])
    worker = _container(rendered, "StatefulSet", "radixfair-worker", "worker")

    assert "nvidia.com/gpu" not in worker["resources"]["requests"]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]
    assert worker["image"] == "radixfair-worker:0.1.0-cpu"
    assert "device: cpu" in rendered.named("ConfigMap", "radixfair-config")["data"]["worker.yaml"]


def test_workers_get_shared_memory_and_a_read_only_model_volume(rendered: Rendered) -> None:
    template = pod_template(rendered.named("StatefulSet", "radixfair-worker"))
    assert template is not None
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    mounts = {
        m["name"]: m
        for m in _container(rendered, "StatefulSet", "radixfair-worker", "worker")["volumeMounts"]
    }

    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"] is True
    init = template["spec"]["initContainers"][0]
    assert init["name"] == "prepare-model" and "/opt/radixfair/prepare_model.py" in init["command"]


def test_production_model_comes_from_the_shared_claim_read_only(production: Rendered) -> None:
    for name, spec in production.pod_specs():
        if name.endswith("-redis"):
            continue
        models = next(v for v in spec["volumes"] if v["name"] == "models")
        assert models["persistentVolumeClaim"] == {"claimName": "radixfair-models", "readOnly": True}, name


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _pod_labels(rendered: Rendered) -> list[dict[str, str]]:
    labels = []
    for doc in rendered.documents:
        template = pod_template(doc)
        if template is not None:
            labels.append(template["metadata"]["labels"])
    return labels


def test_selectors_match_their_pods(rendered: Rendered) -> None:
    pods = _pod_labels(rendered)
    for doc in rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet"):
        selector = doc["spec"]["selector"]["matchLabels"]
        assert _labels_match(selector, doc["spec"]["template"]["metadata"]["labels"]), doc["metadata"]["name"]
    for service in rendered.of_kind("Service"):
        assert any(_labels_match(service["spec"]["selector"], p) for p in pods), service["metadata"]["name"]
    for doc in rendered.of_kind("PodDisruptionBudget") + rendered.of_kind("NetworkPolicy"):
        selector = doc["spec"]["selector" if doc["kind"] == "PodDisruptionBudget" else "podSelector"][
            "matchLabels"
        ]
        assert any(_labels_match(selector, p) for p in pods), doc["metadata"]["name"]
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        rendered.named(target["kind"], target["name"])


def test_services_target_named_container_ports(rendered: Rendered) -> None:
    workloads = rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet")
    for service in rendered.of_kind("Service"):
        pods = [
            w
            for w in workloads
            if _labels_match(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        port_names = {
            p["name"] for w in pods for c in w["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service["metadata"]["name"], port)


def test_router_service_speaks_h2c(rendered: Rendered) -> None:
    grpc = next(
        p for p in rendered.named("Service", "radixfair-router")["spec"]["ports"] if p["name"] == "grpc"
    )

    router = pod_template(rendered.named("Deployment", "radixfair-router"))
    assert router is not None
    if any(volume["name"] == "tls" for volume in router["spec"]["volumes"]):
        assert "appProtocol" not in grpc  # TLS: the routers terminate it, no proxy sees h2c
    else:
        assert grpc["appProtocol"] == "kubernetes.io/h2c"


def test_worker_service_is_headless_and_names_each_pod(rendered: Rendered) -> None:
    service = rendered.named("Service", "radixfair-worker")
    workers = rendered.named("StatefulSet", "radixfair-worker")

    assert service["spec"]["clusterIP"] == "None"
    assert workers["spec"]["serviceName"] == "radixfair-worker"


def test_routers_list_every_worker_pod_by_its_stable_address() -> None:
    import yaml

    rendered = render_chart({"worker": {"replicas": 3}}, namespace="llm")
    router = yaml.safe_load(rendered.named("ConfigMap", "radixfair-config")["data"]["router.yaml"])

    assert router["registry"]["workers"] == [
        {
            "worker_id": f"radixfair-worker-{i}",
            "address": f"radixfair-worker-{i}.radixfair-worker.llm.svc.cluster.local:50061",
        }
        for i in range(3)
    ]


def test_router_has_replicas_pdb_and_cpu_hpa_by_default(default: Rendered) -> None:
    hpa = default.named("HorizontalPodAutoscaler", "radixfair-router")
    pdb = default.named("PodDisruptionBudget", "radixfair-router")

    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert pdb["spec"]["minAvailable"] == 1
    # The HPA owns the replica count.
    assert "replicas" not in default.named("Deployment", "radixfair-router")["spec"]


def test_router_replicas_are_fixed_without_autoscaling() -> None:
    rendered = render_chart({"router": {"autoscaling": {"enabled": False}, "replicas": 3}, **KEYS})

    assert rendered.named("Deployment", "radixfair-router")["spec"]["replicas"] == 3
    assert rendered.of_kind("HorizontalPodAutoscaler") == []


def test_production_router_scales_on_a_custom_metric(production: Rendered) -> None:
    metric = production.named("HorizontalPodAutoscaler", "radixfair-router")["spec"]["metrics"][0]

    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "radixfair_router_worker_inflight"


def test_a_single_router_gets_no_pdb_that_would_block_drains() -> None:
    rendered = render_chart({"router": {"autoscaling": {"enabled": False}, "replicas": 1}})

    assert [p["metadata"]["name"] for p in rendered.of_kind("PodDisruptionBudget")] == ["radixfair-worker"]


def _ingress_peers(policy: dict[str, Any], port: str) -> list[dict[str, Any]]:
    rules = [r for r in policy["spec"].get("ingress", []) if any(p["port"] == port for p in r["ports"])]
    assert len(rules) == 1, (policy["metadata"]["name"], port)
    return rules[0].get("from", [])


def test_only_routers_reach_workers_and_redis(default: Rendered) -> None:
    router_pods = {
        "podSelector": {
            "matchLabels": default.named("Deployment", "radixfair-router")["spec"]["selector"]["matchLabels"]
        }
    }

    assert _ingress_peers(default.named("NetworkPolicy", "radixfair-worker"), "grpc") == [router_pods]
    assert _ingress_peers(default.named("NetworkPolicy", "radixfair-redis"), "redis") == [router_pods]


def test_distiller_jobs_take_no_ingress(production: Rendered) -> None:
    assert production.named("NetworkPolicy", "radixfair-distiller")["spec"].get("ingress", []) == []


def test_production_restricts_who_calls_and_scrapes(production: Rendered) -> None:
    router = production.named("NetworkPolicy", "radixfair-router")

    assert _ingress_peers(router, "grpc") == production_values()["networkPolicy"]["routerFrom"]
    assert _ingress_peers(router, "metrics") == production_values()["networkPolicy"]["metricsFrom"]
    # External Redis: no bundled Redis to protect.
    assert [
        p["metadata"]["name"]
        for p in production.of_kind("NetworkPolicy")
        if p["metadata"]["name"].endswith("redis")
    ] == []


def test_service_monitor_needs_the_operator_api(default: Rendered) -> None:
    assert default.of_kind("ServiceMonitor") == []


def test_service_monitors_scrape_router_and_worker_metrics_when_the_operator_is_present() -> None:
    rendered = render_chart(
        {"metrics": {"serviceMonitor": {"labels": {"release": "prom"}}}}, api_versions=(SERVICE_MONITOR_API,)
    )
    monitors = rendered.of_kind("ServiceMonitor")

    assert sorted(m["metadata"]["name"] for m in monitors) == ["radixfair-router", "radixfair-worker"]
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prom"
        services = [
            s
            for s in rendered.of_kind("Service")
            if _labels_match(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(services) == 1
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in services[0]["spec"]["ports"]}


def test_service_monitor_can_be_switched_off() -> None:
    rendered = render_chart(
        {"metrics": {"serviceMonitor": {"enabled": False}}}, api_versions=(SERVICE_MONITOR_API,)
    )

    assert rendered.of_kind("ServiceMonitor") == []


def test_bundled_redis_is_a_stateful_set_the_router_finds_through_the_secret(default: Rendered) -> None:
    redis = default.named("StatefulSet", "radixfair-redis")
    router_env = {
        e["name"]: e for e in _container(default, "Deployment", "radixfair-router", "router")["env"]
    }

    assert redis["spec"]["replicas"] == 1
    assert router_env["RADIXFAIR_LEDGER__REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "radixfair-secrets",
        "key": "redis-url",
    }
    assert secret_data(default, "radixfair-secrets")["redis-url"] == "redis://radixfair-redis:6379/0"


def test_bundled_redis_persistence_is_a_choice() -> None:
    off = render_chart({}).named("StatefulSet", "radixfair-redis")
    on = render_chart({"redis": {"persistence": {"enabled": True, "size": "5Gi"}}}).named(
        "StatefulSet", "radixfair-redis"
    )

    assert "volumeClaimTemplates" not in off["spec"]
    assert on["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    args = on["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"


def test_redis_can_be_switched_to_an_external_url() -> None:
    rendered = render_chart(
        {"redis": {"enabled": False, "external": {"url": "rediss://managed.example:6380/0"}}}
    )

    assert [d for d in rendered.documents if d["metadata"]["name"] == "radixfair-redis"] == []
    assert secret_data(rendered, "radixfair-secrets")["redis-url"] == "rediss://managed.example:6380/0"


def test_external_redis_url_can_come_from_an_existing_secret(production: Rendered) -> None:
    env = {e["name"]: e for e in _container(production, "Deployment", "radixfair-router", "router")["env"]}

    assert env["RADIXFAIR_LEDGER__REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "radixfair-redis",
        "key": "redis-url",
    }
    # Keys, Redis URL and the routers' and workers' shared secrets all come from existing Secrets:
    # the chart renders no Secret at all.
    assert production.of_kind("Secret") == []


def test_external_redis_without_a_url_is_refused_with_the_value_to_set() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="redis.external.url"):
        render_chart({"redis": {"enabled": False}})


def test_tls_without_a_secret_is_refused_with_the_value_to_set() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="tls.secretName"):
        render_chart({"tls": {"enabled": True}})


def test_tls_is_off_by_default_and_mounts_nothing(default: Rendered) -> None:
    config_map = default.named("ConfigMap", "radixfair-config")["data"]

    assert "cert_file" not in config_map["router.yaml"] and "cert_file" not in config_map["worker.yaml"]
    for name, spec in default.pod_specs():
        assert all(v["name"] != "tls" for v in spec["volumes"]), name


def test_tls_mounts_the_secret_into_routers_and_workers_only() -> None:
    rendered = render_chart(VALUE_SETS["tls"])

    mounted = {
        name for name, spec in rendered.pod_specs() if any(v["name"] == "tls" for v in spec["volumes"])
    }

    assert mounted == {"radixfair-router", "radixfair-worker"}
    assert "radixfair-tls" in rendered.notes and "--ca-cert" in rendered.notes


def test_api_keys_are_in_the_secret_never_the_config_map() -> None:
    rendered = render_chart(KEYS)
    config_text = str(rendered.named("ConfigMap", "radixfair-config")["data"])
    router_env = {
        e["name"]: e for e in _container(rendered, "Deployment", "radixfair-router", "router")["env"]
    }

    assert "test-key" not in config_text
    assert "test-key" in secret_data(rendered, "radixfair-secrets")["RADIXFAIR_AUTH__API_KEYS"]
    assert router_env["RADIXFAIR_AUTH__API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "radixfair-secrets"


def _secret_refs(rendered: Rendered, kind: str, name: str, container: str) -> dict[str, tuple[str, str]]:
    """{variable: (Secret name, key)} of a container's variables that come from a Secret."""
    env = _container(rendered, kind, name, container)["env"]
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def _internal_refs(rendered: Rendered) -> dict[str, tuple[str, str]]:
    router = _secret_refs(rendered, "Deployment", "radixfair-router", "router")
    worker = _secret_refs(rendered, "StatefulSet", "radixfair-worker", "worker")
    return {
        "router identity": router["RADIXFAIR_FORWARD__IDENTITY_SECRET"],
        "router registration": router["RADIXFAIR_REGISTRY__REGISTRATION_TOKEN"],
        "worker identity": worker["RADIXFAIR_IDENTITY_SECRET"],
    }


@pytest.mark.parametrize("values_name", ["default", "cpu", "tls"])
def test_routers_and_workers_share_an_identity_secret_the_chart_generates(values_name: str) -> None:
    rendered = render_chart(VALUE_SETS[values_name])
    refs = _internal_refs(rendered)
    data = secret_data(rendered, "radixfair-secrets")

    assert refs == {
        "router identity": ("radixfair-secrets", "identity-secret"),
        "router registration": ("radixfair-secrets", "registration-token"),
        "worker identity": ("radixfair-secrets", "identity-secret"),
    }
    assert len(data["identity-secret"]) >= 32 and len(data["registration-token"]) >= 32
    assert data["identity-secret"] != data["registration-token"]
    # Generated per install, not a value written in the chart.
    assert secret_data(render_chart(KEYS), "radixfair-secrets")["identity-secret"] != data["identity-secret"]
    assert data["identity-secret"] not in str(rendered.named("ConfigMap", "radixfair-config")["data"])


def test_given_internal_secrets_are_the_ones_wired() -> None:
    internal = {"identitySecret": "i" * 40, "registrationToken": "r" * 40}
    values = {"auth": {**KEYS["auth"], "internal": internal}}

    data = secret_data(render_chart(values), "radixfair-secrets")

    assert (data["identity-secret"], data["registration-token"]) == ("i" * 40, "r" * 40)


def test_internal_secrets_can_come_from_an_existing_secret(production: Rendered) -> None:
    rendered = render_chart({"auth": {**KEYS["auth"], "internal": {"existingSecret": "radixfair-internal"}}})

    assert {name for name, _ in _internal_refs(rendered).values()} == {"radixfair-internal"}
    assert "identity-secret" not in secret_data(rendered, "radixfair-secrets")
    assert {name for name, _ in _internal_refs(production).values()} == {"radixfair-internal"}


def test_a_new_identity_secret_rolls_routers_and_workers() -> None:
    def checksums(secret: str) -> tuple[str, str]:
        rendered = render_chart({"auth": {**KEYS["auth"], "internal": {"identitySecret": secret}}})
        return tuple(  # type: ignore[return-value]
            template["metadata"]["annotations"]["checksum/secret"]
            for template in (
                pod_template(rendered.named("Deployment", "radixfair-router")),
                pod_template(rendered.named("StatefulSet", "radixfair-worker")),
            )
            if template is not None
        )

    first, second = checksums("a" * 40), checksums("b" * 40)

    assert first[0] != second[0] and first[1] != second[1]


def test_config_changes_roll_the_routers() -> None:
    def checksum(values: dict[str, Any]) -> str:
        template = pod_template(render_chart(values).named("Deployment", "radixfair-router"))
        assert template is not None
        return template["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"worker": {"replicas": 3}})


def test_production_runs_each_recipe_as_a_job_or_a_cron_job(production: Rendered) -> None:
    job = production.of_kind("Job")
    cron = production.named("CronJob", "radixfair-distill-distill-nightly")
    config = production.named("ConfigMap", "radixfair-config")["data"]

    assert len(job) == 1 and job[0]["metadata"]["name"].startswith("radixfair-distill-prune-smollm2-")
    assert cron["spec"]["schedule"] == "0 2 * * *"
    for pod in (job[0]["spec"]["template"], cron["spec"]["jobTemplate"]["spec"]["template"]):
        recipe = pod["metadata"]["labels"]["radixfair.dev/recipe"]
        container = pod["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "radixfair_distiller.cli"]
        assert container["args"][-2:] == ["distill", f"/etc/radixfair/recipes/{recipe}.yaml"]
        mount = next(
            m for m in container["volumeMounts"] if m["mountPath"] == f"/etc/radixfair/recipes/{recipe}.yaml"
        )
        assert mount["subPath"] in config
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_a_multi_gpu_recipe_job_runs_the_distiller_under_torchrun() -> None:
    values = production_values()
    values["distiller"]["gpu"]["count"] = 4
    job = render_chart(values).of_kind("Job")[0]
    container = job["spec"]["template"]["spec"]["containers"][0]

    assert container["command"] == [
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "radixfair_distiller.cli",
    ]
    assert container["args"][-2] == "distill"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_a_recipe_job_keeps_its_name_until_the_recipe_changes() -> None:
    values = production_values()
    first = render_chart(values).of_kind("Job")[0]["metadata"]["name"]
    again = render_chart(values).of_kind("Job")[0]["metadata"]["name"]
    values["distiller"]["recipes"]["prune-smollm2"]["recipe"]["prune"]["depth"]["keep_layers"] = 16
    changed = render_chart(values).of_kind("Job")[0]["metadata"]["name"]

    assert first == again
    assert changed != first


def test_production_recipes_are_valid_distiller_recipes() -> None:
    recipe_module = pytest.importorskip("radixfair_distiller.recipe")
    import yaml

    for name, spec in production_values()["distiller"]["recipes"].items():
        recipe = recipe_module.parse_recipe(yaml.safe_dump(spec["recipe"]))
        assert recipe.teacher.startswith("/models/"), name


def test_notes_tell_the_user_how_to_call_the_router(default: Rendered) -> None:
    assert "radixfair-router.radixfair.svc.cluster.local:50051" in default.notes
    assert "port-forward svc/radixfair-router 50051:50051" in default.notes
    assert "authorization: Bearer" in default.notes
    assert "auth.apiKeys is empty" in default.notes


def test_helm_renders_and_lints_with_no_network(tmp_path: Path) -> None:
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0
    ):
        pytest.skip("cannot create a network namespace here (needs unshare and root)")
    script = (
        "import sys, socket, yaml\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from deploy_support import render_chart, lint_chart, production_values\n"
        "try:\n"
        "    socket.create_connection(('8.8.8.8', 53), timeout=1)\n"
        "    sys.exit('network reachable: the test proves nothing')\n"
        "except OSError:\n"
        "    pass\n"
        "assert lint_chart(production_values(), '1.30.0')['errors'] == []\n"
        "print(len(render_chart(production_values()).documents))\n"
    )
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 10


def test_production_values_file_is_the_one_documented() -> None:
    assert PRODUCTION_VALUES.exists()
    assert "helm upgrade --install radixfair deploy/helm/radixfair" in PRODUCTION_VALUES.read_text()
