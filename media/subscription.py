"""Subscriber-side plumbing: one transceiver slot per forwarded track.

A slot pairs a ``sendonly`` transceiver of the subscriber's connection with
its :class:`DownTrack`. Slots are never removed (aiortc can neither remove
nor roll back m-lines): a slot whose source went away becomes ``inactive``
and is reused for the next track of the same kind and codec.
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver

from .aiortc_compat import set_stream_id
from .fastsend import install_fast_rtp
from .forwarder import DownTrack, UpTrack
from .metrics import MediaMetrics

logger = logging.getLogger(__name__)


def codec_preferences(up: UpTrack) -> list[Any]:
    """The publisher's codec, plus RTX for video (or aiortc drops RTX)."""
    caps = RTCRtpSender.getCapabilities(up.kind).codecs
    mime = up.mime_type
    same = [c for c in caps if c.mimeType.lower() == mime]
    if mime == "video/h264":
        wanted = str(up.codec.parameters.get("profile-level-id", "")).lower()
        exact = [c for c in same if str(c.parameters.get("profile-level-id", "")).lower() == wanted]
        same = exact or same
    rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return same + rtx


class Slot:
    """A subscriber transceiver and the down track its sender reads."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        up: UpTrack,
        metrics: MediaMetrics,
        *,
        gso: bool = True,
    ) -> None:
        self.kind = up.kind
        self.mime_type = up.mime_type
        self.down = DownTrack(up.kind, metrics)
        self.transceiver: RTCRtpTransceiver = pc.addTransceiver(self.down, direction="sendonly")
        self.transceiver.setCodecPreferences(codec_preferences(up))
        sender = self.transceiver.sender
        # Packet forwarding instead of aiortc's frame send loop (media.fastsend).
        self.fast = install_fast_rtp(sender, up.kind, gso=gso)
        self.fast.down = self.down
        self.down.sender = self.fast
        self.fast.on_retransmit = metrics.retransmitted
        # The subscriber's RTCP (NACK, PLI/FIR, REMB, RR) is read by
        # media.feedback, which calls the sender's resend/keyframe_wanted.
        self.source: UpTrack | None = None
        self.pending: UpTrack | None = None
        self._set_stream(up)
        self.down.attach(up)
        self.source = up

    @property
    def current(self) -> UpTrack | None:
        """The track this slot carries or will carry after the next answer."""
        return self.pending or self.source

    def can_carry(self, up: UpTrack) -> bool:
        return (
            self.current is None
            and self.kind == up.kind
            and self.mime_type == up.mime_type
            and not self.transceiver.stopped
        )

    def _set_stream(self, up: UpTrack) -> None:
        # msid stream id: the publisher, so a client groups its audio and video.
        set_stream_id(self.transceiver.sender, up.participant_id)

    def reuse(self, up: UpTrack) -> None:
        """Carry ``up`` once the next answer re-enables this transceiver.

        Attaching now would let the still-disabled sender swallow the first
        keyframe.
        """
        self.pending = up
        self.transceiver.direction = "sendonly"
        self._set_stream(up)

    def release(self) -> None:
        """Stop forwarding; the next offer marks the transceiver inactive."""
        self.down.detach()
        self.source = None
        self.pending = None
        self.transceiver.direction = "inactive"

    def activate_pending(self) -> None:
        if self.pending is not None:
            up, self.pending = self.pending, None
            if not up.ended:
                self.down.attach(up)
                self.source = up
            else:
                self.transceiver.direction = "inactive"

    def describe(self) -> dict[str, Any] | None:
        up = self.current
        if up is None:
            return None
        return {
            "participant_id": up.participant_id,
            "stream_id": up.participant_id,
            "track_id": self.down.id,
            "kind": self.kind,
            "source": up.source,
            "mid": self.transceiver.mid,
        }

    def close(self) -> None:
        self.down.stop()
        self.fast.close()
        self.source = None
        self.pending = None
