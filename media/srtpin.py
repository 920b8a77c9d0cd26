"""Unprotect incoming SRTP/SRTCP without cffi's per-call copies.

pylibsrtp's ``Session.unprotect`` allocates a cffi buffer, copies the packet
in, calls libsrtp and copies it out, and raises on failure; on the SFU's
receive path that is most of what a packet costs before parsing.
:class:`SrtpReceiver` calls the same libsrtp (pylibsrtp's, by address) from
the C extension (``media._udpsend.SrtpIn``): one copy into the result, and
``None`` instead of an exception for a packet libsrtp refuses. Without the
extension it falls back to pylibsrtp. The private names this needs
(``Session._srtp``, the binding's ``srtp_unprotect``) are reached through
:mod:`media.aiortc_compat`, which guards them.
"""

from __future__ import annotations

from typing import Any

import pylibsrtp

from .aiortc_compat import srtp_context
from .aiortc_compat import srtp_ffi as ffi
from .aiortc_compat import srtp_lib as lib
from .udpout import ACCELERATED, _udpsend


class SrtpReceiver:
    """The receive half of one DTLS transport's SRTP session."""

    def __init__(self, session: pylibsrtp.Session, *, accelerated: bool | None = None) -> None:
        self.session = session  # keeps libsrtp's context alive for the C object
        self._c: Any = None
        use_c = ACCELERATED if accelerated is None else accelerated
        if use_c:
            if _udpsend is None:
                raise RuntimeError("media._udpsend is not built")
            self._c = _udpsend.SrtpIn(
                int(ffi.cast("uintptr_t", srtp_context(session))),
                int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_unprotect"))),
                int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_unprotect_rtcp"))),
            )
            self.rtp = self._c.rtp  # type: ignore[method-assign]
            self.rtcp = self._c.rtcp  # type: ignore[method-assign]

    @property
    def accelerated(self) -> bool:
        return self._c is not None

    @property
    def c_session(self) -> Any:
        """The ``media._udpsend.SrtpIn`` (the C receive path unprotects with it), or None."""
        return self._c

    def rtp(self, data: bytes) -> bytes | None:
        """The plaintext RTP packet, or None if authentication or replay checks fail."""
        try:
            return self.session.unprotect(data)
        except pylibsrtp.Error:
            return None

    def rtcp(self, data: bytes) -> bytes | None:
        """The plaintext compound RTCP packet, or None if refused."""
        try:
            return self.session.unprotect_rtcp(data)
        except pylibsrtp.Error:
            return None
