"""Room teardown releases everything: tasks, file descriptors, memory."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time

import pytest

from media.config import MediaConfig
from media.loadtest.preencoded import EncodedClip

from .conftest import Call, eventually

CYCLES = int(os.environ.get("HUDDLE_LEAK_CYCLES", "100"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.05)
        gc.collect()


async def one_room(config: MediaConfig, video: EncodedClip, audio: EncodedClip) -> None:
    call = Call(config, video, audio)
    try:
        for name in ("a", "b", "c"):
            await call.join(name)

        def flowing() -> bool:
            for name, client in call.clients.items():
                for other in call.clients:
                    if other != name:
                        stats = client.received_from(other, "video")
                        if stats is None or stats.frames < 1:
                            return False
            return True

        await eventually(flowing, timeout=30, what="media in every direction")
        for name in ("a", "b", "c"):
            await call.leave(name)
        assert call.room.closed
    finally:
        await call.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_join_leave_cycles_return_to_baseline(
    config: MediaConfig, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    # Warm up allocator pools, caches and lazily imported modules first.
    for _ in range(3):
        await one_room(config, video_clip, audio_clip)
    await settle()
    tasks0 = len(asyncio.all_tasks())
    fds0 = open_fds()
    threads0 = threading.active_count()
    rss0 = rss_bytes()
    started = time.monotonic()
    for _ in range(CYCLES):
        await one_room(config, video_clip, audio_clip)
    elapsed = time.monotonic() - started
    await settle()
    assert len(asyncio.all_tasks()) <= tasks0, [t.get_name() for t in asyncio.all_tasks()]
    assert open_fds() <= fds0
    assert threading.active_count() <= threads0
    growth = rss_bytes() - rss0
    assert growth < 20 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB over {CYCLES} rooms"
    print(f"{CYCLES} rooms of 3 in {elapsed:.1f} s, RSS growth {growth / 1e6:.1f} MB")
