"""Certificates a test makes for itself, with the product's own maker (radixfair.stack_certificates),
and the TLS probes the TLS tests share: a test PKI of one CA and a stranger's, a grpc.health.v1 check
over TLS, and a wait until a service answers SERVING over TLS."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixfair.stack_certificates import CertificateAuthority, Identity
from radixfair.tls import TlsConfig, open_channel
from support.processes import ServiceProcess

__all__ = ["CertificateAuthority", "Identity", "TestPki", "tls_health", "wait_serving_over_tls"]


@dataclass(frozen=True)
class TestPki:
    """A CA that signs a server certificate (loopback names) and a tenant's client certificate, and a
    second CA, a stranger's, that signs another client certificate nobody here trusts."""

    __test__ = False  # a helper, not a test class

    ca: CertificateAuthority
    server: Identity
    tenant: Identity
    stranger: Identity
    stranger_ca: CertificateAuthority

    @classmethod
    def create(cls, root: Path, server_name: str = "server") -> TestPki:
        ca = CertificateAuthority.create(root / "ca")
        stranger_ca = CertificateAuthority.create(root / "stranger-ca", name="someone else's CA")
        return cls(
            ca=ca,
            server=ca.issue(server_name, server=True),
            tenant=ca.issue("tenant", server=False),
            stranger=stranger_ca.issue("stranger", server=False),
            stranger_ca=stranger_ca,
        )

    def client_tls(self, identity: Identity | None = None) -> TlsConfig:
        """A caller that trusts the CA and, with ``identity``, presents that certificate."""
        if identity is None:
            return TlsConfig(ca_file=str(self.ca.cert))
        return TlsConfig(ca_file=str(self.ca.cert), cert_file=str(identity.cert), key_file=str(identity.key))


def tls_health(address: str, tls: TlsConfig, timeout: float = 2.0) -> str:
    """grpc.health.v1 Check over ``tls``: the serving status's name, or the refusing status code's."""
    with open_channel(address, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_serving_over_tls(service: ServiceProcess, probe: TlsConfig, timeout: float = 120.0) -> None:
    """Until ``service``, asked over ``probe``, says SERVING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"exited with {service.process.returncode}:\n{service.log()[-4000:]}")
        if tls_health(service.address, probe) == "SERVING":
            return
        time.sleep(0.2)
    raise TimeoutError(f"not serving on {service.address}:\n{service.log()[-4000:]}")
