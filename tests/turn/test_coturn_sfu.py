"""A relay-only participant publishes to and receives from Huddle's SFU through
the real coturn, with credentials from Huddle's HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCBundlePolicy, RTCPeerConnection

from media.config import MediaConfig
from media.loadtest.preencoded import EncodedClip, opus_clip, vp8_clip
from media.loadtest.sfuclient import LocalSignaling, SfuClient
from media.metrics import CountingMediaMetrics
from media.room import Room
from tests.support.polling import eventually
from tests.turn.coturn import Coturn
from tests.turn.huddle import huddle_credentials
from tests.turn.peers import relay_only_config

pytestmark = pytest.mark.coturn


def nominated(pc: RTCPeerConnection | None) -> Any:
    """The aioice pair ICE selected for a max-bundle connection with media."""
    assert pc is not None
    transceiver = pc.getTransceivers()[0]
    return transceiver.receiver.transport.transport._connection._nominated.get(1)


def receives(client: SfuClient, other: str, frames: int) -> bool:
    for kind in ("audio", "video"):
        stats = client.received_from(other, kind)
        if stats is None or stats.frames < frames:
            return False
    return True


async def test_relay_only_participant_through_the_sfu(
    coturn: Coturn, tmp_path: Path, loopback_ice: None
) -> None:
    credentials = await huddle_credentials(coturn, tmp_path, "udp")
    relay = relay_only_config(
        credentials["uris"][0], credentials["username"], credentials["password"]
    )
    relay.bundlePolicy = RTCBundlePolicy.MAX_BUNDLE
    config = MediaConfig(ice_hosts=("127.0.0.1",), ice_servers=())
    video: EncodedClip = vp8_clip(frames=60, width=160, height=120, keyframe_every=30)
    audio: EncodedClip = opus_clip()

    signaling = LocalSignaling()
    room = Room("turn-call", config, signaling, CountingMediaMetrics())
    clients: list[SfuClient] = []
    try:
        for name, rtc in (("ana", relay), ("ben", config.rtc_configuration())):

            async def send(message: dict[str, Any], name: str = name) -> None:
                await room.handle_signal(name, message)

            client = SfuClient(name, send, rtc_configuration=rtc, video=video, audio=audio)
            clients.append(client)
            signaling.clients[name] = client
            await client.publish()
        ana, ben = clients

        async def both_ways() -> bool:
            return receives(ben, "ana", 15) and receives(ana, "ben", 15)

        await eventually(both_ways, timeout=40, message="media both ways through coturn")

        # Each of ana's connections (publish and subscribe) runs over her relay.
        assert ana.publish_pc is not None
        for pc in (ana.publish_pc, ana.subscribe_pc):
            sdp = pc.localDescription.sdp
            assert " typ relay" in sdp and " typ host" not in sdp
            pair = nominated(pc)
            assert pair is not None and pair.local_candidate.type == "relay"
            assert pair.remote_candidate.host == "127.0.0.1"
        # ben's are direct.
        pair = nominated(ben.publish_pc)
        assert pair is not None and pair.local_candidate.type == "host"
    finally:
        for client in clients:
            await client.close()
        await room.close()
    assert credentials["username"] in coturn.log()
