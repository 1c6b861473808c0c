"""Certificates made with the ``openssl`` command: a CA that signs server and client certificates, and
the set one local stack (`radixfair up --tls`) makes for itself in its run dir.

The stack's CA signs one server certificate, for the loopback names every service of the stack listens
on (router and workers), and one internal client certificate, which the router presents to the workers
(they require it: only the stack's router may call them), the workers present when they register, and
the stack's own health checks present too. A tenant needs only the CA file
(``radixfair generate --ca-cert``).

With client certificates (`up --tls --client-certs`), the router requires one from every caller, and
the stack makes a second CA, the clients' CA, which signs a client certificate for the user. The router
accepts certificates from either CA; the workers still trust only the first, so the user's certificate
opens the router and nothing behind it.

``openssl`` rather than a cryptography library, so this package needs none; keys are readable by the
user only. The tests make their certificates with the same ``CertificateAuthority``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from radixfair.tls import TlsConfig

# Every service of a local stack listens on loopback, under one of these names.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
_DAYS = 825  # the longest validity clients accept for a leaf; a stack is remade per run dir anyway


class StackCertificateError(RuntimeError):
    """The certificates could not be made; the message is one line (openssl's own reason)."""


@dataclass(frozen=True)
class Identity:
    """A PEM certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA whose certificate and key live in ``directory``; ``issue`` signs leaves with it."""

    directory: Path
    stem: str = "ca"

    @property
    def cert(self) -> Path:
        return self.directory / f"{self.stem}.crt"

    @property
    def key(self) -> Path:
        return self.directory / f"{self.stem}.key"

    @classmethod
    def create(
        cls, directory: Path, name: str = "radixfair CA", stem: str = "ca", days: int = _DAYS
    ) -> CertificateAuthority:
        """Makes (or remakes) a CA called ``name``: ``directory/<stem>.crt`` and its key."""
        _require_openssl()
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory, stem)
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", ca.key, "-out", ca.cert, "-days", days, "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        os.chmod(ca.key, 0o600)
        return ca

    def issue(
        self,
        name: str,
        server: bool,
        names: Sequence[str] = LOOPBACK_NAMES,
        both: bool = False,
        days: int = _DAYS,
    ) -> Identity:
        """A leaf ``name``.crt/.key in the CA's directory: a server's for ``names``, or a client's;
        ``both`` allows either use."""
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        request, extfile = self.directory / f"{name}.csr", self.directory / f"{name}.ext"
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", request, "-subj", f"/CN={name}",
        )  # fmt: skip
        usage = "serverAuth,clientAuth" if both else "serverAuth" if server else "clientAuth"
        lines = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={usage}"]
        if server or both:
            lines.append("subjectAltName=" + ",".join(_alt_name(n) for n in names))
        extfile.write_text("\n".join(lines) + "\n")
        _openssl(
            "x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
            "-out", cert, "-days", days, "-extfile", extfile,
        )  # fmt: skip
        request.unlink()
        extfile.unlink()
        os.chmod(key, 0o600)
        return Identity(cert, key)


@dataclass(frozen=True)
class StackCertificates:
    """Paths of a stack's certificates in ``directory``; ``client_certificates``: the router requires one."""

    directory: Path
    client_certificates: bool = False

    @property
    def ca_file(self) -> Path:
        """The CA every service's server certificate chains to: what a client trusts."""
        return self.directory / "ca.crt"

    @property
    def client_identity(self) -> Identity:
        """The user's client certificate (made only with ``client_certificates``)."""
        return Identity(self.directory / "client.crt", self.directory / "client.key")

    @property
    def _internal(self) -> Identity:
        return Identity(self.directory / "internal.crt", self.directory / "internal.key")

    @property
    def _router_client_cas(self) -> Path:
        # Both CAs in one PEM file: gRPC and Python's ssl take a bundle as the trusted client CAs.
        return self.directory / "router-client-cas.crt"

    def serving(self) -> TlsConfig:
        """The router's port: the server certificate; with client certificates, callers need one of
        the clients' CA or the stack's own (workers registering, the stack's health checks)."""
        server = self.directory / "server.crt", self.directory / "server.key"
        if not self.client_certificates:
            return TlsConfig(str(server[0]), str(server[1]))
        return TlsConfig(str(server[0]), str(server[1]), str(self._router_client_cas), True)

    def serving_internal(self) -> TlsConfig:
        """A worker's port: the server certificate, and callers need the stack's internal certificate."""
        return TlsConfig(
            str(self.directory / "server.crt"), str(self.directory / "server.key"), str(self.ca_file), True
        )

    def calling(self, with_client_certificate: bool = False) -> TlsConfig:
        """A channel to the stack's services: trusts the CA; optionally presents the internal certificate."""
        if not with_client_certificate:
            return TlsConfig(ca_file=str(self.ca_file))
        internal = self._internal
        return TlsConfig(str(internal.cert), str(internal.key), str(self.ca_file))

    def create(self) -> StackCertificates:
        """Makes the CA(s) and every certificate, replacing any there; returns self."""
        try:
            ca = CertificateAuthority.create(self.directory, "radixfair local stack CA")
            ca.issue("server", server=True)
            ca.issue("internal", server=False)
            if self.client_certificates:
                clients_ca = CertificateAuthority.create(
                    self.directory, "radixfair local stack clients' CA", stem="clients-ca"
                )
                clients_ca.issue("client", server=False)
                self._router_client_cas.write_bytes(ca.cert.read_bytes() + clients_ca.cert.read_bytes())
        except OSError as error:
            raise StackCertificateError(f"cannot write the stack's certificates: {error}") from None
        return self


def _alt_name(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def _require_openssl() -> None:
    if shutil.which("openssl") is None:
        raise StackCertificateError("making certificates needs the openssl command on PATH")


def _openssl(*args: object) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise StackCertificateError(f"openssl {args[0]} failed making certificates: {reason}")
