"""Trickled ICE candidates that overtake the description they belong to."""

from __future__ import annotations

import logging

import pytest

from media.errors import BadSignal
from media.loadtest.sfuclient import SfuClient
from media.participant import MAX_HELD_CANDIDATES
from media.signals import PUBLISH, SFU_ID, SUBSCRIBE, Message
from tests.support.polling import eventually

from .conftest import Call

KINDS = ("audio", "video")


def split_candidates(sdp: str) -> tuple[str, list[Message]]:
    """``sdp`` without its candidates, and those of its first m-line as a browser trickles them."""
    lines = sdp.split("\r\n")
    mid: str | None = None
    section = -1
    candidates: list[str] = []
    kept: list[str] = []
    for line in lines:
        if line.startswith("m="):
            section += 1
        elif line.startswith("a=mid:") and section == 0:
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            if section == 0:
                candidates.append(line[len("a=") :])
            continue
        if line == "a=end-of-candidates":
            continue
        kept.append(line)
    assert candidates and mid is not None
    return "\r\n".join(kept), [
        {"candidate": c, "sdpMid": mid, "sdpMLineIndex": 0, "usernameFragment": None}
        for c in candidates
    ]


def remote_candidates(sdp: str) -> list[str]:
    return [
        line[len("a=candidate:") :] for line in sdp.split("\r\n") if line.startswith("a=candidate:")
    ]


class Trickler:
    """A client whose ``kind`` description (on ``pc``) goes out after its candidates."""

    def __init__(self, call: Call, participant_id: str, kind: str, pc: str) -> None:
        self.call = call
        self.id = participant_id
        self.kind = kind
        self.pc = pc
        self.candidates: list[str] = []
        self.held_before_description: int | None = None
        self.added_before_description: int | None = None

    async def send(self, message: Message) -> None:
        room = self.call.room
        if message.get("type") != self.kind or message.get("pc") != self.pc or self.candidates:
            await room.handle_signal(self.id, message)
            return
        sdp, candidates = split_candidates(str(message["sdp"]))
        self.candidates = [str(c["candidate"]) for c in candidates]
        for candidate in candidates:
            await room.handle_signal(
                self.id,
                {
                    "type": "ice_candidate",
                    "target_id": SFU_ID,
                    "pc": self.pc,
                    "candidate": candidate,
                },
            )
        participant = room.participants[self.id]
        if self.pc == SUBSCRIBE:
            held = participant._subscribe_candidates
            server_pc = participant._subscribe_pc
        else:
            held = participant._publish_candidates
            server_pc = participant._publish_pc
        self.held_before_description = held.held
        self.added_before_description = sum(
            len(t.receiver.transport.transport.getRemoteCandidates())
            for t in server_pc.getTransceivers()
        )
        await room.handle_signal(self.id, {**message, "sdp": sdp})

    async def join(self) -> SfuClient:
        call = self.call
        client = SfuClient(
            self.id,
            self.send,
            rtc_configuration=call.config.rtc_configuration(),
            video=call._video,
            audio=call._audio,
        )
        call.clients[self.id] = client
        call.signaling.clients[self.id] = client
        await client.publish()
        return client


def no_candidate_warnings(caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and (r.name.startswith("aiortc") or r.name.startswith("media"))
    ]
    assert not bad, bad


async def test_subscribe_candidates_before_the_answer_are_added_after_it(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await call.join("ben")
    trickler = Trickler(call, "ana", "answer", SUBSCRIBE)
    ana = await trickler.join()
    await eventually(
        lambda: all((s := ana.received_from("ben", k)) and s.frames >= 15 for k in KINDS),
        timeout=30,
        message="ana receives ben",
    )
    # Held while the answer was not applied, then added to the connection and
    # its remote description, in the order they came.
    assert trickler.candidates
    assert trickler.held_before_description == len(trickler.candidates)
    assert trickler.added_before_description == 0
    server_pc = call.room.participants["ana"]._subscribe_pc
    assert remote_candidates(server_pc.remoteDescription.sdp)[: len(trickler.candidates)] == [
        c[len("candidate:") :] for c in trickler.candidates
    ]
    assert call.room.participants["ana"]._subscribe_candidates.held == 0
    await eventually(lambda: call.clients["ben"].received_from("ana", "video") is not None)
    no_candidate_warnings(caplog)


async def test_publish_candidates_before_the_offer_are_added_after_it(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await call.join("ben")
    await call.room.add_participant("ana")  # admitted before it offers (Sfu.join)
    trickler = Trickler(call, "ana", "offer", PUBLISH)
    await trickler.join()
    ben = call.clients["ben"]
    await eventually(
        lambda: all((s := ben.received_from("ana", k)) and s.frames >= 15 for k in KINDS),
        timeout=30,
        message="ben receives ana",
    )
    assert trickler.candidates
    assert trickler.held_before_description == len(trickler.candidates)
    assert trickler.added_before_description == 0
    server_pc = call.room.participants["ana"]._publish_pc
    assert remote_candidates(server_pc.remoteDescription.sdp)[: len(trickler.candidates)] == [
        c[len("candidate:") :] for c in trickler.candidates
    ]
    no_candidate_warnings(caplog)


async def test_held_candidates_are_bounded(call: Call) -> None:
    await call.room.add_participant("ana")
    candidate = {
        "candidate": "candidate:1 1 UDP 2130706431 127.0.0.1 40000 typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    message = {"type": "ice_candidate", "target_id": SFU_ID, "candidate": candidate}
    for pc in (PUBLISH, SUBSCRIBE):
        for _ in range(MAX_HELD_CANDIDATES):
            await call.room.handle_signal("ana", {**message, "pc": pc})
        with pytest.raises(BadSignal, match="ICE candidates before"):
            await call.room.handle_signal("ana", {**message, "pc": pc})
