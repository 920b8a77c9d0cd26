"""What joining a room costs the server: renegotiations coalesced, set-up work shared.

Real aiortc peers through a Room in one process, ICE on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses

from aiortc import RTCConfiguration, RTCPeerConnection

from media import aiortc_compat
from media.aiortc_compat import (
    _LazyRemoteBitrateEstimator,
    _original_estimator,
    server_peer_connection,
    shares_certificate,
)
from media.config import MediaConfig
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import SfuClient
from media.signals import parse_description
from tests.support.polling import eventually

from .conftest import Call

BURST = ["ben", "cleo", "dan", "eve"]


def receives_video(client: SfuClient, others: list[str]) -> bool:
    for other in others:
        stats = client.received_from(other, "video")
        if stats is None or stats.frames < 1:
            return False
    return True


async def test_publishers_joining_at_once_cost_each_subscriber_one_renegotiation(
    config: MediaConfig, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    # A renegotiation waits this long for the rest of a burst: long enough
    # that four joins started together all land inside it on a busy machine.
    call = Call(dataclasses.replace(config, renegotiation_delay=3.0), video_clip, audio_clip)
    try:
        viewer = await call.join("viewer", publish=False)
        await call.join("ana")
        await eventually(lambda: receives_video(viewer, ["ana"]), message="viewer receives ana")
        participant = call.room.participants["viewer"]
        before = participant.offers_sent
        assert before == 1  # its first offer went out at once

        await asyncio.gather(*(call.join(name) for name in BURST))
        everyone = ["ana", *BURST]
        await eventually(
            lambda: receives_video(viewer, everyone), timeout=40, message="viewer receives all"
        )
        # Four publishers, eight new tracks: one more offer, not one per
        # track or per publisher.
        assert participant.offers_sent - before == 1
        assert {t["participant_id"] for t in participant.subscriptions()} == set(everyone)
        for name in everyone:
            client = call.clients[name]
            others = [n for n in everyone if n != name]
            await eventually(
                lambda c=client, o=others: receives_video(c, o), timeout=40, message=f"{name} media"
            )
        # Every offer is counted by the metric.
        offers = sum(p.offers_sent for p in call.room.participants.values())
        assert call.metrics.counts["subscribe_offers"] == offers
    finally:
        await call.close()


async def test_server_connections_share_one_certificate(call: Call) -> None:
    await call.join("ana")
    await call.join("bob")
    server_pcs = [
        pc for p in call.room.participants.values() for pc in (p._publish_pc, p._subscribe_pc)
    ]
    assert all(shares_certificate(server_pcs[0], pc) for pc in server_pcs)
    # Everyone else still generates its own, as aiortc does.
    client_pcs = [
        pc for c in call.clients.values() for pc in (c.publish_pc, c.subscribe_pc) if pc is not None
    ]
    assert not any(shares_certificate(server_pcs[0], pc) for pc in client_pcs)
    assert not shares_certificate(client_pcs[0], client_pcs[1])
    # ... and DTLS with it works both ways.
    await eventually(
        lambda: (
            receives_video(call.clients["ana"], ["bob"])
            and receives_video(call.clients["bob"], ["ana"])
        ),
        message="media both ways",
    )


async def test_fingerprints_are_the_certificate_s_own() -> None:
    shared = server_peer_connection(RTCConfiguration())
    other = RTCPeerConnection(RTCConfiguration())
    try:
        for pc in (shared, other):
            (certificate,) = pc._RTCPeerConnection__certificates  # type: ignore[attr-defined]
            first = certificate.getFingerprints()
            assert first == certificate.getFingerprints()
            assert {f.algorithm for f in first} == {"sha-256", "sha-384", "sha-512"}
    finally:
        await shared.close()
        await other.close()


def test_lazy_bitrate_estimator_estimates_like_aiortc_s() -> None:
    lazy, real = _LazyRemoteBitrateEstimator(), _original_estimator()
    assert lazy._estimator is None  # nothing built before a packet
    # ~2 Mbit/s of 1200-byte packets over 6 s (abs-send-time in 6.18 fixed point).
    results = []
    for i in range(1200):
        now_ms = 5 * i
        abs_send_time = (now_ms * (1 << 18) // 1000) & 0xFFFFFF
        args = {"abs_send_time": abs_send_time, "payload_size": 1200, "ssrc": 1234}
        results.append(
            (lazy.add(arrival_time_ms=now_ms, **args), real.add(arrival_time_ms=now_ms, **args))
        )
    assert all(a == b for a, b in results)
    assert any(a is not None for a, _ in results)  # it did estimate


async def test_a_validated_client_description_is_parsed_once() -> None:
    client = RTCPeerConnection(RTCConfiguration())
    server = server_peer_connection(RTCConfiguration())
    try:
        client.addTransceiver("video", direction="sendonly")
        await client.setLocalDescription(await client.createOffer())
        sdp = client.localDescription.sdp
        description = parse_description({"sdp": sdp}, "offer")
        assert sdp in aiortc_compat._parsed
        await server.setRemoteDescription(description)  # takes the parse
        assert sdp not in aiortc_compat._parsed
        assert [t.kind for t in server.getTransceivers()] == ["video"]
        # Parsed but never applied: only the latest few are kept.
        for i in range(aiortc_compat._PARSED_KEPT + 5):
            parse_description({"sdp": sdp.replace("s=-", f"s={i}")}, "offer")
        assert len(aiortc_compat._parsed) == aiortc_compat._PARSED_KEPT
    finally:
        await client.close()
        await server.close()
