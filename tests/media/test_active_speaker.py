"""Active speaker end to end: real aiortc peers in a Room, levels from aiortc's own sender.

aiortc's ``RTCRtpSender`` writes the ssrc-audio-level extension (RFC 6464)
only for audio it encodes itself (it measures each raw frame), not for
pre-encoded clips: so these publishers send a tone through aiortc's Opus
encoder, one loud and one nearly silent.
"""

from __future__ import annotations

import math
import struct

from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from av import AudioFrame

from media.loadtest.sfuclient import SfuClient, max_bundle
from media.metrics import CountingMediaMetrics
from media.signals import PUBLISH, SFU_ID
from tests.support.polling import eventually

from .conftest import Call


class ToneTrack(AudioStreamTrack):
    """aiortc's paced silence track, playing a 440 Hz tone of ``amplitude`` (0..1) instead."""

    def __init__(self, amplitude: float) -> None:
        super().__init__()
        self.amplitude = amplitude
        self._pcm: dict[float, bytes] = {}

    def _tone(self, samples: int, rate: int) -> bytes:
        pcm = self._pcm.get(self.amplitude)
        if pcm is None:
            values = (
                round(self.amplitude * 32767 * math.sin(2 * math.pi * 440 * i / rate))
                for i in range(samples)
            )
            pcm = self._pcm[self.amplitude] = struct.pack(f"<{samples}h", *values)
        return pcm

    async def recv(self) -> AudioFrame:  # type: ignore[override]
        frame = await super().recv()
        assert isinstance(frame, AudioFrame)
        frame.planes[0].update(self._tone(frame.samples, frame.sample_rate))
        return frame


async def join_with_tone(call: Call, participant_id: str, amplitude: float) -> ToneTrack:
    """A participant publishing a tone (aiortc encodes it) and receiving the others."""

    async def send(message: dict[str, object]) -> None:
        await call.room.handle_signal(participant_id, message)

    rtc = call.config.rtc_configuration()
    client = SfuClient(participant_id, send, rtc_configuration=rtc)
    call.clients[participant_id] = client
    call.signaling.clients[participant_id] = client
    track = ToneTrack(amplitude)
    pc = client.publish_pc = RTCPeerConnection(max_bundle(rtc))
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await send({"type": "offer", "target_id": SFU_ID, "pc": PUBLISH, "sdp": sdp})
    return track


def last_speakers(call: Call, participant_id: str) -> dict[str, object] | None:
    for to, message in reversed(call.signaling.sent):
        if to == participant_id and message["type"] == "speakers":
            return message
    return None


def everyone_hears(call: Call, names: list[str], dominant: str) -> bool:
    for name in names:
        message = last_speakers(call, name)
        if message is None or message["dominant"] != dominant:
            return False
    return True


async def test_participants_are_told_who_speaks(call: Call) -> None:
    ana = await join_with_tone(call, "ana", 0.5)  # about -9 dBov
    bob = await join_with_tone(call, "bob", 0.001)  # about -63 dBov: not speech
    await call.join("cyd", publish=False)
    names = ["ana", "bob", "cyd"]
    await eventually(lambda: everyone_hears(call, names, "ana"), message="ana dominant")
    message = last_speakers(call, "cyd")
    assert message is not None
    speakers = message["speakers"]
    assert isinstance(speakers, list) and [s["participant_id"] for s in speakers] == ["ana"]
    assert 0 < speakers[0]["level"] <= 1
    assert not any(m.get("dominant") == "bob" for _, m in call.signaling.sent)

    # The floor changes hands.
    ana.amplitude, bob.amplitude = 0.001, 0.5
    await eventually(lambda: everyone_hears(call, names, "bob"), message="bob dominant")
    assert isinstance(call.metrics, CountingMediaMetrics)
    assert call.metrics.counts["dominant_speaker_changes"] == 2
