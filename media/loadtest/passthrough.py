"""Pass-through receive path: an ``RTCRtpReceiver`` that yields encoded frames.

Installed per receiver (only the ones that opt in: the load tester's and the
tests' non-decoding subscribers); every other receiver in the process keeps
decoding normally. The receiver keeps its NACK generation, RTX unwrapping,
REMB and receiver reports; only its jitter buffer is replaced by a forwarding
buffer (:mod:`media.loadtest.reassembly`) and its decoder thread by a no-op
(:func:`media.aiortc_compat.on_receiver_end`). The private names this needs
are reached through :mod:`media.loadtest.aiortc_compat`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpTransceiver

from media.aiortc_compat import negotiated_codecs, on_receiver_end

from .aiortc_compat import (
    receiver_started,
    replace_jitter_buffer,
    route_rtx_by_ssrc,
    send_rtcp_pli,
)
from .frames import EncodedFrame
from .reassembly import AudioForwardingBuffer, VideoForwardingBuffer

logger = logging.getLogger(__name__)


class PassthroughReceiver:
    """Encoded frames out of one aiortc receiver, plus PLI back to its sender."""

    def __init__(
        self,
        transceiver: RTCRtpTransceiver,
        on_frame: Callable[[EncodedFrame], None],
        on_end: Callable[[], None] = lambda: None,
        on_loss: Callable[[], None] | None = None,
        incomplete_timeout: float = 0.2,
    ) -> None:
        receiver: RTCRtpReceiver = transceiver.receiver
        if receiver_started(receiver):
            raise RuntimeError("install the pass-through before the receiver starts")
        codecs = [c for c in negotiated_codecs(transceiver) if c.name.lower() != "rtx"]
        if not codecs:
            raise ValueError("transceiver has no negotiated codec")
        self.kind: str = transceiver.kind
        self.codec = codecs[0]
        self.mime_type: str = self.codec.mimeType.lower()
        self.clock_rate: int = self.codec.clockRate
        self._receiver = receiver
        names = {int(c.payloadType or 0): c.name.lower() for c in codecs}
        self._buffer: AudioForwardingBuffer | VideoForwardingBuffer
        if self.kind == "audio":
            self._buffer = AudioForwardingBuffer(names, self.clock_rate, on_frame)
        else:
            self._buffer = VideoForwardingBuffer(
                names,
                self.clock_rate,
                on_frame,
                on_loss or self._loss_default,
                incomplete_timeout,
            )
        replace_jitter_buffer(receiver, self._buffer)
        on_receiver_end(receiver, on_end)
        original_receive = receiver.receive

        async def receive(parameters: Any) -> None:
            await original_receive(parameters)
            route_rtx_by_ssrc(receiver)

        receiver.receive = receive  # type: ignore[method-assign]

    @property
    def media_ssrc(self) -> int | None:
        """SSRC of the incoming media, known once the first packet arrived."""
        return self._buffer.ssrc

    @property
    def frames_dropped(self) -> int:
        if isinstance(self._buffer, VideoForwardingBuffer):
            return self._buffer.frames_dropped
        return 0

    async def send_pli(self) -> bool:
        """Ask the remote sender for a keyframe; False if no media seen yet."""
        ssrc = self._buffer.ssrc
        if ssrc is None:
            return False
        await send_rtcp_pli(self._receiver, ssrc)
        return True

    def _loss_default(self) -> None:
        # Without an owner to rate-limit, nothing asks for a keyframe: the
        # remote end will see the freeze through its own feedback.
        pass
