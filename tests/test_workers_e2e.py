"""``huddle serve --workers 2`` (embedded: SQLite, no Redis) with real aiortc peers
(the load tester's ``SignaledPeer``).

- Two SFU rooms of three publishers land on different worker processes and
  media flows both ways in each.
- SIGKILL of one worker mid-call: it is restarted; its room's peers get
  ``sfu_session_lost``, publish again and receive media again within 5 s; the
  other room never notices; the call record stays as it was (active, nobody
  left), also after the disconnect grace period.
- SIGTERM of the front with live rooms: its workers close them and exit; SIGKILL
  of the front: its workers die with it (no orphans either way).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from media.loadtest.peers import SignaledPeer
from media.loadtest.preencoded import EncodedClip
from tests.conftest import TEST_SECRET
from tests.support.api import Api, User
from tests.support.polling import eventually
from tests.support.serve import ServeProcess, huddle_serve

pytestmark = pytest.mark.slow

GRACE_S = 2.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    with huddle_serve(
        tmp_path,
        args=("--workers", "2"),
        HUDDLE_DATABASE_URL=f"sqlite:///{tmp_path}/huddle.db",
        HUDDLE_JWT_SECRET=TEST_SECRET,
        HUDDLE_DEV="1",
        HUDDLE_ICE_HOSTS="127.0.0.1",
        HUDDLE_ICE_PORTS="47000-47199",  # one range for the node: its workers share it
        HUDDLE_INITIATE_PER_MINUTE="1000",
        HUDDLE_DISCONNECT_GRACE=str(GRACE_S),
    ) as running:
        yield running


class Room:
    def __init__(self, call_id: str, users: list[User], peers: list[SignaledPeer]) -> None:
        self.call_id = call_id
        self.users = users
        self.peers = peers

    def flowing(self, more_than: int = 10) -> bool:
        """Everyone receives audio and video from both others."""
        return all(
            receives(peer, other.user_id, more_than)
            for peer in self.peers
            for other in self.users
            if other.user_id != peer.user_id
        )


def receives(peer: SignaledPeer, other: str, more_than: int) -> bool:
    stats = [peer.media.received_from(other, kind) for kind in ("audio", "video")]
    return all(s is not None and s.frames > more_than for s in stats)


@pytest.fixture
async def http(server: ServeProcess) -> AsyncIterator[tuple[aiohttp.ClientSession, Api]]:
    async with aiohttp.ClientSession(base_url=server.base_url) as session:
        yield session, Api(session)  # type: ignore[arg-type]


@pytest.fixture
async def opened() -> AsyncIterator[list[SignaledPeer]]:
    peers: list[SignaledPeer] = []
    yield peers
    for peer in peers:
        await peer.close()


async def open_room(
    server: ServeProcess,
    api: Api,
    tag: str,
    clips: tuple[EncodedClip, EncodedClip],
    opened: list[SignaledPeer],
) -> Room:
    users = await api.users(*(f"{name}{tag}" for name in ("ana", "bob", "cyd")))
    call = await api.group_call(users[0], *users[1:])
    assert call["mode"] == "sfu"
    call_id = str(call["call_id"])
    for user in users[1:]:
        await api.action(call_id, "join", user)
    video, audio = clips
    peers = []
    for user in users:
        peer = await SignaledPeer.connect(
            server.base_url,
            call_id,
            user.token,
            user.user_id,
            video=video,
            audio=audio,
            sfu_messages_only=True,
        )
        opened.append(peer)
        peers.append(peer)
        await peer.signaling.receive("mode", timeout=10)
        await peer.publish()
    return Room(call_id, users, peers)


def placed_on(server: ServeProcess, call_id: str) -> int:
    """The worker the front's pool placed the room on last (its log line)."""
    found = re.findall(rf"Room\({call_id}\) placed on media worker (\d+)", server.log())
    assert found, server.tail()
    return int(found[-1])


def worker_pid(server: ServeProcess, index: int) -> int:
    found = re.findall(rf"media worker {index} up \(pid (\d+)\)", server.log())
    assert found, server.tail()
    return int(found[-1])


async def scrape(session: aiohttp.ClientSession) -> str:
    async with session.get("/metrics") as response:
        assert response.status == 200
        return await response.text()


def sample(metrics: str, line: str) -> bool:
    return any(row.startswith(line) for row in metrics.splitlines())


async def test_two_rooms_land_on_two_workers_and_media_flows_in_both(
    server: ServeProcess,
    http: tuple[aiohttp.ClientSession, Api],
    clips: tuple[EncodedClip, EncodedClip],
    restricted_ice: None,
    opened: list[SignaledPeer],
) -> None:
    session, api = http
    first = await open_room(server, api, "1", clips, opened)
    second = await open_room(server, api, "2", clips, opened)
    await eventually(lambda: first.flowing() and second.flowing(), timeout=40, message="media")
    assert {placed_on(server, first.call_id), placed_on(server, second.call_id)} == {0, 1}

    async def one_room_each() -> bool:
        text = await scrape(session)
        return all(
            sample(text, f'video_call_sfu_rooms_active{{worker="{i}"}} 1.0')
            and sample(text, f'video_call_sfu_participants_active{{worker="{i}"}} 3.0')
            for i in (0, 1)
        )

    await eventually(one_room_each, timeout=10, message="each worker reports its room")
    text = await scrape(session)
    assert sample(text, "video_call_sfu_workers_up 2.0")
    assert sample(text, 'huddle_worker_process_cpu_seconds_total{worker="1"}')
    assert sample(text, 'video_call_sfu_forwarded_packets_total{kind="video",worker="0"}')

    # SIGTERM with both rooms live: the workers close their rooms and exit with the front.
    pids = [worker_pid(server, i) for i in (0, 1)]
    assert await asyncio.to_thread(server.stop) == 0, server.tail()
    assert all(gone(pid) for pid in pids)
    assert "media worker 0 stopped" in server.log() and "media worker 1 stopped" in server.log()


async def test_a_killed_worker_restarts_and_its_room_resumes_within_5_s(
    server: ServeProcess,
    http: tuple[aiohttp.ClientSession, Api],
    clips: tuple[EncodedClip, EncodedClip],
    restricted_ice: None,
    opened: list[SignaledPeer],
) -> None:
    session, api = http
    doomed_room = await open_room(server, api, "1", clips, opened)
    other_room = await open_room(server, api, "2", clips, opened)
    await eventually(
        lambda: doomed_room.flowing() and other_room.flowing(), timeout=40, message="media"
    )
    index = placed_on(server, doomed_room.call_id)
    assert placed_on(server, other_room.call_id) != index

    killed_at = time.monotonic()
    os.kill(worker_pid(server, index), signal.SIGKILL)
    await eventually(
        lambda: all(p.restarts >= 1 for p in doomed_room.peers),
        timeout=5,
        message="every peer got sfu_session_lost and started over",
    )
    await eventually(doomed_room.flowing, timeout=10, message="media again")
    gap = time.monotonic() - killed_at
    print(f"media flowing again {gap:.2f} s after the worker was killed")
    assert gap < 5.0

    # The worker came back; the other room never noticed.
    async def restarted() -> bool:
        text = await scrape(session)
        return sample(text, "video_call_sfu_workers_up 2.0") and sample(
            text, "video_call_sfu_worker_restarts_total 1.0"
        )

    await eventually(restarted, timeout=15, message="the worker restarted")
    assert all(p.restarts == 0 and not p.failed for p in other_room.peers)
    seen = other_room.peers[0].media.received_from(other_room.users[1].user_id, "video")
    assert seen is not None
    frames = seen.frames
    await eventually(lambda: seen.frames > frames + 20, timeout=10, message="other room flows")

    # The call record: still active, nobody left, also after the grace period.
    await asyncio.sleep(GRACE_S + 1)  # a negative needs time to pass
    call = await api.status(doomed_room.call_id, doomed_room.users[0])
    assert call["status"] == "active"
    assert all(p["left_at"] is None for p in call["participants"]), call["participants"]
    assert all(not p.failed for p in doomed_room.peers), [p.failures for p in doomed_room.peers]


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it counts)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_the_workers_die_with_a_killed_front(server: ServeProcess) -> None:
    pids = [worker_pid(server, i) for i in (0, 1)]
    assert not any(gone(pid) for pid in pids)
    server.process.kill()
    await eventually(lambda: all(gone(pid) for pid in pids), timeout=10, message="no orphans")
