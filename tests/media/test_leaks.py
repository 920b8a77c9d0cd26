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
from tests.support.polling import eventually

from .conftest import Call

CYCLES = int(os.environ.get("HUDDLE_LEAK_CYCLES", "100"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def resources() -> tuple[int, int, int]:
    """Tasks, file descriptors and threads in use now (after a full collection)."""
    gc.collect()
    return len(asyncio.all_tasks()), open_fds(), threading.active_count()


async def settled() -> tuple[int, int, int]:
    """:func:`resources` once two samples a poll apart agree (nothing left closing)."""
    samples: list[tuple[int, int, int]] = []

    def steady() -> tuple[int, int, int] | None:
        samples.append(resources())
        return samples[-1] if len(samples) > 1 and samples[-1] == samples[-2] else None

    result: tuple[int, int, int] = await eventually(steady, message="resources settled")
    return result


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

        await eventually(flowing, timeout=30, message="media in every direction")
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
    tasks0, fds0, threads0 = await settled()
    rss0 = rss_bytes()
    started = time.monotonic()
    for _ in range(CYCLES):
        await one_room(config, video_clip, audio_clip)
    elapsed = time.monotonic() - started

    def released() -> bool:
        tasks, fds, threads = resources()
        return tasks <= tasks0 and fds <= fds0 and threads <= threads0

    try:
        await eventually(released, timeout=10, message="tasks, FDs and threads back to baseline")
    except AssertionError:
        names = [t.get_name() for t in asyncio.all_tasks()]
        now = resources()
        raise AssertionError(f"baseline {(tasks0, fds0, threads0)}, now {now}: {names}") from None
    growth = rss_bytes() - rss0
    assert growth < 20 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB over {CYCLES} rooms"
    print(f"{CYCLES} rooms of 3 in {elapsed:.1f} s, RSS growth {growth / 1e6:.1f} MB")
