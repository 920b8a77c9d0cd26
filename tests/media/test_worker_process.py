"""The worker's side of the channel, in process: every request is answered (also
one it cannot serve), room changes are reported before the answer, a ``close``
ends it with its rooms closed."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest

from media.config import MediaConfig
from media.workers.channel import Channel
from media.workers.process import WorkerServer
from media.workers.protocol import Frame, WorkerSpec


@pytest.fixture
async def front() -> AsyncIterator[tuple[Channel, WorkerServer, asyncio.Task[None]]]:
    ours, theirs = socket.socketpair()
    worker = WorkerServer(
        WorkerSpec(0, MediaConfig(ice_hosts=("127.0.0.1",)), logging.WARNING),
        await Channel.over(theirs),
    )
    channel = await Channel.over(ours)
    task = asyncio.create_task(worker.run())
    yield channel, worker, task
    await channel.close()
    await asyncio.wait_for(task, 10)


async def next_of(frames: AsyncIterator[Frame], *kinds: str) -> Frame:
    async with asyncio.timeout(10):
        async for frame in frames:
            if frame["kind"] in kinds:
                return frame
    raise AssertionError(f"the channel closed before a {kinds} frame")


async def test_requests_are_answered_and_rooms_reported_first(
    front: tuple[Channel, WorkerServer, asyncio.Task[None]],
) -> None:
    channel, worker, task = front
    frames = channel.frames()
    await channel.send({"kind": "dance", "id": 1})
    await channel.send({"kind": "signal", "id": 2, "call_id": "c1"})  # no message
    for request_id in (1, 2):
        done = await next_of(frames, "done")
        assert done["id"] == request_id and done["error"]["code"] == "sfu_error"
    message = {"type": "subscribe", "target_id": "sfu"}
    await channel.send(
        {"kind": "signal", "id": 3, "call_id": "c1", "participant_id": "ana", "message": message}
    )
    rooms = await next_of(frames, "rooms", "done")
    assert rooms == {"kind": "rooms", "rooms": {"c1": ["ana"]}}
    assert (await next_of(frames, "done")) == {"kind": "done", "id": 3}
    await channel.send({"kind": "left", "id": 4, "call_id": "c1", "participant_id": "bob"})
    assert (await next_of(frames, "done")) == {"kind": "done", "id": 4}

    await channel.send({"kind": "close"})
    await asyncio.wait_for(task, 10)
    assert worker.sfu.members() == {}
