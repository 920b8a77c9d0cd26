"""The SFU forwards encoded frames: no codec is ever opened for forwarding."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiortc.codecs
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pytest
from aiortc.codecs import h264, opus, vpx

from media.loadtest.sfuclient import SfuClient
from tests.support.polling import eventually

from .conftest import Call

CODEC_CLASSES = [
    vpx.Vp8Decoder,
    vpx.Vp8Encoder,
    opus.OpusDecoder,
    opus.OpusEncoder,
    h264.H264Decoder,
    h264.H264Encoder,
]


@pytest.fixture
def codec_counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts every aiortc codec instantiation and factory call in the process."""
    counts: Counter[str] = Counter()
    for cls in CODEC_CLASSES:
        original_init = cls.__init__

        def init(self: Any, *args: Any, _orig: Any = original_init, _n: str = cls.__name__) -> None:
            counts[_n] += 1
            _orig(self, *args)

        monkeypatch.setattr(cls, "__init__", init)
    for module in (aiortc.codecs, aiortc.rtcrtpreceiver, aiortc.rtcrtpsender):
        for name in ("get_decoder", "get_encoder"):
            if hasattr(module, name):
                original = getattr(module, name)

                def factory(codec: Any, _orig: Any = original, _n: str = name) -> Any:
                    counts[_n] += 1
                    return _orig(codec)

                monkeypatch.setattr(module, name, factory)
    yield counts


def all_flowing(call: Call, frames: int) -> bool:
    for name, client in call.clients.items():
        for other in call.clients:
            if other == name:
                continue
            for kind in ("audio", "video"):
                stats = client.received_from(other, kind)
                if stats is None or stats.frames < frames:
                    return False
    return True


async def test_three_peers_exchange_video_without_codecs(
    call: Call, codec_counts: Counter[str]
) -> None:
    for name in ("ana", "ben", "cleo"):
        await call.join(name)
    await eventually(lambda: all_flowing(call, 60), message="2 s of media everywhere")
    assert sum(codec_counts.values()) == 0, dict(codec_counts)


async def test_a_decoding_peer_in_the_same_process_still_decodes(
    call: Call, codec_counts: Counter[str]
) -> None:
    await call.join("ana")
    viewer: SfuClient = await call.join("viewer", decode=True)

    def decoded() -> bool:
        stats = viewer.received_from("ana", "video")
        return stats is not None and stats.decoded >= 10

    await eventually(decoded, message="viewer decodes ana's video")
    # Only the viewer's receivers opened decoders; nothing encoded anywhere.
    assert codec_counts["Vp8Decoder"] >= 1
    assert codec_counts["Vp8Encoder"] == codec_counts["OpusEncoder"] == 0
    ana = call.clients["ana"].received_from("viewer", "video")
    assert ana is not None and ana.decoded == 0
