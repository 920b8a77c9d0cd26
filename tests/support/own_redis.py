"""A redis-server of the test's own (never the shared one), to stop and restart."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

from redis.asyncio import Redis

from tests.support.polling import eventually
from tests.support.serve import free_port
from tests.support.services import unreachable


class OwnRedis:
    """``redis-server --port <free> --save ''`` in ``folder``; :meth:`stop` kills it."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unreachable("redis-server", FileNotFoundError("redis-server is not installed"))
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._process = subprocess.Popen(
            [binary, *arguments, "--appendonly", "no", "--dir", str(self._folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def start(self) -> None:
        self._spawn()
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except Exception:  # not up yet (connection refused, loading)
                return False

        try:
            await eventually(answers, timeout=5, message=f"redis-server on {self.url}")
        finally:
            await client.aclose()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.send_signal(signal.SIGCONT)  # a stopped process dies only when resumed
            process.kill()
            process.wait(timeout=10)
