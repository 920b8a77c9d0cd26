"""A Redis and a Postgres of the test's own, to stop, restart and freeze mid-call.

The shared services (tests/support/services.py) must never be disturbed, so
fault tests start their own: ``redis-server`` on a free loopback port with no
persistence (a restart comes back empty, as ``compose.yaml`` runs it), and a
Postgres cluster made with ``initdb`` in a temporary directory, run by
``pg_ctl`` on a free port (as the ``postgres`` user when the tests run as root,
since Postgres refuses to run as root). A missing binary skips the test (fails
it under ``CI=true``), like an unreachable shared service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.polling import eventually_sync
from tests.support.serve import free_port
from tests.support.services import unreachable


class OwnRedis:
    """``redis-server --save '' --appendonly no`` on a free port; restarts empty."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unreachable("redis-server", FileNotFoundError("redis-server not on PATH"))
        self._binary = binary
        self._workdir = workdir
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = (self._workdir / f"redis-{self.port}.log").open("ab")
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        eventually_sync(self.ping, timeout=10, message=f"redis-server on {self.port}")

    def ping(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def keys(self, pattern: str) -> list[str]:
        client = redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)
        try:
            return sorted(client.scan_iter(pattern))
        finally:
            client.close()

    def set(self, key: str, value: str) -> None:
        client = redis.Redis(port=self.port, socket_timeout=2)
        try:
            client.set(key, value)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGKILL: gone at once, and (no persistence) everything it held is lost."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)


class OwnPostgres:
    """A throwaway Postgres cluster (``initdb`` + ``pg_ctl``) on a free port."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else shutil.which("initdb")
        if initdb is None:
            unreachable("initdb", FileNotFoundError("no /usr/lib/postgresql/*/bin/initdb"))
        self._bin = Path(initdb).parent
        self.port = free_port()
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self._root = Path(tempfile.mkdtemp(prefix="huddle-pg-"))
        self._data = self._root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self._root, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb", "-D", str(self._data), "-A", "trust", "-U", "postgres", "--no-sync",
            "-E", "UTF8",
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as, str(self._bin / tool), *args],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout!r} {result.stderr!r}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            "pg_ctl", "-D", str(self._data), "-o", options, "-l", str(self._root / "log"),
            "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast``: disconnect everyone and shut down; ``immediate``: like a crash."""
        self._run("pg_ctl", "-D", str(self._data), "-m", mode, "-w", "-t", "30", "stop")

    def postmaster_pid(self) -> int:
        return int((self._data / "postmaster.pid").read_text().split()[0])

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: connections stay open, nothing answers."""
        for pid in self._tree():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._tree():
            os.kill(pid, signal.SIGCONT)

    def _tree(self) -> list[int]:
        root = self.postmaster_pid()
        children = subprocess.run(
            ["pgrep", "-P", str(root)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [root, *(int(pid) for pid in children)]

    def log(self) -> str:
        path = self._root / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self._root, ignore_errors=True)


@contextlib.contextmanager
def own_redis(workdir: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


class RawWebSocket:
    """A signaling client over a bare socket that the test controls byte by byte:
    frozen (sends and reads nothing after the handshake) or never reading (only
    sends), with a tiny receive buffer so the server's writes back up at once."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    async def open(cls, port: int, call_id: str, token: str) -> RawWebSocket:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /v1/calls/ws/signaling?call_id={call_id} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        head = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    break
                head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            sock.close()
            raise RuntimeError(f"upgrade refused: {head[:200]!r}")
        return cls(sock)

    async def send_text(self, text: str) -> None:
        """One masked text frame (client frames must be masked, RFC 6455 5.3)."""
        payload = text.encode()
        mask = os.urandom(4)
        header = bytearray([0x81])
        if len(payload) < 126:
            header.append(0x80 | len(payload))
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self._sock, bytes(header) + mask + masked)

    def close(self) -> None:
        self._sock.close()

    async def send_bytes(self, data: bytes) -> None:
        """Bytes as they are, for frames that break RFC 6455 on purpose."""
        await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read frames until the server's close frame; its code (None: no code, or EOF)."""
        loop = asyncio.get_running_loop()
        buffer = b""

        async def need(count: int) -> bool:
            nonlocal buffer
            while len(buffer) < count:
                chunk = await loop.sock_recv(self._sock, 65536)
                if not chunk:
                    return False
                buffer += chunk
            return True

        async with asyncio.timeout(timeout):
            while await need(2):
                opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
                offset = 2
                if length == 126:
                    if not await need(4):
                        return None
                    length, offset = struct.unpack("!H", buffer[2:4])[0], 4
                elif length == 127:
                    if not await need(10):
                        return None
                    length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
                if not await need(offset + length):
                    return None
                payload, buffer = buffer[offset : offset + length], buffer[offset + length :]
                if opcode == 0x8:
                    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else None
        return None
