"""The Helm chart's OpenAI-compatible HTTP API: the router's http port on its Service and pods, the
same NetworkPolicy callers as gRPC, and an optional Ingress, rendered through the real Helm library."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from deploy_support import KUBE_VERSIONS, pod_template, production_values, render_chart

INGRESS = {
    "enabled": True,
    "className": "nginx",
    "hosts": ["llm.example.com"],
    "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
}


def _router_config(rendered) -> dict:
    return yaml.safe_load(rendered.named("ConfigMap", "radixfair-config")["data"]["router.yaml"])


@pytest.mark.parametrize("values", [{}, production_values()], ids=["default", "production"])
def test_the_router_serves_the_http_api_on_its_service_and_pods(values):
    rendered = render_chart(values)
    port = _router_config(rendered)["http_port"]
    service = rendered.named("Service", "radixfair-router")
    [http] = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert (http["port"], http["targetPort"]) == (port, "http") and port > 0
    router = pod_template(rendered.named("Deployment", "radixfair-router"))
    assert router is not None
    [container] = [c for c in router["spec"]["containers"] if c["name"] == "router"]
    assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]
    assert "Ingress" not in {d["kind"] for d in rendered.documents}


def test_the_http_port_admits_the_same_callers_as_the_grpc_port():
    policy = render_chart(production_values()).named("NetworkPolicy", "radixfair-router")
    [rule] = [r for r in policy["spec"]["ingress"] if any(p["port"] == "grpc" for p in r["ports"])]
    assert {"port": "http", "protocol": "TCP"} in rule["ports"]
    assert rule["from"] == production_values()["networkPolicy"]["routerFrom"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_optional_ingress_routes_v1_to_the_http_port(kube_version):
    rendered = render_chart({"router": {"ingress": INGRESS}})
    ingress = rendered.named("Ingress", "radixfair-router")
    kubernetes_validate.validate(ingress, kube_version, strict=True)
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert rule["host"] == "llm.example.com" and ingress["spec"]["ingressClassName"] == "nginx"
    assert (path["path"], path["pathType"]) == ("/v1", "Prefix")
    assert path["backend"]["service"] == {"name": "radixfair-router", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == INGRESS["tls"]
    assert 'radixfair-router" (paths under /v1) at llm.example.com' in rendered.notes


def test_an_ingress_without_hosts_answers_any_host():
    ingress = render_chart({"router": {"ingress": {"enabled": True}}}).named("Ingress", "radixfair-router")
    assert [set(rule) for rule in ingress["spec"]["rules"]] == [{"http"}]
    assert "ingressClassName" not in ingress["spec"] and "tls" not in ingress["spec"]
