"""The worker pool with real worker processes: rooms placed on the least-loaded
worker, each room's messages and events routed to its worker, a worker's errors
raised as the in-process SFU raises them, and a killed worker restarted with its
rooms' participants told ``sfu_session_lost``."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator

import pytest

from media.config import MediaConfig
from media.errors import MediaError
from media.seam import Message, ParticipantLeft, RoomEnded
from media.workers.pool import PoolSettings, WorkerPool
from media.workers.protocol import WorkerSpec
from tests.support.polling import eventually

pytestmark = pytest.mark.slow

SUBSCRIBE: Message = {"type": "subscribe", "target_id": "sfu"}


class Port:
    """The pool's SignalingPort, recording."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, Message]] = []
        self.errors: list[tuple[str, str, str]] = []

    async def send_to(self, call_id: str, participant_id: str, message: Message) -> None:
        self.messages.append((call_id, participant_id, message))

    async def send_error(self, call_id: str, participant_id: str, error: MediaError) -> None:
        self.errors.append((call_id, participant_id, error.code))


@pytest.fixture
def port() -> Port:
    return Port()


@pytest.fixture
async def pool(port: Port) -> AsyncIterator[WorkerPool]:
    media = MediaConfig(ice_hosts=("127.0.0.1",))
    workers = WorkerPool(
        lambda i: WorkerSpec(i, media, logging.WARNING),
        2,
        port,
        PoolSettings(backoff_min_s=0.1, close_timeout_s=5),
    )
    await workers.start()
    yield workers
    await workers.close()


def hosted(pool: WorkerPool) -> dict[int, set[str]]:
    return {link.index: set(link.rooms) for link in pool.live_workers()}


async def test_rooms_go_to_the_least_loaded_worker_and_stay_there(pool: WorkerPool) -> None:
    for call_id in ("c1", "c2", "c3"):
        await pool.handle_signal(call_id, "ana", SUBSCRIBE)
    # c1 on worker 0; c2 on the idle worker 1; c3 ties (one participant each): worker 0.
    assert [pool.worker_of(c) for c in ("c1", "c2", "c3")] == [0, 1, 0]
    # A second participant of c2 goes where c2 is, though worker 1 is now the busier.
    await pool.handle_signal("c2", "bob", SUBSCRIBE)
    await pool.handle_signal("c2", "cyd", SUBSCRIBE)
    assert pool.worker_of("c2") == 1
    await eventually(
        lambda: hosted(pool) == {0: {"c1", "c3"}, 1: {"c2"}}, timeout=5, message="reported"
    )
    assert pool.members()["c2"] == frozenset({"ana", "bob", "cyd"})
    # Worker 1 carries three participants, worker 0 two: the next room goes to 0.
    await pool.handle_signal("c4", "dan", SUBSCRIBE)
    assert pool.worker_of("c4") == 0
    assert pool.has_room("c4") and not pool.has_room("c5")


async def test_events_reach_the_room_on_its_worker(pool: WorkerPool) -> None:
    await pool.handle_signal("c1", "ana", SUBSCRIBE)
    await pool.handle_signal("c1", "bob", SUBSCRIBE)
    await pool.handle_signal("c2", "cyd", SUBSCRIBE)
    await pool.on_event(ParticipantLeft("c1", "ana"))
    await eventually(lambda: pool.members().get("c1") == frozenset({"bob"}), timeout=5)
    await pool.on_event(RoomEnded("c2"))
    assert pool.worker_of("c2") is None
    await eventually(lambda: "c2" not in pool.members(), timeout=5)
    await pool.on_event(RoomEnded("unknown"))  # nothing to do


async def test_what_a_worker_refuses_is_raised_with_its_code(pool: WorkerPool) -> None:
    with pytest.raises(MediaError) as refused:
        await pool.handle_signal("c1", "ana", {"type": "answer", "pc": "subscribe", "sdp": "x"})
    assert refused.value.code == "unknown_participant"
    await pool.handle_signal("c1", "ana", SUBSCRIBE)
    with pytest.raises(MediaError) as bad:
        await pool.handle_signal("c1", "ana", {"type": "dance"})
    assert bad.value.code == "bad_request"


async def test_a_killed_worker_restarts_and_its_rooms_are_told_to_start_over(
    pool: WorkerPool, port: Port
) -> None:
    for call_id, pid in (("c1", "ana"), ("c1", "bob"), ("c2", "cyd")):
        await pool.handle_signal(call_id, pid, SUBSCRIBE)
    doomed = next(link for link in pool.live_workers() if link.index == pool.worker_of("c1"))
    os.kill(doomed.process.pid, signal.SIGKILL)
    await eventually(lambda: len(port.errors) == 2, timeout=10, message="participants told")
    assert sorted(port.errors) == [
        ("c1", "ana", "sfu_session_lost"),
        ("c1", "bob", "sfu_session_lost"),
    ]
    assert pool.worker_of("c1") is None and pool.worker_of("c2") is not None
    await eventually(lambda: len(pool.live_workers()) == 2, timeout=15, message="restarted")
    assert pool.restarts == 1
    # A resume finds no room (none is opened for it); starting over places it anew.
    with pytest.raises(MediaError) as lost:
        await pool.handle_signal("c1", "ana", {"type": "resume", "target_id": "sfu"})
    assert lost.value.code == "sfu_session_lost" and pool.worker_of("c1") is None
    await pool.handle_signal("c1", "ana", SUBSCRIBE)
    await eventually(lambda: pool.members().get("c1") == frozenset({"ana"}), timeout=5)
    await pool.handle_signal("c1", "ana", {"type": "resume", "target_id": "sfu"})  # there
    assert len(port.errors) == 2  # nobody else was told


async def test_close_stops_every_worker(pool: WorkerPool) -> None:
    pids = [link.process.pid for link in pool.live_workers()]
    await pool.handle_signal("c1", "ana", SUBSCRIBE)
    await pool.close()
    await pool.close()  # idempotent
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(MediaError) as refused:
        await pool.handle_signal("c2", "bob", SUBSCRIBE)
    assert refused.value.code == "sfu_unavailable"


async def test_a_stuck_worker_is_killed_and_restarted(pool: WorkerPool, port: Port) -> None:
    pool.settings = PoolSettings(backoff_min_s=0.1, stall_after_s=1.5)
    await pool.handle_signal("c1", "ana", SUBSCRIBE)
    stuck = next(link for link in pool.live_workers() if link.index == pool.worker_of("c1"))
    os.kill(stuck.process.pid, signal.SIGSTOP)  # alive, but silent
    await eventually(lambda: port.errors == [("c1", "ana", "sfu_session_lost")], timeout=10)
    await eventually(lambda: len(pool.live_workers()) == 2, timeout=15, message="restarted")
    assert pool.restarts == 1 and stuck.process.returncode == -signal.SIGKILL
