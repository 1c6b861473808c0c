"""TLS and mutual TLS on every gRPC hop, from PEM files read once at start-up.

One ``TlsConfig`` describes one side of a hop. Every radixfair listening port
takes its server credentials from ``server_credentials``, and every channel to
a router or worker is opened through ``open_aio_channel`` / ``open_channel``,
so a certificate means the same thing in each service and in the client.

A missing, unreadable or non-PEM file is a ``TlsError`` (a ConfigError) whose
message names the config field and the path: the services print it as one
start-up line, never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from radixfair.config_loading import ConfigError

# What a PEM file of each kind must hold; checked here because gRPC reports a wrong file
# only at the first handshake, long after start-up, or as a generic bind failure.
_CERTIFICATE_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKER = b"PRIVATE KEY-----"

ChannelOptions = Sequence[tuple[str, object]]


class TlsError(ConfigError):
    """A TLS setting or file is unusable; the message names the field and the file."""


@dataclass(frozen=True)
class TlsConfig:
    """TLS of one side of a gRPC hop. Off while every file is empty (plaintext).

    Serving a port: ``cert_file`` and ``key_file`` are the server's certificate (chain)
    and key. ``ca_file``, when set, is the CA that client certificates must chain to;
    with ``require_client_cert`` every caller must present one (mutual TLS).

    Calling a server: ``ca_file`` is the CA the server's certificate must chain to.
    ``cert_file`` and ``key_file``, when set, are this side's client certificate (for a
    server that requires one). ``server_name`` overrides the host name checked in the
    server's certificate (for addresses such as 127.0.0.1 that the certificate does not name).
    """

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    require_client_cert: bool = False
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise TlsError("cert_file and key_file go together: set both or neither")
        if self.require_client_cert and not self.ca_file:
            raise TlsError("require_client_cert needs ca_file, the CA that client certificates must chain to")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.ca_file)


def server_credentials(tls: TlsConfig, where: str = "tls") -> grpc.ServerCredentials | None:
    """Credentials for ``bind_grpc_port``; None (plaintext) when TLS is off. ``where`` names the field."""
    if not tls.enabled:
        return None
    if not tls.cert_file:
        raise TlsError(f"{where}.ca_file is set but {where}.cert_file is empty: TLS needs a certificate")
    pair = (_read_key(tls, where), _read_certificate(tls.cert_file, f"{where}.cert_file"))
    client_ca = _read_certificate(tls.ca_file, f"{where}.ca_file") if tls.ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=tls.require_client_cert
    )


def channel_credentials(tls: TlsConfig, where: str = "tls") -> grpc.ChannelCredentials | None:
    """Credentials of a channel to a TLS server; None (plaintext) when TLS is off."""
    if not tls.enabled:
        return None
    if tls.require_client_cert:
        raise TlsError(f"{where}.require_client_cert is a server setting; a channel cannot require it")
    root = _read_certificate(tls.ca_file, f"{where}.ca_file") if tls.ca_file else None
    key = _read_key(tls, where) if tls.cert_file else None
    chain = _read_certificate(tls.cert_file, f"{where}.cert_file") if tls.cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


@dataclass(frozen=True)
class ChannelSecurity:
    """Loaded channel credentials (None: plaintext), for a caller that opens many channels."""

    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, object], ...] = ()

    @classmethod
    def load(cls, tls: TlsConfig, where: str = "tls") -> ChannelSecurity:
        credentials = channel_credentials(tls, where)
        return cls(credentials, tuple(_name_options(tls)) if credentials is not None else ())

    def aio_channel(self, address: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(address, options=list(options))
        return grpc.aio.secure_channel(address, self.credentials, options=[*options, *self.options])

    def channel(self, address: str, options: ChannelOptions = ()) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(address, options=list(options))
        return grpc.secure_channel(address, self.credentials, options=[*options, *self.options])


def open_aio_channel(
    address: str, tls: TlsConfig, where: str = "tls", options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``address``: TLS per ``tls``, plaintext when it is off."""
    return ChannelSecurity.load(tls, where).aio_channel(address, options)


def open_channel(
    address: str, tls: TlsConfig, where: str = "tls", options: ChannelOptions = ()
) -> grpc.Channel:
    """The blocking twin of ``open_aio_channel`` (health checks, scripts)."""
    return ChannelSecurity.load(tls, where).channel(address, options)


def describe(tls: TlsConfig) -> str:
    """``plaintext``, ``TLS`` or ``mutual TLS``, for start-up log lines."""
    if not tls.enabled:
        return "plaintext"
    return "mutual TLS" if tls.require_client_cert else "TLS"


def _name_options(tls: TlsConfig) -> list[tuple[str, object]]:
    return [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []


def _read_key(tls: TlsConfig, where: str) -> bytes:
    data = _read(tls.key_file, f"{where}.key_file")
    if _KEY_MARKER not in data:
        raise TlsError(f"{where}.key_file {tls.key_file}: not a PEM private key")
    return data


def _read_certificate(path: str, field: str) -> bytes:
    data = _read(path, field)
    if _CERTIFICATE_MARKER not in data:
        raise TlsError(f"{field} {path}: not a PEM certificate")
    return data


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise TlsError(f"{field} {path}: cannot read ({error.strerror or error})") from None


# What gRPC's C core says when the server ended the connection during or right after the handshake
# (a TLS port refusing plaintext or a missing or untrusted client certificate all read the same to
# the caller: the server cannot send a status before the handshake is done), and when this side
# refused the server's certificate.
_SERVER_CLOSED = "Socket closed"
_SERVER_UNTRUSTED = "CERTIFICATE_VERIFY_FAILED"


def refusal_hint(tls: TlsConfig, code: grpc.StatusCode, details: str) -> str:
    """For an UNAVAILABLE that looks like a TLS refusal, what this caller's TLS settings may lack.

    Empty otherwise. A hint, not a diagnosis: the caller cannot see why the server closed.
    """
    if code != grpc.StatusCode.UNAVAILABLE:
        return ""
    if _SERVER_UNTRUSTED in details:
        return "the server's certificate does not chain to --ca-cert"
    if _SERVER_CLOSED not in details:
        return ""
    if not tls.enabled:
        return "the server closed the connection: if it serves TLS, pass --ca-cert"
    if not tls.cert_file:
        return (
            "the server closed the TLS connection: if it requires a client certificate, "
            "pass --client-cert and --client-key"
        )
    return "the server closed the TLS connection: it may not trust --client-cert's CA"


def add_client_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """--ca-cert, --client-cert, --client-key and --tls-server-name: the caller's side of a TLS hop."""
    parser.add_argument(
        "--ca-cert", default="", help="PEM CA the server's certificate chains to (turns on TLS)"
    )
    parser.add_argument(
        "--client-cert", default="", help="PEM client certificate, for a server requiring mTLS"
    )
    parser.add_argument("--client-key", default="", help="PEM key of --client-cert")
    parser.add_argument("--tls-server-name", default="", help="name to check in the server's certificate")


def client_tls_from_arguments(args: argparse.Namespace) -> TlsConfig:
    """The TlsConfig of ``add_client_tls_arguments``'s flags; TlsError (one line) when they disagree."""
    try:
        return TlsConfig(
            cert_file=args.client_cert,
            key_file=args.client_key,
            ca_file=args.ca_cert,
            server_name=args.tls_server_name,
        )
    except TlsError as error:
        raise TlsError(f"{error} (--client-cert and --client-key)") from None
