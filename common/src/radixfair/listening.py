"""Every listening port a radixfair service opens: exclusively, with one clear error when taken.

gRPC turns SO_REUSEPORT on by default, so a second server on a port that is
already served binds anyway and the kernel splits connections between the
two: a worker of one stack answers for another's. Every service builds its
gRPC server here, with port reuse off, and binds through ``bind_grpc_port``,
so a taken port is a start-up error (``PortInUseError``) instead. The one
exception is asked for by name (``share_port``): router processes of one host
that serve one address together (``radixfair up --routers N``), the kernel
spreading connections over them; only processes that all ask may share.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import grpc

# Options every radixfair gRPC server is built with.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.so_reuseport", 0),)
# A server that shares its port with its siblings (SO_REUSEPORT: each connection goes to one of them).
SHARED_PORT_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.so_reuseport", 1),)


class ListenError(Exception):
    """A service cannot open one of its listening ports; the message names the port and why."""


class PortInUseError(ListenError):
    """The port is already bound by another process."""


def build_grpc_server(
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (), share_port: bool = False
) -> grpc.aio.Server:
    """A grpc.aio server with radixfair's standard options (no port sharing unless ``share_port``)."""
    options = SHARED_PORT_OPTIONS if share_port else SERVER_OPTIONS
    return grpc.aio.server(interceptors=list(interceptors), options=options)


def bind_grpc_port(
    server: grpc.aio.Server,
    host: str,
    port: int,
    what: str = "gRPC",
    credentials: grpc.ServerCredentials | None = None,
    share_port: bool = False,
) -> int:
    """Binds ``host:port`` (TLS with ``credentials``) and returns the bound port.

    PortInUseError when the port is taken, ListenError when it cannot be bound for another reason.
    ``share_port`` (a server built with it): the port may already be served by siblings that share it.
    """
    # Checked with a plain socket first, so the common case gets the OS's reason in one line
    # rather than gRPC's generic bind failure; gRPC's own refusal (port reuse is off) still
    # covers a port taken between the check and the bind.
    if not share_port:
        ensure_port_free(host, port, what)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        if credentials is not None:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError as error:
        if credentials is not None:  # the port was free: gRPC refused the certificate and key
            raise ListenError(
                f"cannot serve TLS for {what} on {address}: the certificate or key was refused "
                "(is the key the certificate's own?)"
            ) from None
        raise PortInUseError(f"cannot listen for {what} on {address}: {error}") from error


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Raises PortInUseError (ListenError for other reasons) unless ``host:port`` can be bound now.

    Port 0 (the OS picks one) is always free.
    """
    if port == 0:
        return
    bare = host.strip("[]") or None
    try:
        candidates = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ListenError(f"cannot listen for {what} on {host}:{port}: {error}") from None
    for family, kind, proto, _, sockaddr in candidates:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC and Python's HTTP servers do: a port left in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise PortInUseError(
                        f"port {port} on {host or '*'} is already in use; cannot listen for {what} there "
                        f"(stop the other process or choose another port)"
                    ) from None
                raise ListenError(f"cannot listen for {what} on {host}:{port}: {error.strerror}") from None
