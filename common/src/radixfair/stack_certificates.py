"""Certificates for one local stack (`radixfair up --tls`): a CA of its own, made in the stack's run dir.

The CA signs one server certificate, for the loopback names every service of the stack listens on
(router and workers), and one client certificate, which the router presents to the workers (they
require it: only the stack's router may call them) and the stack's own health checks present too.
A tenant needs only the CA file (``radixfair generate --ca-cert``). Made with the ``openssl``
command, so this package needs no cryptography library; the keys are readable by the user only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from radixfair.tls import TlsConfig

# Every service of a local stack listens on loopback, under one of these names.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
_DAYS = "825"  # the longest validity clients accept for a leaf; a stack is remade per run dir anyway


class StackCertificateError(RuntimeError):
    """The certificates could not be made; the message is one line (openssl's own reason)."""


@dataclass(frozen=True)
class StackCertificates:
    """Paths of a stack's CA, its services' server certificate and its router's client certificate."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def _pair(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"

    def serving(self, require_client_cert: bool = False) -> TlsConfig:
        """A service's port: the server certificate; with ``require_client_cert``, callers need one too."""
        cert, key = self._pair("server")
        ca = str(self.ca_file) if require_client_cert else ""
        return TlsConfig(str(cert), str(key), ca, require_client_cert)

    def calling(self, with_client_certificate: bool = False) -> TlsConfig:
        """A channel to the stack's services: trusts the CA; optionally presents the client certificate."""
        if not with_client_certificate:
            return TlsConfig(ca_file=str(self.ca_file))
        cert, key = self._pair("client")
        return TlsConfig(str(cert), str(key), str(self.ca_file))

    def create(self) -> StackCertificates:
        """Makes the CA and both certificates (again, if some are missing); returns self."""
        if shutil.which("openssl") is None:
            raise StackCertificateError("radixfair up --tls needs the openssl command on PATH")
        self.directory.mkdir(parents=True, exist_ok=True)
        ca_key = self.directory / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", ca_key, "-out", self.ca_file, "-days", _DAYS, "-subj", "/CN=radixfair local stack CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        alt_names = ",".join(f"{'IP' if name[0].isdigit() else 'DNS'}:{name}" for name in LOOPBACK_NAMES)
        self._issue("server", ["extendedKeyUsage=serverAuth", f"subjectAltName={alt_names}"], ca_key)
        self._issue("client", ["extendedKeyUsage=clientAuth"], ca_key)
        for key in self.directory.glob("*.key"):
            os.chmod(key, 0o600)
        return self

    def _issue(self, name: str, extensions: list[str], ca_key: Path) -> None:
        cert, key = self._pair(name)
        request, extfile = self.directory / f"{name}.csr", self.directory / f"{name}.ext"
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", request, "-subj", f"/CN=radixfair local stack {name}",
        )  # fmt: skip
        extfile.write_text("\n".join(["basicConstraints=CA:FALSE", *extensions]) + "\n")
        _openssl(
            "x509", "-req", "-in", request, "-CA", self.ca_file, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", _DAYS, "-extfile", extfile,
        )  # fmt: skip
        request.unlink()
        extfile.unlink()


def _openssl(*args: object) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise StackCertificateError(f"openssl {args[0]} failed making the stack's certificates: {reason}")
