"""A browser's simulcast publish offer, as the Room takes it (media.participant).

Chrome's offer for three encodings carries ``a=rid:<id> send`` lines and
``a=simulcast:send q;h;f`` and no SSRCs; the packets of each layer carry the
rid header extension. aiortc's ``remoteDescription`` is re-serialised from
its own parse and loses those lines: the receive path must read the offer as
sent, or every layer's SSRC replaces the previous one on the same m-line.
"""

from __future__ import annotations

import re
import struct

from aiortc import RTCConfiguration, RTCPeerConnection

from media.config import MediaConfig
from media.loadtest.sfuclient import LocalSignaling
from media.metrics import CountingMediaMetrics
from media.room import Room
from media.rtpheader import URI_MID, URI_REPAIRED_RID, URI_RID
from tests.support.polling import eventually

RIDS = ("q", "h", "f")


def as_chrome_simulcast(offer: str) -> str:
    """An aiortc offer's video m-section made to look like Chrome's with three encodings."""
    sections = offer.split("\r\nm=")
    for i, section in enumerate(sections):
        if not section.startswith("video"):
            continue
        lines = [
            line for line in section.split("\r\n") if not line.startswith(("a=ssrc", "a=msid"))
        ]
        lines = [line for line in lines if line]
        lines += [
            f"a=extmap:10 {URI_RID}",
            f"a=extmap:11 {URI_REPAIRED_RID}",
            *(f"a=rid:{rid} send" for rid in RIDS),
            "a=simulcast:send " + ";".join(RIDS),
        ]
        sections[i] = "\r\n".join(lines)
    return "\r\nm=".join(sections).rstrip("\r\n") + "\r\n"


def rtp(
    ssrc: int, seq: int, pt: int, extensions: bytes, payload: bytes = b"\x10\x00\x00\x00"
) -> bytes:
    padded = extensions + bytes(-len(extensions) % 4)
    header = struct.pack("!BBHII", 0x90, pt, seq, 1000, ssrc)
    header += struct.pack("!HH", 0xBEDE, len(padded) // 4) + padded
    return header + payload


def one_byte(ext_id: int, value: str) -> bytes:
    return bytes([(ext_id << 4) | (len(value) - 1)]) + value.encode()


async def test_layers_of_a_simulcast_publish_offer_are_learnt_by_rid(config: MediaConfig) -> None:
    signaling = LocalSignaling()
    room = Room("call-1", config, signaling, CountingMediaMetrics())
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        client.addTransceiver("audio", direction="sendonly")
        client.addTransceiver("video", direction="sendonly")
        await client.setLocalDescription(await client.createOffer())
        offer = as_chrome_simulcast(client.localDescription.sdp)
        video = offer.split("\r\nm=video")[1]
        mid = re.search(r"a=mid:(\S+)", video).group(1)  # type: ignore[union-attr]
        pt = int(re.search(r"a=rtpmap:(\d+) VP8/", video).group(1))  # type: ignore[union-attr]

        await room.handle_signal("ana", {"type": "offer", "pc": "publish", "sdp": offer})
        answers = [m for _, m in signaling.sent if m.get("type") == "answer"]
        assert len(answers) == 1
        answer = str(answers[0]["sdp"])
        assert "a=simulcast:recv q;h;f" in answer
        mid_id = int(re.search(rf"a=extmap:(\d+) {URI_MID}", answer).group(1))  # type: ignore[union-attr]
        rid_id = int(re.search(rf"a=extmap:(\d+) {URI_RID}", answer).group(1))  # type: ignore[union-attr]

        inbound = room.participants["ana"]._inbound
        assert inbound.rids_of(mid) == RIDS
        ssrcs = {"q": 0x1111, "h": 0x2222, "f": 0x3333}
        for seq in range(3):  # interleaved, as Chrome sends them
            for rid, ssrc in ssrcs.items():
                ext = one_byte(mid_id, mid) + one_byte(rid_id, rid)
                inbound._on_rtp(rtp(ssrc, 100 + seq, pt, ext))
        await eventually(
            lambda: all(inbound.media_ssrc(mid, rid) == ssrcs[rid] for rid in RIDS),
            message="each layer on its own SSRC",
        )
        # A retransmission of layer h on its own RTX SSRC says its layer by the
        # repaired-rid extension.
        rtx_pt = int(re.search(r"a=rtpmap:(\d+) rtx/", video).group(1))  # type: ignore[union-attr]
        rrid_id = int(re.search(rf"a=extmap:(\d+) {URI_REPAIRED_RID}", answer).group(1))  # type: ignore[union-attr]
        ext = one_byte(mid_id, mid) + one_byte(rrid_id, "h")
        inbound._on_rtp(rtp(0x2223, 1, rtx_pt, ext, payload=struct.pack("!H", 101) + b"again"))
        assert inbound.rtx_packets == 1
        assert "unknown_ssrc" not in inbound.dropped
    finally:
        await client.close()
        await room.close()
