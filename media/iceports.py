"""ICE host candidates bound within a UDP port range (``HUDDLE_ICE_PORTS``).

aioice binds every host candidate's socket to port 0 (any ephemeral port), so a
firewall in front of the SFU would have to open the whole ephemeral range.
With a range set, the sockets aioice creates for host candidates are bound to
a free port of it instead, as mediasoup's ``rtcMinPort``/``rtcMaxPort`` or
Janus's ``rtp_port_range`` do. Each peer connection takes one port per host
address (everything is bundled), so size the range at two ports per
participant a node serves (publish and subscribe), with room to spare.

aioice has no option for it: it calls ``loop.create_datagram_endpoint(...,
local_addr=(address, 0))`` in ``Connection.get_component_candidates``. This
module gives aioice's module a view of :mod:`asyncio` whose running loop binds
such requests in the range (the rest passes through untouched); it is
process-wide, like :func:`media.aiortc_compat.restrict_host_addresses`.
:func:`check` verifies what it relies on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
from typing import Any

import aioice.ice

logger = logging.getLogger(__name__)

_original_asyncio = getattr(aioice.ice, "asyncio", asyncio)

PortRange = tuple[int, int]


def check_range(ports: PortRange) -> None:
    low, high = ports
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"port range {low}-{high} must lie within 1024-65535, low first")


def check() -> None:
    """Raise RuntimeError when aioice no longer looks as this module expects."""
    if getattr(aioice.ice, "asyncio", None) is None or not hasattr(
        aioice.ice.Connection, "get_component_candidates"
    ):
        raise RuntimeError("aioice.ice changed: ICE port ranges cannot be applied")


def restrict_ice_ports(ports: PortRange | None) -> None:
    """Bind ICE host candidates within ``ports`` from now on (None: any port)."""
    if ports is None:
        setattr(aioice.ice, "asyncio", _original_asyncio)  # noqa: B010
        return
    check()
    check_range(ports)
    setattr(aioice.ice, "asyncio", _AsyncioView(ports))  # noqa: B010
    logger.info("ICE host candidates bound within UDP ports %d-%d", *ports)


def bind_in_range(host: str, ports: PortRange) -> socket.socket:
    """A non-blocking UDP socket on ``host`` bound to a free port of ``ports``, tried from
    a random start; OSError(EADDRINUSE) when every port is taken."""
    low, high = ports
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    count = high - low + 1
    start = random.randrange(count)
    for offset in range(count):
        port = low + (start + offset) % count
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        sock.setblocking(False)
        return sock
    raise OSError(errno.EADDRINUSE, f"no free UDP port in {low}-{high} on {host}")


class _AsyncioView:
    """:mod:`asyncio` as aioice's module sees it: the same, but its running loop binds
    host sockets within the range."""

    def __init__(self, ports: PortRange) -> None:
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> _LoopView:
        return _LoopView(asyncio.get_running_loop(), self._ports)


class _LoopView:
    def __init__(self, loop: asyncio.AbstractEventLoop, ports: PortRange) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self, protocol_factory: Any, local_addr: tuple[str, int] | None = None, **kwargs: Any
    ) -> Any:
        if local_addr is None or local_addr[1] != 0 or "sock" in kwargs:
            return await self._loop.create_datagram_endpoint(
                protocol_factory, local_addr=local_addr, **kwargs
            )
        sock = bind_in_range(local_addr[0], self._ports)
        try:
            return await self._loop.create_datagram_endpoint(protocol_factory, sock=sock, **kwargs)
        except BaseException:
            sock.close()
            raise
