"""`radixfair up --tls --client-certs`: the whole local stack with TLS on every hop and mutual TLS on
client -> router, from CAs made for the stack.

One real stack (Redis, a router, one worker) started by the CLI. It only becomes ready if its own
health checks and status calls work over TLS, and its worker only joins if it registered over TLS with
the stack's internal certificate. Then: the CLI client chats with the CA file and the client
certificate the stack made; without a certificate, with one from another CA, or in plaintext it is
refused in one line; the worker refuses plaintext and any caller without the stack's internal
certificate (the user's included), so every chat served went router -> worker over mutual TLS.
`up --tls` without --client-certs serves callers with the CA file alone (last test).
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.certificates import CertificateAuthority, tls_health
from support.ports import free_port

from radixfair.tls import TlsConfig

CLI = [sys.executable, "-m", "radixfair.cli"]
API_KEY = "tls-tenant-key"
# Bound on start-up and shutdown of the stack on a loaded 2-core machine.
WAIT_S = 240.0


@dataclass
class TlsUpStack:
    process: subprocess.Popen
    ready: dict[str, object]
    http_port: int

    @property
    def router(self) -> str:
        return str(self.ready["router"])

    @property
    def ca_file(self) -> Path:
        return Path(str(self.ready["ca_file"]))

    @property
    def client_cert(self) -> Path:
        return Path(str(self.ready["client_cert"]))

    @property
    def client_key(self) -> Path:
        return Path(str(self.ready["client_key"]))

    @property
    def client_tls(self) -> TlsConfig:
        return TlsConfig(str(self.client_cert), str(self.client_key), str(self.ca_file))

    @property
    def worker(self) -> str:
        return str(self.ready["worker_addresses"][0])  # type: ignore[index]

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        output, _ = self.process.communicate(timeout=WAIT_S)
        return output or ""


def _start_up(tiny_model_dir: Path, tmp: Path, *flags: str, workers: int = 1) -> TlsUpStack:
    port, http_port, ready = free_port(), free_port(), tmp / "ready.json"
    process = subprocess.Popen(
        [*CLI, "up", *flags, "--workers", str(workers), "--model", str(tiny_model_dir), "--port", str(port),
         "--http-port", str(http_port), "--api-key", f"tenant={API_KEY}",
         "--run-dir", str(tmp / "run"), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    up = TlsUpStack(process, {}, http_port)
    deadline = time.monotonic() + WAIT_S
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not ready.exists():
        pytest.fail(f"up {' '.join(flags)} never became ready:\n{up.stop()[-3000:]}")
    up.ready = json.loads(ready.read_text())
    return up


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsUpStack]:
    up = _start_up(tiny_model_dir, tmp_path_factory.mktemp("up-tls"), "--tls", "--client-certs")
    try:
        yield up
    finally:
        up.stop()


def test_the_stack_makes_its_cas_and_the_users_certificate_in_the_run_dir_with_private_keys(
    stack: TlsUpStack,
) -> None:
    tls_dir = stack.ca_file.parent
    assert stack.ca_file.is_file() and tls_dir.name == "tls"
    assert (stack.client_cert, stack.client_key) == (tls_dir / "client.crt", tls_dir / "client.key")
    keys = sorted(tls_dir.glob("*.key"))
    assert [k.name for k in keys] == ["ca.key", "client.key", "clients-ca.key", "internal.key", "server.key"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert stack.ready["http_api"] == f"https://127.0.0.1:{stack.http_port}/v1"


def test_the_cli_chats_with_the_stack_with_its_ca_file_and_client_certificate(stack: TlsUpStack) -> None:
    done = _cli_generate(
        stack, "--ca-cert", str(stack.ca_file),
        "--client-cert", str(stack.client_cert), "--client-key", str(stack.client_key),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "[worker worker-0:" in done.stderr and "3 generated" in done.stderr


def test_a_client_without_a_certificate_is_refused_in_one_line_naming_what_it_lacks(
    stack: TlsUpStack,
) -> None:
    done = _cli_generate(stack, "--ca-cert", str(stack.ca_file))

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "radixfair: error: UNAVAILABLE: failed to connect to all addresses; last error: UNAVAILABLE: "
        f"ipv4:{stack.router}: Socket closed (the server closed the TLS connection: if it requires a "
        "client certificate, pass --client-cert and --client-key)"
    ]
    assert tls_health(stack.router, TlsConfig(ca_file=str(stack.ca_file))) == "UNAVAILABLE"


def test_a_client_certificate_another_ca_signed_is_refused(stack: TlsUpStack, tmp_path: Path) -> None:
    stranger = CertificateAuthority.create(tmp_path, name="someone else's CA").issue("user", server=False)

    done = _cli_generate(
        stack, "--ca-cert", str(stack.ca_file),
        "--client-cert", str(stranger.cert), "--client-key", str(stranger.key),
    )  # fmt: skip

    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("(the server closed the TLS connection: it may not trust --client-cert's CA)")
    )
    stranger_tls = TlsConfig(str(stranger.cert), str(stranger.key), str(stack.ca_file))
    assert tls_health(stack.router, stranger_tls) == "UNAVAILABLE"
    assert tls_health(stack.router, stack.client_tls) == "SERVING"


def test_a_plaintext_client_is_refused_by_the_stacks_router(stack: TlsUpStack) -> None:
    done = _cli_generate(stack)

    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("radixfair: error: UNAVAILABLE")
    assert tls_health(stack.router, TlsConfig()) == "UNAVAILABLE"


def test_the_http_api_serves_https_to_the_client_certificate_and_refuses_plain_http(
    stack: TlsUpStack,
) -> None:
    base = f"127.0.0.1:{stack.http_port}"
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    context.load_cert_chain(str(stack.client_cert), str(stack.client_key))
    with httpx.Client(verify=context, timeout=30) as client:
        models = client.get(f"https://{base}/v1/models", headers={"authorization": f"Bearer {API_KEY}"})
    assert models.status_code == 200, models.text

    with pytest.raises(httpx.HTTPError), httpx.Client(timeout=30) as client:
        client.get(f"http://{base}/v1/models", headers={"authorization": f"Bearer {API_KEY}"})


def test_the_worker_admits_only_the_stacks_internal_certificate_not_the_users(stack: TlsUpStack) -> None:
    tls_dir = stack.ca_file.parent
    with_ca_only = TlsConfig(ca_file=str(stack.ca_file))
    internal = TlsConfig(str(tls_dir / "internal.crt"), str(tls_dir / "internal.key"), str(stack.ca_file))

    assert tls_health(stack.worker, TlsConfig()) == "UNAVAILABLE"
    assert tls_health(stack.worker, with_ca_only) == "UNAVAILABLE"
    assert tls_health(stack.worker, stack.client_tls) == "UNAVAILABLE"
    assert tls_health(stack.worker, internal) == "SERVING"


def test_every_port_of_the_stack_listens_on_loopback_only(stack: TlsUpStack) -> None:
    # 127.0.0.2 is loopback too: a socket bound to all interfaces (or 127.0.0.0/8) would accept it.
    ports = [int(address.rsplit(":", 1)[1]) for address in (stack.router, stack.worker)]
    ports.append(stack.http_port)

    assert [_accepts("127.0.0.2", port) for port in ports] == [False] * 3
    assert [_accepts("127.0.0.1", port) for port in ports] == [True] * 3


def test_up_tls_without_client_certs_serves_a_client_with_the_ca_file_alone(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # No worker: what differs from the stack above is only the router's port, which status shows.
    up = _start_up(tiny_model_dir, tmp_path, "--tls", workers=0)
    try:
        assert up.ready["client_cert"] == "" and not (up.ca_file.parent / "client.crt").exists()
        done = subprocess.run(
            [*CLI, "status", "--router", up.router, "--api-key", API_KEY, "--ca-cert", str(up.ca_file)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        output = up.stop()

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("policy: d2lpm   shared state: connected")
    assert f"clients trust --ca-cert {up.ca_file}" in output and "--client-cert" not in output


def test_client_certs_without_tls_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "up", "--client-certs", "--run-dir", str(tmp_path / "run"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "radixfair: error: client certificates (--client-certs) need TLS (--tls)"
    ]
    assert not (tmp_path / "run").exists()


def _cli_generate(stack: TlsUpStack, *tls_flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "generate", "--router", stack.router, "--api-key", API_KEY, *tls_flags,
         "--chat", "--max-tokens", "3", "Hello over TLS"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False
