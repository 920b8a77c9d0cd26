"""A subscriber's first allocation can come before any layer arrived: it must not stick."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection

from .test_simulcast import SSRCS, Publish, Publisher, _measure, publish  # noqa: F401


async def test_a_track_allocated_before_its_layers_arrive_is_sent_once_they_do(
    publish: Publish,
) -> None:
    from media.adaptation import SubscriberAdaptation
    from media.feedback import SubscriberFeedback
    from media.subscription import Slot

    up, metrics = publish.up, publish.metrics
    subscriber = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    slot = Slot(subscriber, up, metrics)
    await subscriber.setLocalDescription(await subscriber.createOffer())
    feedback = SubscriberFeedback("sub", lambda ssrc: None, metrics=metrics)

    async def send(message: dict[str, object]) -> None:
        pass

    now = [100.0]
    adaptation = SubscriberAdaptation(
        "sub", feedback, lambda: [slot], send, metrics=metrics, clock=lambda: now[0]
    )
    try:
        await adaptation.tick()  # nothing arrived yet
        pub = Publisher(publish)
        for rid in SSRCS:
            pub.frame(rid, key=True)
        _measure(up, pub, (150_000, 500_000, 1_500_000))
        now[0] += 0.5
        await adaptation.tick()
        pub.frame("f", key=True)
        assert not up.paused(slot.down)
        assert up.layer_of(slot.down) is up.layer("f")
    finally:
        await adaptation.close()
        slot.close()
        await subscriber.close()
