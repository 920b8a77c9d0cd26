"""The one module of the SFU that touches private aiortc, aioice and pylibsrtp names.

aiortc is pinned to exactly 1.16.0 (see ``recipes/aiortc-forwarding.md``): the
SFU keeps aiortc for ICE, DTLS and SDP but runs its own RTP layer, which
reaches into private transport, receiver and sender state. Every such name is
used here (or, until it is contained, in :mod:`media.fastsend`) and nowhere
else in ``media/`` (``tests/media/test_containment.py`` keeps it so; the load
tester's own names are in :mod:`media.loadtest.aiortc_compat`).
:func:`check_aiortc` verifies, at import and again at SFU start-up, that every
such name still exists, and fails with a ``RuntimeError`` naming each missing
one rather than misbehaving later.

This module is the only place that patches module globals, and every patch
is behaviour-preserving for code that does not opt in:

* ``aiortc.rtcrtpreceiver.decoder_worker`` returns at once for receivers whose
  decoder queue is a :class:`DecoderBypass` (see :func:`on_receiver_end`);
  every other receiver in the process decodes as usual.
* ``aioice.ice.get_host_addresses`` is replaced only when
  :func:`restrict_host_addresses` is called with a list of addresses.
* :func:`install_receive_guards` (at import) keeps malformed network input
  from ending a connection's receive loop; valid input sees no difference.
* :func:`install_setup_savings` makes a peer connection cheaper to set up:
  ``aiortc.rtcpeerconnection.RTCCertificate`` hands out one shared DTLS
  certificate only to connections made through :func:`server_peer_connection`
  (every other one generates its own, as before), certificates compute their
  fingerprints once, ``aiortc.rtcrtpreceiver.RemoteBitrateEstimator`` is
  built on a receiver's first packet instead of with every receiver, and
  ``aiortc.sdp.SessionDescription.parse`` hands an SDP text parsed by
  :func:`parse_sdp` (the SFU validating a client's description) to the next
  parse of that very text (aiortc applying it) instead of parsing it again.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aioice.ice
import aioice.utils
import aiortc
import aiortc.rtcdtlstransport
import aiortc.rtcicetransport
import aiortc.rtcpeerconnection
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import aiortc.rtp
import pylibsrtp
import pylibsrtp._binding
from aiortc import (
    RTCCertificate,
    RTCConfiguration,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import HeaderExtensionsMap
from aiortc.sdp import SessionDescription

logger = logging.getLogger(__name__)

AIORTC_VERSION = "1.16.0"

#: pylibsrtp's cffi binding (a private module): its ``ffi`` and libsrtp's
#: ``lib``, for SRTP in place (:mod:`media.udpout`, :mod:`media.srtpin`).
srtp_ffi: Any = pylibsrtp._binding.ffi
srtp_lib: Any = pylibsrtp._binding.lib

# (owner, where the name must appear, name): see missing_names(). The load
# tester's own names are in media.loadtest.aiortc_compat.
_REQUIRED: tuple[tuple[Any, str, str], ...] = (
    # decoder bypass and on_receiver_end: a published track's end signal
    (aiortc.rtcrtpreceiver, "attr", "decoder_worker"),
    (aiortc.rtcrtpreceiver, "attr", "RemoteStreamTrack"),
    (RTCRtpReceiver, "code:__init__", "_RTCRtpReceiver__decoder_queue"),
    (RTCRtpReceiver, "code:__init__", "_track"),
    (RTCRtpReceiver, "code:receive", "decoder_worker"),
    (RTCRtpReceiver, "code:_handle_rtp_packet", "_RTCRtpReceiver__decoder_queue"),
    # negotiated_codecs, accept_transport_cc
    (RTCRtpTransceiver, "code:__init__", "_codecs"),
    (RTCRtpTransceiver, "code:__init__", "_headerExtensions"),
    # set_stream_id: the msid a subscriber's transceiver announces
    (RTCRtpSender, "code:__init__", "_stream_id"),
    (aiortc.rtcpeerconnection, "code:create_media_description_for_transceiver", "_stream_id"),
    # restrict_host_addresses
    (aioice.ice, "attr", "get_host_addresses"),
    # media.fastsend: the SFU's own RTP send loop and retransmission
    (RTCRtpSender, "code:send", "_run_rtp"),
    (RTCRtpSender, "code:_handle_rtcp_packet", "_retransmit"),
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__rtp_started"),
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__rtp_exited"),
    (RTCRtpSender, "code:replaceTrack", "_RTCRtpSender__track"),
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__mid"),
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__rtp_header_extensions_map"),
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__rtx_payload_type"),
    (RTCRtpSender, "code:__init__", "_ssrc"),
    (RTCRtpSender, "code:__init__", "_rtx_ssrc"),
    (RTCRtpSender, "code:__init__", "_enabled"),
    (RTCRtpTransceiver, "code:_setCurrentDirection", "_enabled"),
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__cname"),
    (RTCRtpSender, "code:_run_rtcp", "_RTCRtpSender__ntp_timestamp"),
    (RTCRtpSender, "code:_run_rtcp", "_RTCRtpSender__rtp_timestamp"),
    (RTCRtpSender, "code:_run_rtcp", "_RTCRtpSender__octet_count"),
    (RTCRtpSender, "code:_run_rtcp", "_RTCRtpSender__packet_count"),
    (aiortc.rtcrtpsender, "attr", "random_sequence_number"),
    (aiortc.rtp, "attr", "RTP_HISTORY_SIZE"),
    (HeaderExtensionsMap, "attr", "set"),
    (RTCDtlsTransport, "code:__init__", "_tx_srtp"),
    (RTCDtlsTransport, "code:__init__", "_state"),
    (RTCDtlsTransport, "code:__init__", "_RTCDtlsTransport__tx_bytes"),
    (RTCDtlsTransport, "code:__init__", "_RTCDtlsTransport__tx_packets"),
    (RTCDtlsTransport, "code:_send_rtp", "_tx_srtp"),
    (aiortc.rtcdtlstransport, "attr", "State"),
    (RTCIceTransport, "code:__init__", "_connection"),
    (aioice.ice.Connection, "code:__init__", "_nominated"),
    (aioice.ice.Connection, "code:sendto", "_nominated"),
    (aioice.ice.CandidatePair, "code:__init__", "protocol"),
    (aioice.ice.CandidatePair, "attr", "remote_addr"),
    (aioice.ice, "attr", "StunProtocol"),
    (aioice.ice.StunProtocol, "code:send_data", "transport"),
    # media.fastsend: the SFU's own sender reports
    (RTCRtpSender, "code:send", "_run_rtcp"),
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__rtcp_started"),
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__rtcp_exited"),
    (RTCRtpSender, "code:__init__", "_RTCRtpSender__cname"),
    (RTCRtpSender, "code:_handle_rtcp_packet", "_RTCRtpSender__lsr"),
    (RTCRtpSender, "code:_handle_rtcp_packet", "_RTCRtpSender__lsr_time"),
    (RTCRtpSender, "attr", "_send_rtcp"),
    # media.udpout, media.srtpin: SRTP in place through pylibsrtp's session
    # and binding (srtp_context, srtp_ffi, srtp_lib)
    (pylibsrtp.Session, "code:__init__", "_srtp"),
    (pylibsrtp._binding.lib, "attr", "srtp_protect"),
    (pylibsrtp._binding.lib, "attr", "srtp_unprotect"),
    (pylibsrtp._binding.lib, "attr", "srtp_unprotect_rtcp"),
    # IceRestart: an ICE restart in place
    (aioice.utils, "attr", "random_string"),
    (aioice.ice.Connection, "code:__init__", "_check_list"),
    (aioice.ice.Connection, "code:__init__", "_check_list_done"),
    (aioice.ice.Connection, "code:__init__", "_check_list_state"),
    (aioice.ice.Connection, "code:__init__", "_nominating"),
    (aioice.ice.Connection, "code:__init__", "_remote_candidates"),
    (aioice.ice.Connection, "code:__init__", "_remote_candidates_end"),
    (aioice.ice.Connection, "code:__init__", "_local_username"),
    (aioice.ice.Connection, "code:__init__", "_local_password"),
    (aioice.ice.Connection, "code:__init__", "_early_checks"),
    (aioice.ice.Connection, "code:__init__", "_early_checks_done"),
    (aioice.ice.Connection, "code:__init__", "_closing"),
    (aioice.ice.Connection, "code:request_received", "_early_checks_done"),
    (aioice.ice.Connection, "attr", "check_incoming"),
    (aioice.ice.Connection, "attr", "check_start_task"),
    (aioice.ice.Connection, "attr", "sort_check_list"),
    (aioice.ice.Connection, "attr", "_unfreeze_initial"),
    (aioice.ice.CandidatePair, "attr", "State"),
    (aiortc.rtcicetransport.RTCIceGatherer, "code:__init__", "_remote_candidates_end"),
    (RTCIceTransport, "code:addRemoteCandidate", "_remote_candidates_end"),
    # install_receive_guards
    (HeaderExtensionsMap, "attr", "get"),
    (aioice.ice.Connection, "attr", "data_received"),
    (RTCDtlsTransport, "code:_recv_next", "_recv"),
    # media.inbound: the SFU's own receive path (intercept_srtp, send_srtcp)
    (aioice.ice.Connection, "code:__init__", "_protocols"),
    (aioice.ice.StunProtocol, "attr", "datagram_received"),
    (RTCDtlsTransport, "code:__init__", "_rx_srtp"),
    (RTCDtlsTransport, "code:_recv_next", "_rx_srtp"),
    # install_setup_savings: a shared certificate, fingerprints once, lazy REMB estimator
    (aiortc.rtcpeerconnection, "attr", "RTCCertificate"),
    (RTCPeerConnection, "code:__init__", "RTCCertificate"),
    (RTCPeerConnection, "code:__init__", "generateCertificate"),
    (RTCPeerConnection, "code:__init__", "_RTCPeerConnection__certificates"),
    (RTCCertificate, "attr", "getFingerprints"),
    (RTCCertificate, "code:__init__", "_cert"),
    (aiortc.rtcrtpreceiver, "attr", "RemoteBitrateEstimator"),
    (RTCRtpReceiver, "code:__init__", "RemoteBitrateEstimator"),
    (RTCRtpReceiver, "code:_handle_rtp_packet", "add"),
    (SessionDescription, "attr", "parse"),
    (RTCPeerConnection, "code:setRemoteDescription", "parse"),
)


def missing_names(required: Iterable[tuple[Any, str, str]]) -> list[str]:
    """Which of ``required`` the installed aiortc/aioice/pylibsrtp lack.

    Each entry is ``(owner, where, name)``: ``where`` is ``"attr"`` for a
    class or module attribute, or ``"code:<function>"`` for a name used
    inside that function's code (instance attributes assigned in
    ``__init__``, name-mangled privates, globals).
    """
    missing = []
    for owner, where, name in required:
        label = f"{getattr(owner, '__module__', None) or owner.__name__}."
        label += f"{getattr(owner, '__qualname__', owner.__name__)}"
        if where == "attr":
            if not hasattr(owner, name):
                missing.append(f"{label}.{name}")
            continue
        func_name = where.split(":", 1)[1]
        func = getattr(owner, func_name, None)
        code = getattr(func, "__code__", None)
        if code is None or name not in code.co_names:
            missing.append(f"{label}.{func_name} uses {name}")
    return missing


def version_problems() -> list[str]:
    """Empty if the installed aiortc is the one these names were checked against."""
    if aiortc.__version__ != AIORTC_VERSION:
        return [f"aiortc {aiortc.__version__} installed, {AIORTC_VERSION} required"]
    return []


def fail_if(problems: Sequence[str], user: str) -> None:
    """Raise the ``RuntimeError`` every guard raises, naming each problem."""
    if problems:
        raise RuntimeError(
            f"{user} relies on private aiortc names that this installation "
            "lacks: " + "; ".join(problems) + ". Install aiortc==" + AIORTC_VERSION + "."
        )


def check_aiortc() -> None:
    """Fail with a clear message unless aiortc provides what the SFU uses."""
    problems = version_problems()
    problems += [f"missing {name}" for name in missing_names(_REQUIRED)]
    protect = getattr(srtp_lib, "srtp_protect", None)
    if protect is not None:
        args = [a.cname for a in srtp_ffi.typeof(protect).args]
        if args != ["struct srtp_ctx_t_ *", "void *", "int *"]:
            problems.append(
                f"pylibsrtp's srtp_protect takes ({', '.join(args)}), not libsrtp 2's in-place API"
            )
    fail_if(problems, "media: the SFU")


# --- decoder bypass -------------------------------------------------------

_install_lock = threading.Lock()
_original_decoder_worker: Callable[..., None] | None = None


class DecoderBypass:
    """Marker base class: a receiver decoder queue that needs no decoder thread."""


def _decoder_worker(loop: Any, input_q: Any, output_q: Any, decode_error: Any) -> None:
    if isinstance(input_q, DecoderBypass):
        return  # frames are handed over on the event loop; no thread work
    assert _original_decoder_worker is not None
    _original_decoder_worker(loop, input_q, output_q, decode_error)


def install_decoder_bypass() -> None:
    """Make receivers with a :class:`DecoderBypass` queue skip decoding (idempotent)."""
    global _original_decoder_worker
    with _install_lock:
        if _original_decoder_worker is None:
            check_aiortc()
            _original_decoder_worker = aiortc.rtcrtpreceiver.decoder_worker
            aiortc.rtcrtpreceiver.decoder_worker = _decoder_worker


# --- cheaper connection set-up -------------------------------------------------

#: A shared certificate is replaced after this long (aiortc's are valid for
#: 30 days; a connection keeps the certificate it was made with).
SHARED_CERTIFICATE_LIFETIME = 24 * 3600.0

_sharing: contextvars.ContextVar[bool] = contextvars.ContextVar("huddle_share_cert", default=False)
_shared: tuple[float, RTCCertificate] | None = None
_setup_savings_installed = False


class _SharingCertificate(RTCCertificate):
    """``RTCCertificate`` as ``RTCPeerConnection.__init__`` sees it.

    Inside :func:`server_peer_connection` it returns the process's shared
    certificate; everywhere else it generates a fresh one, as aiortc does.
    Fingerprints (three digests, asked for once per m-line of every SDP
    aiortc writes) are computed once per certificate.
    """

    _fingerprints: list[Any] | None = None

    @classmethod
    def generateCertificate(cls) -> Any:
        global _shared
        if not _sharing.get():
            return super().generateCertificate()
        now = time.monotonic()
        if _shared is None or now - _shared[0] > SHARED_CERTIFICATE_LIFETIME:
            _shared = (now, super().generateCertificate())
        return _shared[1]

    def getFingerprints(self) -> list[Any]:
        if self._fingerprints is None:
            self._fingerprints = super().getFingerprints()
        return list(self._fingerprints)


class _LazyRemoteBitrateEstimator:
    """aiortc's receiver-side REMB estimator, built when the first packet needs it.

    aiortc builds one (two 1000-bucket rate windows) with every video
    receiver, including the receivers of the SFU's ``sendonly`` transceivers
    and of publish connections whose packets never reach aiortc's receiver.
    """

    def __init__(self) -> None:
        self._estimator: Any = None

    def add(self, *args: Any, **kwargs: Any) -> Any:
        if self._estimator is None:
            self._estimator = _original_estimator()
        return self._estimator.add(*args, **kwargs)


_original_estimator: Callable[[], Any] = getattr(  # noqa: B009
    aiortc.rtcrtpreceiver, "RemoteBitrateEstimator"
)


#: SDP texts parsed by :func:`parse_sdp` and not yet applied (oldest first).
_parsed: dict[str, SessionDescription] = {}
_PARSED_KEPT = 32
_original_parse: Callable[[str], SessionDescription] = SessionDescription.parse


def _parse_once(cls: type[SessionDescription], sdp: str) -> SessionDescription:
    parsed = _parsed.pop(sdp, None)
    return parsed if parsed is not None else _original_parse(sdp)


def parse_sdp(sdp: str) -> SessionDescription:
    """Parse ``sdp`` (raising what aiortc's parser raises); aiortc's next parse of it is free.

    The result is aiortc's to apply (and mutate): callers only learn that it parses.
    """
    install_setup_savings()
    parsed = _original_parse(sdp)
    _parsed[sdp] = parsed
    while len(_parsed) > _PARSED_KEPT:  # validated but never applied
        del _parsed[next(iter(_parsed))]
    return parsed


def install_setup_savings() -> None:
    """Patch aiortc's set-up hot spots as the module docstring says (idempotent)."""
    global _setup_savings_installed
    with _install_lock:
        if _setup_savings_installed:
            return
        check_aiortc()
        setattr(aiortc.rtcpeerconnection, "RTCCertificate", _SharingCertificate)  # noqa: B010
        setattr(aiortc.rtcrtpreceiver, "RemoteBitrateEstimator", _LazyRemoteBitrateEstimator)  # noqa: B010
        setattr(SessionDescription, "parse", classmethod(_parse_once))  # noqa: B010
        _setup_savings_installed = True


def server_peer_connection(configuration: RTCConfiguration) -> RTCPeerConnection:
    """A peer connection of the SFU: the process's shared DTLS certificate, no new key.

    One certificate for every connection of a server is what Janus and
    browsers (per origin) do; a fingerprint identifies the server, the DTLS
    handshake's fresh ECDHE keys still give each connection its own SRTP keys.
    """
    install_setup_savings()
    token = _sharing.set(True)
    try:
        return RTCPeerConnection(configuration)
    finally:
        _sharing.reset(token)


def shares_certificate(a: RTCPeerConnection, b: RTCPeerConnection) -> bool:
    """Whether two connections present the same DTLS certificate (for tests)."""
    mine = getattr(a, "_RTCPeerConnection__certificates")  # noqa: B009
    theirs = getattr(b, "_RTCPeerConnection__certificates")  # noqa: B009
    return bool(mine[0] is theirs[0])


# --- the SFU's own receive path ----------------------------------------------


class _EndSignal(DecoderBypass):
    """Stands in for a receiver's decoder queue: only ever sees the stop marker."""

    def __init__(self, on_end: Callable[[], None]) -> None:
        self._on_end: Callable[[], None] | None = on_end

    def put(self, item: Any) -> None:
        if item is None and self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end()

    def get(self) -> None:  # never called: the decoder thread returns at once
        return None


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """The msid stream id a sender announces in the next offer (aiortc keeps it private)."""
    sender._stream_id = stream_id


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[Any]:
    """The codecs a transceiver negotiated (aiortc keeps them private), RTX included."""
    return list(transceiver._codecs)


def srtp_context(session: pylibsrtp.Session) -> Any:
    """libsrtp's ``srtp_t`` of a pylibsrtp session (a cffi pointer).

    Valid while ``session`` lives: keep a reference to it for as long as the
    pointer is used.
    """
    return session._srtp[0]


def on_receiver_end(receiver: RTCRtpReceiver, on_end: Callable[[], None]) -> None:
    """Call ``on_end`` when ``receiver`` stops; it never decodes (no decoder thread work).

    The SFU's receive path takes every packet before aiortc's receiver would
    see it, so the receiver is kept only for its place in aiortc's negotiation
    and its ``stop()``, which is how a removed m-line ends a published track.
    """
    install_decoder_bypass()
    setattr(receiver, "_RTCRtpReceiver__decoder_queue", _EndSignal(on_end))  # noqa: B010


def accept_transport_cc(pc: Any, uri: str) -> list[str]:
    """Answer the remote offer's transport-wide congestion control where it offers it.

    aiortc answers only the header extensions and RTCP feedback it implements
    itself; the SFU's receive path implements transport-cc. Call between
    ``setRemoteDescription(offer)`` and ``createAnswer()``. Returns the mids
    where it was accepted.
    """
    from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpHeaderExtensionParameters
    from aiortc.sdp import SessionDescription

    remote = pc.remoteDescription
    if remote is None:
        return []
    offered = {m.rtp.muxId: m for m in SessionDescription.parse(remote.sdp).media}
    accepted = []
    for transceiver in pc.getTransceivers():
        media = offered.get(transceiver.mid)
        if media is None:
            continue
        ext = next((e for e in media.rtp.headerExtensions if e.uri == uri), None)
        if ext is None:
            continue
        extensions = transceiver._headerExtensions
        if not any(e.uri == uri for e in extensions):
            extensions.append(RTCRtpHeaderExtensionParameters(id=ext.id, uri=uri))
        wants_fb = {
            c.payloadType
            for c in media.rtp.codecs
            if any(fb.type == "transport-cc" for fb in c.rtcpFeedback)
        }
        for codec in transceiver._codecs:
            if codec.payloadType in wants_fb and not any(
                fb.type == "transport-cc" for fb in codec.rtcpFeedback
            ):
                codec.rtcpFeedback.append(RTCRtcpFeedback(type="transport-cc"))
        accepted.append(str(transceiver.mid))
    return accepted


def accept_header_extensions(pc: Any, uris: Iterable[str]) -> list[str]:
    """Answer the remote offer's header extensions ``uris`` where it offers them.

    For the extensions the SFU's receive path reads and aiortc does not know
    (rid and repaired-rid for simulcast). Call between
    ``setRemoteDescription(offer)`` and ``createAnswer()``. Returns the mids
    where at least one was accepted.
    """
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
    from aiortc.sdp import SessionDescription

    remote = pc.remoteDescription
    if remote is None:
        return []
    wanted = set(uris)
    offered = {m.rtp.muxId: m for m in SessionDescription.parse(remote.sdp).media}
    accepted = []
    for transceiver in pc.getTransceivers():
        media = offered.get(transceiver.mid)
        if media is None:
            continue
        extensions = transceiver._headerExtensions
        added = False
        for ext in media.rtp.headerExtensions:
            if ext.uri in wanted and not any(e.uri == ext.uri for e in extensions):
                extensions.append(RTCRtpHeaderExtensionParameters(id=ext.id, uri=ext.uri))
                added = True
        if added:
            accepted.append(str(transceiver.mid))
    return accepted


def add_header_extension(transceiver: Any, ext_id: int, uri: str) -> None:
    """Have ``transceiver``'s sender lay out header extension ``uri`` at ``ext_id``.

    For an extension the SFU completed aiortc's offer with and the answer took
    (transport-cc on subscribe connections): aiortc keeps only the ones it
    implements after applying an answer. Call right after
    ``setRemoteDescription(answer)``. aiortc usually starts the senders after
    that, from the transceiver's list; but a connect still running from an
    earlier answer can start a sender added since with the list as the answer
    left it (two answers close together), so the sender's own map is set too,
    and what the sender already laid out must be laid out again
    (:meth:`media.fastsend.FastRtp.relayout`).
    """
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

    extension = RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri)
    extensions = transceiver._headerExtensions
    if not any(e.uri == uri for e in extensions):
        extensions.append(extension)
    SenderInternals(transceiver.sender).header_extensions_map.configure(
        RTCRtpParameters(headerExtensions=[extension])
    )


def dtls_transport_of(pc: Any) -> RTCDtlsTransport | None:
    """The (bundled) DTLS transport of a connection, once it has transceivers."""
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport is not None:
            return transport  # type: ignore[no-any-return]
    return None


def ice_connection(pc: Any) -> aioice.ice.Connection | None:
    """The aioice connection under a (bundled) peer connection, once it has transceivers."""
    dtls = dtls_transport_of(pc)
    return None if dtls is None else dtls.transport._connection


def ice_protocols(pc: Any) -> list[aioice.ice.StunProtocol]:
    """The sockets' protocols of a connection's ICE transport (where datagrams arrive)."""
    connection = ice_connection(pc)
    return [] if connection is None else list(connection._protocols)


def intercept_srtp(
    dtls: RTCDtlsTransport, on_srtp: Callable[[Any, bytes], None], *, fast: Any = None
) -> None:
    """Hand every SRTP/SRTCP datagram of ``dtls`` to ``on_srtp(rx_session, data)``.

    Installed on the ICE connection under the DTLS transport, so a media
    datagram goes from the socket's ``datagram_received`` to ``on_srtp``
    synchronously, skipping aioice's queue, the DTLS transport's receive task
    and aiortc's RTP parsing, routing and receivers. STUN and DTLS keep their
    usual path; so does SRTP until DTLS has keyed the session. Idempotent.

    With ``fast`` (a ``media._udpsend.Receiver``), each socket's protocol hands
    its datagrams to the C receive path first (``fast.hook``), which takes
    the keyed session's SRTP itself and passes the rest to the hook above's
    Python fallback; ``on_srtp`` keys it on the first SRTP datagram.
    """
    connection = dtls.transport._connection
    if getattr(connection, "_huddle_intercepted", False):
        return
    original = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        session = dtls._rx_srtp
        if session is not None and data and 127 < data[0] < 192:
            on_srtp(session, data)
            return
        original(data, component)

    connection.data_received = data_received  # type: ignore[method-assign]
    setattr(connection, "_huddle_intercepted", True)  # noqa: B010
    # Earlier still: on each socket's protocol, before aioice tries to parse
    # every media datagram as STUN. (The hook above catches what these miss.)
    for protocol in connection._protocols:
        if isinstance(protocol, aioice.ice.StunProtocol):
            _intercept_protocol(protocol, dtls, on_srtp, fast)


def _intercept_protocol(
    protocol: aioice.ice.StunProtocol,
    dtls: RTCDtlsTransport,
    on_srtp: Callable[[Any, bytes], None],
    fast: Any,
) -> None:
    original = protocol.datagram_received

    def datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
        session = dtls._rx_srtp
        if session is not None and data and isinstance(data, bytes) and 127 < data[0] < 192:
            on_srtp(session, data)
            return
        original(data, addr)

    if fast is not None:
        protocol.datagram_received = functools.partial(fast.hook, datagram_received)  # type: ignore[method-assign]
        return
    protocol.datagram_received = datagram_received  # type: ignore[method-assign]


def send_srtcp(dtls: RTCDtlsTransport, packet: bytes) -> Awaitable[None] | None:
    """Protect and send an RTCP packet; returns an awaitable only for a TURN pair.

    Plain UDP pairs are written at once (no task switch); a relayed pair
    returns aioice's send coroutine for the caller to await or schedule.
    Raises ``ConnectionError`` when the transport is not connected.
    """
    if dtls._state != aiortc.rtcdtlstransport.State.CONNECTED or dtls._tx_srtp is None:
        raise ConnectionError("DTLS transport not connected")
    protected = dtls._tx_srtp.protect_rtcp(packet)
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None:
        raise ConnectionError("no nominated ICE pair")
    protocol = pair.protocol
    if type(protocol) is aioice.ice.StunProtocol:
        protocol.transport.sendto(protected, pair.remote_addr)
        return None
    return protocol.send_data(protected, pair.remote_addr)


# --- the SFU's own send path (media.fastsend) ----------------------------------


class SenderInternals:
    """The private state of one ``RTCRtpSender`` whose loops the SFU replaces.

    :class:`media.fastsend.FastRtp` runs a forwarding sender's RTP and RTCP
    loops and answers its NACKs; aiortc keeps negotiating it, stopping it and
    reporting its stats. This is everything FastRtp reads or writes of the
    sender, by name.
    """

    def __init__(self, sender: RTCRtpSender) -> None:
        self.sender = sender

    def install(
        self,
        run_rtp: Callable[[Any], Awaitable[None]],
        run_rtcp: Callable[[], Awaitable[None]],
        retransmit: Callable[[int], Awaitable[None]],
    ) -> None:
        """Replace the sender's RTP loop, RTCP loop and NACK answer (this instance only)."""
        setattr(self.sender, "_run_rtp", run_rtp)  # noqa: B010
        setattr(self.sender, "_run_rtcp", run_rtcp)  # noqa: B010
        setattr(self.sender, "_retransmit", retransmit)  # noqa: B010

    def _get(self, name: str) -> Any:
        return getattr(self.sender, f"_RTCRtpSender__{name}")

    @property
    def header_extensions_map(self) -> HeaderExtensionsMap:
        return self._get("rtp_header_extensions_map")  # type: ignore[no-any-return]

    @property
    def mid(self) -> str | None:
        return self._get("mid")  # type: ignore[no-any-return]

    @property
    def ssrc(self) -> int:
        return int(self.sender._ssrc)

    @property
    def rtx_ssrc(self) -> int:
        return int(self.sender._rtx_ssrc)

    @property
    def rtx_payload_type(self) -> int | None:
        return self._get("rtx_payload_type")  # type: ignore[no-any-return]

    @property
    def cname(self) -> str | None:
        return self._get("cname")  # type: ignore[no-any-return]

    @property
    def enabled(self) -> bool:
        return bool(self.sender._enabled)

    def loop_started(self, which: str) -> None:
        """Tell ``stop()`` that the ``rtp`` or ``rtcp`` loop started."""
        self._get(f"{which}_started").set()

    def loop_exited(self, which: str) -> None:
        """Tell ``stop()`` that the ``rtp`` or ``rtcp`` loop is over (or it hangs)."""
        self._get(f"{which}_exited").set()

    def stop_track(self) -> None:
        """What aiortc's RTP loop does at its end: stop and forget the track."""
        track = self._get("track")
        if track is not None:
            track.stop()
            setattr(self.sender, "_RTCRtpSender__track", None)  # noqa: B010

    def report(self, ntp_timestamp: int, rtp_timestamp: int, packets: int, octets: int) -> None:
        """Copy the send counters where aiortc's stats and RTT computation read them."""
        sender = self.sender
        setattr(sender, "_RTCRtpSender__ntp_timestamp", ntp_timestamp)  # noqa: B010
        setattr(sender, "_RTCRtpSender__rtp_timestamp", rtp_timestamp)  # noqa: B010
        setattr(sender, "_RTCRtpSender__packet_count", packets)  # noqa: B010
        setattr(sender, "_RTCRtpSender__octet_count", octets)  # noqa: B010

    def sender_report_sent(self, lsr: int, at: float) -> None:
        """For the round-trip time aiortc computes from receiver reports."""
        setattr(self.sender, "_RTCRtpSender__lsr", lsr)  # noqa: B010
        setattr(self.sender, "_RTCRtpSender__lsr_time", at)  # noqa: B010

    async def send_rtcp(self, packets: list[Any]) -> None:
        await self.sender._send_rtcp(packets)

    def watch_enabled(self, on_change: Callable[[bool], None]) -> None:
        """Call ``on_change(enabled)`` whenever negotiation sets the sender's direction.

        aiortc flips ``sender._enabled`` (a plain attribute) from
        ``RTCRtpTransceiver._setCurrentDirection``; the sender's class is
        swapped for a subclass whose ``_enabled`` is a property that reports
        each change. Nothing else about the sender changes. Idempotent.
        """
        sender = self.sender
        state = sender.__dict__
        state["_huddle_on_enabled"] = on_change
        if "_huddle_enabled" in state:
            return
        state["_huddle_enabled"] = bool(state.pop("_enabled", True))
        sender.__class__ = _watched_sender_class(type(sender))


_WATCHED_SENDERS: dict[type, type] = {}


def _watched_sender_class(cls: type) -> type:
    watched = _WATCHED_SENDERS.get(cls)
    if watched is not None:
        return watched

    def get(self: Any) -> bool:
        return bool(self.__dict__["_huddle_enabled"])

    def set_(self: Any, value: bool) -> None:
        self.__dict__["_huddle_enabled"] = bool(value)
        on_change = self.__dict__.get("_huddle_on_enabled")
        if on_change is not None:
            on_change(bool(value))

    watched = type(cls.__name__, (cls,), {"_enabled": property(get, set_)})
    watched.__module__ = cls.__module__
    watched.__qualname__ = cls.__qualname__
    _WATCHED_SENDERS[cls] = watched
    return watched


class SendRoute:
    """Where a DTLS transport's RTP goes now: its SRTP session and the selected pair."""

    __slots__ = ("addr", "key", "pair", "session", "udp")

    def __init__(self, session: Any, pair: Any) -> None:
        self.session = session
        self.pair = pair
        self.addr = pair.remote_addr
        #: The pair's datagram transport if it is plain UDP, None for a TURN relay.
        self.udp: Any = (
            pair.protocol.transport if type(pair.protocol) is aioice.ice.StunProtocol else None
        )
        self.key = (id(session), id(pair))

    def send_relayed(self, data: bytes) -> Awaitable[None]:
        """Send one protected datagram through a TURN pair (aioice's coroutine)."""
        return self.pair.protocol.send_data(data, self.addr)  # type: ignore[no-any-return]


def send_route(dtls: RTCDtlsTransport) -> SendRoute | None:
    """The transport's current route, or None while it cannot send RTP.

    None too when someone replaced the transport's ``_send_rtp`` on the
    instance (instrumentation): the SFU's fast path would bypass it.
    """
    if dtls._state is not aiortc.rtcdtlstransport.State.CONNECTED or "_send_rtp" in dtls.__dict__:
        return None
    session = dtls._tx_srtp
    pair = dtls.transport._connection._nominated.get(1)
    if session is None or pair is None:
        return None
    return SendRoute(session, pair)


def add_transport_tx(dtls: RTCDtlsTransport, octets: int, packets: int) -> None:
    """Count what the SFU sent past the DTLS transport in its stats (getStats)."""
    name = "_RTCDtlsTransport__tx_bytes"
    setattr(dtls, name, getattr(dtls, name) + octets)
    name = "_RTCDtlsTransport__tx_packets"
    setattr(dtls, name, getattr(dtls, name) + packets)


# --- ICE restart (aiortc has none) ---------------------------------------------

#: Between two checks a restart starts (RFC 8445's Ta, as aioice's connect()).
_RESTART_PACE = 0.02
#: An ICE restart gives up after this long without a new pair (s); a client
#: whose restart fails starts its session over.
ICE_RESTART_TIMEOUT = 15.0


class IceRestart:
    """ICE restarts (RFC 8445 section 9) of one connected peer connection, in place.

    aiortc starts a connection's ICE agent once and ignores the new
    credentials of later descriptions. This gives the aioice agent under the
    (bundled) connection new local credentials (:meth:`renew_local`, before
    creating the description that carries them), takes the peer's new ones
    (:meth:`set_remote`) and runs new connectivity checks from the same local
    sockets (their candidates stay valid: the server did not move). DTLS,
    SRTP and the old selected pair carry on meanwhile; the first pair
    nominated under the new credentials replaces the old one, which is what
    every send path reads (``_nominated``): aiortc's DTLS transport, RTCP
    (:func:`send_srtcp`) and the SFU's own RTP routes (:func:`send_route`).

    Either role works: as the controlled agent (the peer offered), the peer's
    checks nominate; as the controlling agent, aioice nominates aggressively
    (every check of ours carries USE-CANDIDATE). Checks the peer sends before
    :meth:`set_remote` are answered and kept, then triggered.
    """

    def __init__(self, pc: Any, name: str) -> None:
        self._pc = pc
        self._name = name
        self._old: Any = None
        self._pacer: asyncio.Task[Any] | None = None
        self._started = 0.0
        self._waiter: asyncio.Future[float] | None = None

    @property
    def running(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    def _connection(self) -> aioice.ice.Connection:
        dtls = dtls_transport_of(self._pc)
        if (
            dtls is None
            or dtls.transport.state != "completed"
            or dtls._state is not (aiortc.rtcdtlstransport.State.CONNECTED)
        ):
            raise ConnectionError(f"the {self._name} connection is not connected")
        return dtls.transport._connection

    def renew_local(self) -> None:
        """New local credentials, no checks, no remote candidates: the next
        local description carries the credentials. Raises ``ConnectionError``
        unless the connection is established (ICE completed, DTLS connected)."""
        connection = self._connection()
        self._stop_pacer()
        for pair in connection._check_list:
            if pair.task is not None:
                pair.task.cancel()
        connection._check_list = []
        connection._check_list_done = False
        connection._check_list_state = asyncio.Queue()
        connection._nominating = set()
        connection._remote_candidates = []
        connection._remote_candidates_end = False
        self._pc_remote_candidates_reset()
        connection._local_username = aioice.utils.random_string(4)
        connection._local_password = aioice.utils.random_string(22)
        # The peer's new username fragment comes with its description: accept
        # any until then, holding its checks (answered) for set_remote.
        connection.remote_username = None
        connection._early_checks.clear()
        connection._early_checks_done = False
        self._old = connection._nominated.get(1)
        self._started = time.monotonic()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
        self._waiter = asyncio.get_running_loop().create_future()

    def _pc_remote_candidates_reset(self) -> None:
        dtls = dtls_transport_of(self._pc)
        if dtls is not None:
            dtls.transport.iceGatherer._remote_candidates_end = False

    def set_remote(
        self, username: str, password: str, timeout: float = ICE_RESTART_TIMEOUT
    ) -> None:
        """The peer's new credentials: check, nominate, switch (in the background).

        Gives up after ``timeout`` s (the old pair, if it still works, goes on)."""
        connection = self._connection()
        if self._waiter is None:
            raise ConnectionError(f"no ICE restart of the {self._name} connection is under way")
        connection.remote_username = username
        connection.remote_password = password
        # Candidates trickled since renew_local are paired already.
        connection.sort_check_list()
        connection._unfreeze_initial()
        held = list(connection._early_checks)
        connection._early_checks.clear()
        connection._early_checks_done = True
        for check in held:
            connection.check_incoming(*check)
        self._stop_pacer()
        self._pacer = asyncio.get_running_loop().create_task(
            self._pace(connection, timeout), name=f"ICE restart {self._name}"
        )

    async def wait(self) -> float:
        """Seconds from renew_local to the new pair; ``TimeoutError`` if none came."""
        if self._waiter is None:
            raise ConnectionError(f"no ICE restart of the {self._name} connection is under way")
        return await asyncio.shield(self._waiter)

    async def _pace(self, connection: aioice.ice.Connection, within: float) -> None:
        waiter = self._waiter
        assert waiter is not None
        deadline = time.monotonic() + within
        waiting, frozen = (
            aioice.ice.CandidatePair.State.WAITING,
            aioice.ice.CandidatePair.State.FROZEN,
        )
        while time.monotonic() < deadline:
            pair = connection._nominated.get(1)
            if pair is not None and pair is not self._old and pair.nominated:
                if not waiter.done():
                    waiter.set_result(time.monotonic() - self._started)
                return
            if connection._closing:
                break
            # Like aioice's _check_periodic, but on after an old pair "completed" the list.
            for state in (waiting, frozen):
                pair = next((p for p in connection._check_list if p.state == state), None)
                if pair is not None:
                    connection.check_start_task(pair)
                    break
            await asyncio.sleep(_RESTART_PACE)
        if not waiter.done():
            waiter.set_exception(TimeoutError(f"no {self._name} ICE pair within {within:g} s"))
            waiter.exception()  # retrieved: wait() is optional

    def _stop_pacer(self) -> None:
        if self._pacer is not None and not self._pacer.done():
            self._pacer.cancel()
        self._pacer = None

    async def close(self) -> None:
        """Stop checking (idempotent); the connection's own close stops the rest."""
        pacer, self._pacer = self._pacer, None
        if pacer is not None and not pacer.done():
            pacer.cancel()
            await asyncio.gather(pacer, return_exceptions=True)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()


# --- ICE host addresses ---------------------------------------------------

_original_get_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


def restrict_host_addresses(hosts: Sequence[str]) -> None:
    """Offer only ``hosts`` as ICE host candidates, process-wide.

    An empty sequence restores aioice's own behaviour (every non-loopback
    interface). aioice never offers 127.0.0.1 by itself, so tests and
    benchmarks pass ``["127.0.0.1"]``. This is process-wide because aioice
    looks the function up as a module global for every connection.
    """
    if not hosts:
        setattr(aioice.ice, "get_host_addresses", _original_get_host_addresses)  # noqa: B010
        return
    allowed = list(hosts)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [h for h in allowed if (":" in h and use_ipv6) or (":" not in h and use_ipv4)]

    setattr(aioice.ice, "get_host_addresses", get_host_addresses)  # noqa: B010
    logger.info("ICE host addresses restricted to %s", ", ".join(allowed))


# --- receive-path guards --------------------------------------------------

_original_extensions_get = HeaderExtensionsMap.get
_original_data_received = aioice.ice.Connection.data_received


def _extensions_get(self: HeaderExtensionsMap, profile: int, value: bytes) -> Any:
    try:
        return _original_extensions_get(self, profile, value)
    except struct.error as exc:  # an extension element of the wrong size
        raise ValueError(f"malformed RTP header extension: {exc}") from exc


def _data_received(self: aioice.ice.Connection, data: bytes, component: int) -> None:
    if data:  # an empty datagram carries nothing for anyone
        _original_data_received(self, data, component)


def install_receive_guards() -> None:
    """Drop, not die on, two kinds of input a peer controls (idempotent).

    aiortc 1.16 ends a DTLS transport's receive loop, and with it the
    connection, on any exception but ``ConnectionError``:

    * ``RtpPacket.parse`` lets ``struct.error`` out for a header extension of
      the wrong size (abs-send-time, toffset, audio level, transport-cc)
      where the transport drops packets that raise ``ValueError``: now it is one;
    * an empty UDP datagram is not STUN, so aioice hands it up as data and
      ``_recv_next`` reads ``data[0]``: anyone who can reach the port could
      end the connection. aioice now drops empty datagrams.
    """
    with _install_lock:
        setattr(HeaderExtensionsMap, "get", _extensions_get)  # noqa: B010
        setattr(aioice.ice.Connection, "data_received", _data_received)  # noqa: B010


check_aiortc()
install_receive_guards()
