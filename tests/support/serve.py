"""The one way the suite runs a real ``huddle serve``: spawn it as a subprocess
(its output in a log file), wait until ``/health`` answers, stop it with SIGTERM
(then kill)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.polling import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
SERVE_COMMAND = [sys.executable, "-m", "server.cli", "serve"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_env(**settings: str) -> dict[str, str]:
    """This process's environment without its ``HUDDLE_*`` variables, plus ``settings``
    (so a developer's own configuration never leaks into a test server)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HUDDLE_")}
    env["PYTHONUNBUFFERED"] = "1"
    # One SFU in the server's process unless a test asks for workers: the suite
    # behaves the same on any number of cores.
    env["HUDDLE_WORKERS"] = "1"
    env.update(settings)
    return env


@dataclass
class ServeProcess:
    """A spawned ``huddle serve`` on ``host``:``port``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def healthy(self) -> bool:
        """Whether ``/health`` answers 200 now."""
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Block until ``/health`` answers; fail (with the log) if the process exits or
        the deadline passes. Async tests run it with ``asyncio.to_thread``."""

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
                )
            return self.healthy()

        try:
            eventually_sync(up, timeout=timeout, interval=0.1, message=f"{self.name} healthy")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.tail()}") from None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (a graceful shutdown), then kill after ``timeout`` s; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def spawn_serve(
    log_dir: Path, *, name: str = "huddle", args: tuple[str, ...] = (), **settings: str
) -> ServeProcess:
    """Start ``huddle serve [args]`` on 127.0.0.1 (not waited for: see
    :meth:`ServeProcess.wait_healthy`). ``settings`` are ``HUDDLE_*`` variables
    (``HUDDLE_HOST`` may name another local address to listen on)."""
    port = free_port()
    host = settings.get("HUDDLE_HOST", "127.0.0.1")
    env = serve_env(**{"HUDDLE_HOST": host, "HUDDLE_PORT": str(port), **settings})
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*SERVE_COMMAND, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return ServeProcess(name, port, process, log_path, host)


@contextlib.contextmanager
def huddle_serve(
    log_dir: Path,
    *,
    name: str = "huddle",
    timeout: float = 30.0,
    args: tuple[str, ...] = (),
    **settings: str,
) -> Iterator[ServeProcess]:
    """A healthy ``huddle serve [args]`` for the block; stopped at its end."""
    server = spawn_serve(log_dir, name=name, args=args, **settings)
    try:
        server.wait_healthy(timeout)
        yield server
    finally:
        server.stop()
