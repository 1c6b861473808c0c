"""Certificates a test makes for itself: a CA, server and client certificates signed by it (openssl CLI)."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    """A PEM certificate and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA in ``directory``; ``issue`` signs certificates with it."""

    directory: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str = "radixfair test CA") -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "ca.crt", directory / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return cls(directory, cert, key)

    def issue(
        self, name: str, server: bool, names: Sequence[str] = ("127.0.0.1", "localhost"), both: bool = False
    ) -> Identity:
        """A leaf certificate: for a server holding ``names``, or a client; ``both`` allows either use."""
        cert, key, request = (self.directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", request, "-subj", f"/CN={name}",
        )  # fmt: skip
        extensions = self.directory / f"{name}.ext"
        usage = "serverAuth,clientAuth" if both else "serverAuth" if server else "clientAuth"
        lines = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={usage}"]
        if server or both:
            lines.append("subjectAltName=" + ",".join(_alt_name(n) for n in names))
        extensions.write_text("\n".join(lines) + "\n")
        _openssl(
            "x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", extensions,
        )  # fmt: skip
        return Identity(cert, key)


def _alt_name(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
