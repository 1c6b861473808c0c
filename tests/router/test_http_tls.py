"""With the router's TLS configured, the HTTP API port serves HTTPS with the same certificate and the
same client-certificate requirement as its gRPC port (certificates made here with openssl)."""

from __future__ import annotations

import ssl

import httpx
import pytest
from support.certificates import CertificateAuthority
from support.http_router import http_router
from support.router_stack import CLIENTS

from radixfair.tls import TlsConfig

AUTH = {"Authorization": f"Bearer {CLIENTS['alice'][0]}"}


@pytest.fixture(scope="module")
def tls_api(tiny_model_dir, two_workers, tmp_path_factory):
    root = tmp_path_factory.mktemp("http-certs")
    ca = CertificateAuthority.create(root / "ca")
    stranger_ca = CertificateAuthority.create(root / "stranger-ca", name="someone else's CA")
    server = ca.issue("server", server=True)
    tls = TlsConfig(str(server.cert), str(server.key), str(ca.cert), require_client_cert=True)
    with http_router(tiny_model_dir, two_workers, tls=tls) as router:
        assert router.running.http is not None
        yield {
            "url": f"https://127.0.0.1:{router.running.http.port}/v1/models",
            "ca": ca,
            "tenant": ca.issue("tenant", server=False),
            "stranger": stranger_ca.issue("stranger", server=False),
        }


def _context(ca: CertificateAuthority, identity=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


def test_a_client_with_a_certificate_from_the_ca_is_served_over_https(tls_api, tiny_model_dir):
    reply = httpx.get(tls_api["url"], headers=AUTH, verify=_context(tls_api["ca"], tls_api["tenant"]))
    assert reply.status_code == 200 and [m["id"] for m in reply.json()["data"]] == [tiny_model_dir.name]


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_a_client_without_a_certificate_from_the_ca_is_refused(tls_api, who):
    identity = None if who == "no certificate" else tls_api["stranger"]
    with pytest.raises(httpx.TransportError):
        httpx.get(tls_api["url"], headers=AUTH, verify=_context(tls_api["ca"], identity), timeout=30)


def test_plain_http_is_refused_on_the_tls_port(tls_api):
    with pytest.raises(httpx.TransportError):
        httpx.get(tls_api["url"].replace("https://", "http://"), headers=AUTH, timeout=30)
