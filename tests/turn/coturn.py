"""Run the real coturn (/usr/bin/turnserver) on 127.0.0.1 for a test.

The config is turn/turnserver.conf as shipped with tests/turn/overlay.conf
appended (coturn keeps the last value of a single-valued option and adds up
repeated list options such as denied-peer-ip/allowed-peer-ip). The process is
tracked by its pid and ended by the test that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from aioice import stun

from tests.support.polling import eventually

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "turn" / "turnserver.conf"
OVERLAY_CONF = Path(__file__).resolve().parent / "overlay.conf"
TURNSERVER = "/usr/bin/turnserver"
HOST = "127.0.0.1"
SECRET = "coturn-test-secret-0123456789abcdef"
REALM = "huddle.test"


def turnserver_or_skip() -> str:
    """The turnserver path; skip the test without it, or fail under CI=true."""
    path = TURNSERVER if os.access(TURNSERVER, os.X_OK) else shutil.which("turnserver")
    if path is None:
        missing("coturn is not installed (apt-get install -y coturn)")
    return path


def missing(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: coturn tests must run)")
    pytest.skip(message)


@dataclass(frozen=True)
class Coturn:
    host: str
    port: int
    secret: str
    realm: str
    log_file: Path
    pid: int

    def uri(self, transport: str = "udp") -> str:
        return f"turn:{self.host}:{self.port}?transport={transport}"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (coturn listens on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if _bindable(port, (socket.SOCK_STREAM,)):
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def free_relay_range(size: int = 40) -> tuple[int, int]:
    """``size`` consecutive UDP ports free right now, for coturn's relay range."""
    for _ in range(200):
        low = random.randrange(20_000, 30_000)
        if all(_bindable(p, (socket.SOCK_DGRAM,)) for p in range(low, low + size)):
            return low, low + size - 1
    raise RuntimeError("no free UDP relay range on 127.0.0.1")


def write_config(
    directory: Path, *, port: int, relay: tuple[int, int], allow_loopback_peer: bool
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    overlay = OVERLAY_CONF.read_text().format(
        port=port,
        min_port=relay[0],
        max_port=relay[1],
        allow_peer=(
            f"allowed-peer-ip={HOST}"
            if allow_loopback_peer
            else "# no allowed-peer-ip: the shipped deny list covers 127.0.0.0/8"
        ),
        secret=SECRET,
        realm=REALM,
        log_file=directory / "turnserver.log",
        pid_file=directory / "turnserver.pid",
        userdb=directory / "turndb",
    )
    path = directory / "turnserver.conf"
    path.write_text(SHIPPED_CONF.read_text() + "\n# ---- test overlay ----\n" + overlay)
    return path


async def stun_binding_ok(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a STUN Binding request to host:port gets a success response."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Probe(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not answer.done():
                answer.set_result(data)

        def error_received(self, exc: Exception) -> None:
            pass  # ICMP port unreachable while coturn is still starting

    transport, _ = await loop.create_datagram_endpoint(Probe, remote_addr=(host, port))
    try:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        transport.sendto(bytes(request))
        try:
            data = await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            return False
        response = stun.parse_message(data)
        return bool(
            response.message_class == stun.Class.RESPONSE
            and response.transaction_id == request.transaction_id
        )
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def run_coturn(directory: Path, *, allow_loopback_peer: bool = True) -> AsyncIterator[Coturn]:
    """Start coturn with the shipped config plus the test overlay; end it on exit."""
    binary = turnserver_or_skip()
    port = free_port()
    config = write_config(
        directory, port=port, relay=free_relay_range(), allow_loopback_peer=allow_loopback_peer
    )
    process = await asyncio.create_subprocess_exec(
        binary,
        "-c",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    coturn = Coturn(HOST, port, SECRET, REALM, directory / "turnserver.log", process.pid)
    try:

        async def answering() -> bool:
            if process.returncode is not None:
                raise AssertionError(
                    f"turnserver exited with {process.returncode}:\n{coturn.log()[-4000:]}"
                )
            return await stun_binding_ok(HOST, port)

        try:
            await eventually(answering, timeout=15, message="turnserver answering STUN")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{coturn.log()[-4000:]}") from None
        yield coturn
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
