"""Serves the OpenAI-compatible app with uvicorn inside the router's own event loop.

The router process owns its signals (service_process.wait_for_shutdown_signal) and its shutdown
order, so uvicorn runs as one more task of the loop with its signal capture turned off, on a
socket bound here (so a taken port is the same one-line start-up error as for the other ports,
and port 0 can be asked for). With the router's TLS configured, this port serves HTTPS with the
same certificate and, if set, the same client-certificate requirement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from radixfair.listening import ListenError, ensure_port_free
from radixfair.tls import TlsConfig

log = logging.getLogger(__name__)

WHAT = "the OpenAI-compatible HTTP API"


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The router handles SIGINT/SIGTERM and stops this server in its own order.
        yield


@dataclass
class RunningHttpApi:
    """A started HTTP front door; ``port`` is the bound one."""

    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


def bind_http_socket(host: str, port: int) -> socket.socket:
    ensure_port_free(host, port, WHAT)
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    try:
        sock = socket.create_server((bare, port), family=family, reuse_port=False)
    except OSError as error:
        raise ListenError(f"cannot listen for {WHAT} on {host}:{port}: {error.strerror}") from error
    sock.setblocking(False)
    return sock


async def start_http_api(
    app: ASGIApp, host: str, port: int, tls: TlsConfig, grace_s: float = 2.0
) -> RunningHttpApi:
    sock = bind_http_socket(host, port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        ws="none",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=max(1, round(grace_s)),
        ssl_certfile=tls.cert_file or None,
        ssl_keyfile=tls.key_file or None,
        ssl_ca_certs=tls.ca_file or None,
        ssl_cert_reqs=_client_cert_requirement(tls),
    )
    server = _EmbeddedServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():  # it failed to start: its exception says why
            sock.close()
            await task
            raise ListenError(f"{WHAT} did not start on {host}:{port}")
        await asyncio.sleep(0.01)
    bound = sock.getsockname()[1]
    log.info("OpenAI-compatible HTTP API on %s:%d (%s)", host, bound, "https" if tls.cert_file else "http")
    return RunningHttpApi(bound, server, task)


def _client_cert_requirement(tls: TlsConfig) -> int:
    """As on the gRPC port: ca_file checks a certificate a client offers; require_client_cert demands one."""
    if tls.require_client_cert:
        return ssl.CERT_REQUIRED
    return ssl.CERT_OPTIONAL if tls.ca_file else ssl.CERT_NONE
