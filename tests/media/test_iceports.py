"""ICE host candidates bound within ``HUDDLE_ICE_PORTS``: real aiortc connections through a
real room, every candidate port in the range; a full range is an error, not a hang."""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Iterator

import pytest

from media.config import MediaConfig
from media.iceports import bind_in_range, restrict_ice_ports
from media.loadtest.preencoded import EncodedClip
from tests.support.polling import eventually

from .conftest import Call


def free_range(size: int) -> tuple[int, int]:
    """``size`` consecutive UDP ports on 127.0.0.1 nobody holds right now."""
    for _ in range(50):
        low = random.randrange(20000, 30000)
        held: list[socket.socket] = []
        try:
            for port in range(low, low + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return low, low + size - 1
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no free port range found")


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    chosen = free_range(40)
    restrict_ice_ports(chosen)
    yield chosen
    restrict_ice_ports(None)


def candidate_ports(sdp: str) -> list[int]:
    return [
        int(line.split()[5])
        for line in sdp.splitlines()
        if line.startswith("a=candidate:") and " udp " in line.lower()
    ]


async def test_every_candidate_of_a_call_is_in_the_range(
    ports: tuple[int, int], config: MediaConfig, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    call = Call(config, video_clip, audio_clip)
    try:
        ana = await call.join("ana")
        bob = await call.join("bob")

        def flowing() -> bool:
            stats = [c.received_from(o, "video") for c, o in ((ana, "bob"), (bob, "ana"))]
            return all(s is not None and s.frames > 5 for s in stats)

        await eventually(flowing, message="media both ways")
        sdps = [m["sdp"] for _, m in call.signaling.sent if "sdp" in m]
        for client in (ana, bob):
            for pc in (client.publish_pc, client.subscribe_pc):
                if pc is not None and pc.localDescription is not None:
                    sdps.append(pc.localDescription.sdp)
        found = [p for sdp in sdps for p in candidate_ports(str(sdp))]
        assert found, "no candidates seen"
        low, high = ports
        assert all(low <= p <= high for p in found), (found, ports)
    finally:
        await call.close()


def test_a_full_range_is_an_error() -> None:
    low, high = free_range(2)
    taken = [bind_in_range("127.0.0.1", (low, high)) for _ in range(2)]
    try:
        assert sorted(s.getsockname()[1] for s in taken) == [low, high]
        with pytest.raises(OSError) as caught:
            bind_in_range("127.0.0.1", (low, high))
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        for sock in taken:
            sock.close()


def test_a_bad_range_is_refused() -> None:
    with pytest.raises(ValueError):
        MediaConfig(ice_ports=(5000, 4000))
    with pytest.raises(ValueError):
        restrict_ice_ports((80, 90))
