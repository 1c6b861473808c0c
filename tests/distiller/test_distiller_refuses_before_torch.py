"""A distiller that cannot start says so before it imports torch (seconds), whatever its torch_threads.

The certificates and both ports are checked first; torch, and its thread count, come with the job
runner once the ports are bound. Each case runs the service's entry point in a fresh interpreter and
reports its exit status and whether torch was imported by then.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PROBE = (
    "import sys\n"
    "from radixfair_distiller.__main__ import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit as end:\n"
    "    print('exit', end.code, 'torch imported:', 'torch' in sys.modules)\n"
)


def _start(tmp_path: Path, settings: dict[str, object]) -> subprocess.CompletedProcess[str]:
    base = {"work_dir": tmp_path / "work", "device": "cpu", "torch_threads": 1, "metrics_port": 0}
    args = [arg for key, value in {**base, **settings}.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_taken_port_is_refused_before_torch_is_imported(tmp_path: Path, taken_port: int) -> None:
    done = _start(tmp_path, {"host": "127.0.0.1", "port": taken_port})

    assert done.stdout.strip() == "exit 2 torch imported: False", done.stderr
    assert "already in use" in done.stderr


def test_a_missing_certificate_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    missing = tmp_path / "absent.crt"
    done = _start(tmp_path, {"tls.cert_file": missing, "tls.key_file": tmp_path / "absent.key"})

    assert done.stdout.strip() == "exit 2 torch imported: False", done.stderr
    assert "cannot read" in done.stderr
