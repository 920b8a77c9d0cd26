"""Active speaker end to end: real aiortc peers in a Room, levels from aiortc's own sender;
and the per-packet level counters of an audio up track.

aiortc's ``RTCRtpSender`` writes the ssrc-audio-level extension (RFC 6464)
only for audio it encodes itself (it measures each raw frame), not for
pre-encoded clips: so these publishers send a tone through aiortc's Opus
encoder, one loud and one nearly silent.
"""

from __future__ import annotations

import math
import struct

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from av import AudioFrame

from media.forwarder import UpTrack
from media.inbound import PublisherInbound
from media.loadtest.sfuclient import SfuClient, max_bundle
from media.metrics import CountingMediaMetrics
from media.rtpheader import parse_rtp
from media.signals import PUBLISH, SFU_ID
from media.speakers import SPEECH_LEVEL
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


async def test_audio_up_tracks_count_levels_for_the_monitor() -> None:
    """The three per-packet counters, exactly (the C receive path must match them)."""
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("audio", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(client.localDescription)
    await server.setLocalDescription(await server.createAnswer())
    inbound = PublisherInbound("test", metrics=CountingMediaMetrics(), remb_bitrate=1_500_000)
    inbound.configure(server)
    (transceiver,) = server.getTransceivers()
    up = UpTrack(
        "ana",
        transceiver,
        inbound,
        pli_min_interval=0.5,
        metrics=CountingMediaMetrics(),
        on_ended=lambda up: None,
    )
    level_id = up.audio_level_id
    assert level_id is not None
    try:
        for seq, level in enumerate([0x80 | 10, 30, 0x80 | SPEECH_LEVEL, SPEECH_LEVEL + 1, 127]):
            header = struct.pack("!BBHII", 0x90, 111, seq, seq * 960, 0x1234)
            header += struct.pack("!HH", 0xBEDE, 1) + bytes([level_id << 4, level, 0, 0])
            up.on_packet(parse_rtp(header + b"opus"))
        up.on_packet(parse_rtp(struct.pack("!BBHII", 0x80, 111, 9, 0, 0x1234) + b"opus"))
        loud = (127 - 10) + (127 - 30) + (127 - SPEECH_LEVEL)
        assert up.take_audio_levels() == (5, 3, loud)
        assert up.take_audio_levels() == (0, 0, 0)
    finally:
        await up.close()
        await inbound.close()
        await client.close()
        await server.close()
