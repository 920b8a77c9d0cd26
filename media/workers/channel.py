"""One end of the front ↔ worker socket: send frames, read them until EOF."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

from .protocol import Frame, FrameParser, encode

logger = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024


class ChannelClosed(ConnectionError):
    """The other end went away (or the channel was closed here)."""


class Channel:
    """Framed messages over a connected Unix stream socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False

    @classmethod
    async def over(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_SIZE)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed or self._writer.is_closing()

    async def send(self, frame: Frame) -> None:
        """Queue one frame and wait while the socket's buffer is full.
        Raises :class:`ChannelClosed` once the other end is gone."""
        if self.closed:
            raise ChannelClosed("the channel is closed")
        self._writer.write(encode(frame))
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ChannelClosed(str(exc)) from exc

    async def frames(self) -> AsyncIterator[Frame]:
        """Every frame the other end sends, until EOF or a broken stream."""
        parser = FrameParser()
        while not self._closed:
            try:
                data = await self._reader.read(_READ_SIZE)
            except ConnectionError:
                return
            if not data:
                return
            for frame in parser.feed(data):
                yield frame
            if parser.broken is not None:
                logger.error("worker channel broken: %s", parser.broken)
                return

    async def close(self) -> None:
        """Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._writer.wait_closed()
