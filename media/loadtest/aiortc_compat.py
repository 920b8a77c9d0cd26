"""The one module of the load tester that touches private aiortc names.

The load tester's peers (:mod:`media.loadtest.sfuclient`) stay cheap by
reaching into aiortc 1.16's receivers and senders: a forwarding jitter buffer
instead of aiortc's (:mod:`media.loadtest.passthrough`), RTX routed by SSRC, a
pack-only encoder (:mod:`media.loadtest.packer`), header-only RTP counting
(:mod:`media.loadtest.rtpcount`), per-SSRC receive statistics
(:mod:`media.loadtest.peers`) and simulcast layers sent past aiortc's sender
(:mod:`media.loadtest.simulcast`: RTP through the transport's SRTP, RTCP
about those SSRCs routed back). Every private name they use is used here and
nowhere else in ``media/loadtest/`` (``tests/media/test_containment.py`` keeps
it so), and :func:`check_loadtest_aiortc` verifies at import that each still
exists, failing with a ``RuntimeError`` naming each missing one, as
:func:`media.aiortc_compat.check_aiortc` does for the SFU.

Nothing here patches a module global: every hook is set on one receiver,
sender or transport that the load tester created.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter
from aiortc.rtp import RtpPacket

from media.aiortc_compat import fail_if, ice_protocols, missing_names, version_problems

# (owner, where the name must appear, name): see media.aiortc_compat.missing_names.
_REQUIRED: tuple[tuple[Any, str, str], ...] = (
    # replace_jitter_buffer, depayloaded, send_rtcp_pli, receiver_started
    (RTCRtpReceiver, "attr", "_handle_rtp_packet"),
    (RTCRtpReceiver, "code:__init__", "_RTCRtpReceiver__jitter_buffer"),
    (RTCRtpReceiver, "code:_handle_rtp_packet", "_RTCRtpReceiver__jitter_buffer"),
    (RTCRtpReceiver, "code:_handle_rtp_packet", "_data"),
    (RTCRtpReceiver, "attr", "_send_rtcp_pli"),
    (RTCRtpReceiver, "code:_handle_rtp_packet", "_send_rtcp_pli"),
    (RTCRtpReceiver, "code:__init__", "_RTCRtpReceiver__started"),
    (RTCRtpReceiver, "code:receive", "_RTCRtpReceiver__started"),
    # route_rtx_by_ssrc, receiver_rtx_ssrcs, rtp_router
    (RTCRtpReceiver, "code:__init__", "_RTCRtpReceiver__rtx_ssrc"),
    (RTCDtlsTransport, "code:__init__", "_rtp_router"),
    (RtpRouter, "code:__init__", "ssrc_table"),
    (RtpRouter, "code:route_rtp", "ssrc_table"),
    (RtpRouter, "attr", "route_rtp"),
    # on_keyframe_request
    (RTCRtpSender, "attr", "_send_keyframe"),
    (RTCRtpSender, "code:_handle_rtcp_packet", "_send_keyframe"),
    # preset_encoder, vp8_payloads, h264_payloads
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__encoder"),
    (RTCRtpSender, "code:_next_encoded_frame", "_RTCRtpSender__encoder"),
    (RTCRtpSender, "code:_next_encoded_frame", "pack"),
    (Vp8Encoder, "attr", "_packetize"),
    (H264Encoder, "attr", "_packetize"),
    (H264Encoder, "attr", "_split_bitstream"),
    # replace_rtp_handler, rtp_handler, header_extensions_map
    (RTCDtlsTransport, "code:_recv_next", "_handle_rtp_data"),
    (RTCDtlsTransport, "code:_handle_rtp_data", "_rtp_header_extensions_map"),
    (RTCDtlsTransport, "attr", "_handle_rtp_data"),
    # receiver_remote_streams, receiver_rtcp_ssrc, send_receiver_rtcp
    (RTCRtpReceiver, "code:__init__", "_RTCRtpReceiver__remote_streams"),
    (RTCRtpReceiver, "code:_run_rtcp", "_RTCRtpReceiver__remote_streams"),
    (RTCRtpReceiver, "code:_run_rtcp", "_RTCRtpReceiver__rtcp_ssrc"),
    (RTCRtpReceiver, "attr", "_send_rtcp"),
    # disable_receiver_remb
    (RTCRtpReceiver, "code:_handle_rtp_packet", "_RTCRtpReceiver__remote_bitrate_estimator"),
    # send_rtp, route_rtcp_for_ssrc (media.loadtest.simulcast)
    (RTCDtlsTransport, "attr", "_send_rtp"),
    (RtpRouter, "attr", "register_sender"),
    (RTCDtlsTransport, "code:_handle_rtcp_data", "_handle_rtcp_packet"),
)


def check_loadtest_aiortc() -> None:
    """Fail with a clear message unless aiortc provides what the load tester uses."""
    problems = version_problems()
    problems += [f"missing {name}" for name in missing_names(_REQUIRED)]
    fail_if(problems, "media.loadtest: the load tester")


# --- receivers ---------------------------------------------------------------


def receiver_started(receiver: RTCRtpReceiver) -> bool:
    """Whether ``receiver.receive()`` already ran (its jitter buffer is in use)."""
    return bool(getattr(receiver, "_RTCRtpReceiver__started", False))


def replace_jitter_buffer(receiver: RTCRtpReceiver, buffer: Any) -> None:
    """Make ``receiver`` hand its depayloaded packets to ``buffer.add(packet)``.

    ``buffer`` needs aiortc's jitter buffer interface: ``add(packet)``
    returning ``(pli_wanted, frame_or_None)`` and a ``capacity``.
    """
    setattr(receiver, "_RTCRtpReceiver__jitter_buffer", buffer)  # noqa: B010


def depayloaded(packet: RtpPacket) -> bytes:
    """The codec payload of a packet the receiver handed to its jitter buffer."""
    data: bytes = packet._data  # type: ignore[attr-defined]
    return data


def send_rtcp_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> Awaitable[None]:
    """Send a PLI for ``media_ssrc`` from ``receiver``'s RTCP SSRC."""
    return receiver._send_rtcp_pli(media_ssrc)


def receiver_rtx_ssrcs(receiver: RTCRtpReceiver) -> dict[int, int]:
    """RTX SSRC -> media SSRC, as signalled to ``receiver``."""
    rtx: dict[int, int] = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {}) or {}
    return rtx


def receiver_remote_streams(receiver: RTCRtpReceiver) -> dict[int, Any]:
    """``receiver``'s per-SSRC statistics (``StreamStatistics``), by SSRC, mutable.

    aiortc's RTCP loop sends a receiver report for each entry; ``getStats()``
    reports only one SSRC per receiver (RTX overwrites media).
    """
    streams: dict[int, Any] = getattr(receiver, "_RTCRtpReceiver__remote_streams", {})
    return streams


def receiver_rtcp_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC ``receiver`` sends its RTCP from."""
    ssrc: int | None = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
    return ssrc


def send_receiver_rtcp(receiver: RTCRtpReceiver, packet: Any) -> Awaitable[None]:
    """Send one RTCP packet on ``receiver``'s transport."""
    return receiver._send_rtcp(packet)


def disable_receiver_remb(receiver: RTCRtpReceiver) -> None:
    """Stop ``receiver`` estimating and sending its own REMB (one per track).

    A browser sends one REMB for its whole connection, listing every SSRC;
    the SFU takes a REMB as the subscriber's downlink, so per-track REMBs
    (each about its own track) would understate it.
    """
    setattr(receiver, "_RTCRtpReceiver__remote_bitrate_estimator", None)  # noqa: B010


def route_rtx_by_ssrc(receiver: RTCRtpReceiver) -> None:
    """Route this receiver's RTX SSRCs to it.

    aiortc 1.16 registers only the media SSRC with the transport's RTP router
    and routes unknown SSRCs by payload type, which works only while a single
    receiver on the transport uses that RTX payload type: with two bundled
    video tracks (a camera plus a screen share) every retransmission is
    discarded and NACKs never repair anything.
    """
    router = rtp_router(receiver.transport)
    for rtx_ssrc in receiver_rtx_ssrcs(receiver):
        router.ssrc_table[rtx_ssrc] = receiver


# --- DTLS transports ---------------------------------------------------------


def rtp_router(transport: RTCDtlsTransport) -> RtpRouter:
    """The transport's router from SSRC (then mid, then payload type) to receiver."""
    return transport._rtp_router


def header_extensions_map(transport: RTCDtlsTransport) -> Any:
    """The header extension ids the transport parses incoming RTP with."""
    return transport._rtp_header_extensions_map


def rtp_handler(transport: RTCDtlsTransport) -> Callable[[bytes, int], Awaitable[None]]:
    """The transport's current handler of unprotected RTP (aiortc's, or a replacement)."""
    handler: Callable[[bytes, int], Awaitable[None]] = transport._handle_rtp_data
    return handler


def replace_rtp_handler(
    transport: RTCDtlsTransport, handler: Callable[[bytes, int], Awaitable[None]]
) -> None:
    """Hand every unprotected RTP packet of ``transport`` to ``handler(data, arrival_ms)``
    instead of aiortc's parsing and routing."""
    setattr(transport, "_handle_rtp_data", handler)  # noqa: B010


def on_datagram(pc: Any, callback: Callable[[bytes], None]) -> int:
    """Call ``callback(data)`` with each datagram arriving on ``pc``'s ICE sockets, as
    the socket hands it over (before aioice queues it); returns how many sockets
    it was installed on (0 before ICE gathered). Once per connection."""
    count = 0
    for protocol in ice_protocols(pc):
        if getattr(protocol, "_huddle_stamped", False):
            continue
        original = protocol.datagram_received

        def datagram_received(
            data: bytes | str, addr: tuple[Any, ...], original: Any = original
        ) -> None:
            if isinstance(data, bytes):
                callback(data)
            original(data, addr)

        protocol.datagram_received = datagram_received  # type: ignore[method-assign]
        setattr(protocol, "_huddle_stamped", True)  # noqa: B010
        count += 1
    return count


def send_rtp(transport: RTCDtlsTransport, data: bytes) -> Awaitable[None]:
    """Protect one RTP packet with the transport's SRTP and send it.

    Raises ``ConnectionError`` while the transport is not connected.
    """
    return transport._send_rtp(data)


class _RtcpRecipient:
    """What aiortc's RTP router hands RTCP to: ``await _handle_rtcp_packet(packet)``."""

    def __init__(self, callback: Callable[[Any], Awaitable[None]]) -> None:
        self._callback = callback

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        await self._callback(packet)


def route_rtcp_for_ssrc(
    transport: RTCDtlsTransport, ssrc: int, callback: Callable[[Any], Awaitable[None]]
) -> None:
    """Hand ``callback`` each parsed RTCP packet about media SSRC ``ssrc`` (PLI, FIR,
    NACK, REMB, receiver reports) arriving on ``transport``, as aiortc does for
    its own senders: for an SSRC the load tester sends itself (simulcast layers)."""
    rtp_router(transport).register_sender(_RtcpRecipient(callback), ssrc)  # type: ignore[arg-type]


# --- senders -------------------------------------------------------------------


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` (instead of forcing the encoder) for each PLI/FIR ``sender`` gets."""
    setattr(sender, "_send_keyframe", callback)  # noqa: B010


def preset_encoder(sender: RTCRtpSender, encoder: Any) -> None:
    """Give ``sender`` its encoder before first use (aiortc would create its own)."""
    setattr(sender, "_RTCRtpSender__encoder", encoder)  # noqa: B010


def vp8_payloads(frame: bytes, picture_id: int) -> list[bytes]:
    """``frame`` split into VP8 RTP payloads, as aiortc's encoder splits them."""
    payloads: list[bytes] = Vp8Encoder._packetize(frame, picture_id)
    return payloads


def h264_payloads(access_unit: bytes) -> list[bytes]:
    """An Annex-B access unit split into H264 RTP payloads, as aiortc's encoder does."""
    payloads: list[bytes] = H264Encoder._packetize(H264Encoder._split_bitstream(access_unit))
    return payloads


check_loadtest_aiortc()
