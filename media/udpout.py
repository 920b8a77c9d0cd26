"""SRTP-protect RTP packets in place and send them with as few syscalls as possible.

The forwarding path sends every packet once per subscriber, so the fixed cost
of each ``protect`` call and each ``sendto`` syscall is what bounds an SFU's
fan-out. :class:`DatagramOut` cuts both for one subscriber connection:

- **SRTP in place.** Packets are copied into one scratch buffer and protected
  there with libsrtp's ``srtp_protect`` (through pylibsrtp's cffi binding and
  the session aiortc's DTLS transport keyed), instead of pylibsrtp's
  ``Session.protect``, which allocates, copies in and copies out per call.
- **UDP GSO.** The packets of one video frame all have the same size but the
  last (the SFU splits frames that way), so they leave in one ``sendmsg``
  with a ``UDP_SEGMENT`` control message: the kernel cuts the buffer into
  ordinary datagrams (in the NIC, or in software before they hit the wire or
  the receiving socket). Nothing changes for the receiver. Without kernel
  support (Linux < 4.18, a device without checksum offload) the first failure
  switches the connection to one ``sendto`` per packet.

The socket is a duplicate of the selected candidate pair's socket (``dup``),
so sending never goes through the event loop's transport and closing ours
leaves aioice's open. A datagram the socket buffer cannot take right now
(``EAGAIN``) is dropped, as the network would: the subscriber's NACK or PLI
recovers it.

The loop runs in C (``media/_udpsend.c``, built by ``pip install`` where a
compiler is available) or, as a fallback, in Python below: same algorithm,
same results (tested against each other). ``ACCELERATED`` says which.

The private names this needs (pylibsrtp's ``Session._srtp``, its binding's
``srtp_protect``) are reached through :mod:`media.aiortc_compat`, which
guards them.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from types import ModuleType
from typing import Any

from pylibsrtp import Session

from .aiortc_compat import srtp_context
from .aiortc_compat import srtp_ffi as ffi
from .aiortc_compat import srtp_lib as lib

_udpsend: ModuleType | None
try:
    from media import _udpsend
except ImportError:  # not compiled here: the pure-Python loop below
    _udpsend = None

logger = logging.getLogger(__name__)

#: Whether the C send loop is in use (``HUDDLE_UDPSEND_PYTHON=1`` forces Python).
ACCELERATED = _udpsend is not None and os.environ.get("HUDDLE_UDPSEND_PYTHON") != "1"

UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # linux/udp.h
#: Linux's UDP_MAX_SEGMENTS on older kernels (newer ones take 128).
MAX_SEGMENTS = 64
#: Payload bytes per GSO send: well below the 64 KiB UDP limit.
MAX_BATCH_BYTES = 60_000
#: libsrtp's largest trailer (tag + MKI), as pylibsrtp reserves it.
MAX_TRAILER = 16 + 128
_SCRATCH_SIZE = MAX_BATCH_BYTES + 2048
_SEGMENT = struct.Struct("=H")

_GSO_ERRNOS = {errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE}


class _Scratch(threading.local):
    """One protect-and-send buffer per thread (sends finish before returning)."""

    def __init__(self) -> None:
        self.cdata: Any = ffi.new("char[]", _SCRATCH_SIZE)
        self.view = memoryview(ffi.buffer(self.cdata))
        self.length: Any = ffi.new("int *")


_scratch = _Scratch()
_gso_warned = False


class SrtpError(RuntimeError):
    pass


class DatagramOut:
    """Protects and sends one connection's RTP packets to ``addr``.

    ``accelerated``: use the C loop (default: when it is built, see
    ``ACCELERATED``); False forces the Python loop, as the tests compare both.
    """

    def __init__(
        self,
        session: Session,
        transport: Any,
        addr: Any,
        *,
        gso: bool = True,
        accelerated: bool | None = None,
    ) -> None:
        self.session = session
        self.transport = transport
        self.addr = addr
        self._gso = gso
        self._srtp = srtp_context(session)
        self._protect = lib.srtp_protect
        self._sock: socket.socket | None = None
        if transport is not None:
            fd = transport.get_extra_info("socket").fileno()
            self._sock = socket.socket(fileno=os.dup(fd))
            self._sock.setblocking(False)
        self._closed = False
        self._datagrams = 0
        self._syscalls = 0
        self._dropped = 0
        self._error_logged = False
        self._gso_logged = False
        self._c: Any = None
        #: The C output a fan-out down (media.downstream) sends through: ours,
        #: or one that only protects (no socket, or an address C cannot parse).
        self.c_output: Any = None
        use_c = ACCELERATED if accelerated is None else accelerated
        if use_c and _udpsend is None:
            raise RuntimeError("media._udpsend is not built")
        if _udpsend is not None:
            ctx = int(ffi.cast("uintptr_t", self._srtp))
            protect = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))
            if use_c and self._sock is not None:
                try:
                    # The C object keeps the session (which frees libsrtp's
                    # context when collected) alive as long as it needs it.
                    self._c = _udpsend.UdpOut(
                        self._sock.fileno(), addr[0], addr[1], ctx, protect, gso, session
                    )
                except ValueError as exc:
                    # An address the C side does not parse (an IPv6 zone id,
                    # "fe80::1%eth0"): Python's socket module does.
                    logger.debug("C send loop unavailable for %s (%s): using Python", addr, exc)
                else:
                    self.send = self._send_c  # type: ignore[method-assign]
            self.c_output = self._c or _udpsend.UdpOut(-1, "", 0, ctx, protect, False, session)

    @property
    def has_socket(self) -> bool:
        """Whether ``send`` reaches the network (False: protect only, a TURN pair)."""
        return self._sock is not None

    def protect(self, data: bytes) -> bytes:
        """One protected datagram (for a TURN pair's send, or a spilled batch)."""
        return self.session.protect(data)

    def send_protected(self, datagrams: list[bytes]) -> int:
        """Send datagrams protected elsewhere (by a down), in GSO runs; returns bytes sent."""
        if self._sock is None:
            raise ConnectionError("datagram output has no socket")
        sent = 0
        run: list[bytes] = []
        size = 0
        for data in datagrams:
            n = len(data)
            if run and (
                n > len(run[0])
                or len(run[-1]) < len(run[0])
                or len(run) >= MAX_SEGMENTS
                or size + n > MAX_BATCH_BYTES
            ):
                sent += self._flush(memoryview(b"".join(run)), size, len(run[0]), len(run))
                run, size = [], 0
            run.append(data)
            size += n
        if run:
            sent += self._flush(memoryview(b"".join(run)), size, len(run[0]), len(run))
        return sent

    def matches(self, session: Session, transport: Any, addr: Any) -> bool:
        return session is self.session and transport is self.transport and addr == self.addr

    @property
    def accelerated(self) -> bool:
        return self._c is not None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def gso(self) -> bool:
        """Whether runs of packets still leave as one GSO send."""
        return bool(self._c.gso) if self._c is not None else self._gso

    @property
    def datagrams(self) -> int:
        """Datagrams handed to the kernel."""
        return int(self._c.datagrams) if self._c is not None else self._datagrams

    @property
    def syscalls(self) -> int:
        return int(self._c.syscalls) if self._c is not None else self._syscalls

    @property
    def dropped(self) -> int:
        """Datagrams the socket refused (full buffer, send error)."""
        return int(self._c.dropped) if self._c is not None else self._dropped

    def close(self) -> None:
        """Close our duplicate of the socket (idempotent)."""
        self._closed = True
        sock, self._sock = self._sock, None
        if self._c is not None:
            self._c.close()  # forget the descriptor before it can be reused
        if sock is not None:
            sock.close()

    # --- C loop -------------------------------------------------------------

    def _send_c(self, packets: list[bytes]) -> int:
        c = self._c
        sent: int = c.send(packets)
        if c.last_errno or c.gso_errno:
            self._log_c_errors()
        return sent

    def _log_c_errors(self) -> None:
        c = self._c
        if c.gso_errno and not self._gso_logged:
            self._gso_logged = True
            _warn_gso(OSError(c.gso_errno, os.strerror(c.gso_errno)))
        if c.last_errno and not self._error_logged:
            self._error_logged = True
            logger.warning(
                "RTP send to %s failed: %s (dropping)", self.addr, os.strerror(c.last_errno)
            )

    # --- Python loop ----------------------------------------------------------

    def send(self, packets: list[bytes]) -> int:
        """Protect and send ``packets`` in order; returns the protected bytes sent."""
        if self._sock is None:
            raise ConnectionError("datagram output closed")
        scratch = _scratch
        buf = scratch.cdata
        view = scratch.view
        length = scratch.length
        protect = self._protect
        srtp = self._srtp
        total = 0
        off = 0  # end of the batch in the scratch buffer
        count = 0  # packets in the batch
        plain = 0  # plaintext size of the batch's segments
        seg = 0  # protected size of the batch's segments
        closed = False  # the batch ended with a shorter (last) segment
        for data in packets:
            n = len(data)
            if n + MAX_TRAILER > MAX_BATCH_BYTES:
                raise ValueError("RTP packet too large")
            if count and (
                closed
                or n > plain
                or count >= MAX_SEGMENTS
                or off + n + MAX_TRAILER > MAX_BATCH_BYTES
            ):
                total += self._flush(view, off, seg, count)
                off = count = 0
                closed = False
            view[off : off + n] = data
            length[0] = n
            rc = protect(srtp, buf + off, length)
            if rc:
                if count:
                    total += self._flush(view, off, seg, count)
                raise SrtpError(f"srtp_protect failed ({rc})")
            size = length[0]
            if count == 0:
                plain, seg = n, size
            elif n < plain:
                closed = True
            off += size
            count += 1
        if count:
            total += self._flush(view, off, seg, count)
        return total

    def _flush(self, view: memoryview, end: int, seg: int, count: int) -> int:
        """Send ``count`` datagrams laid out every ``seg`` bytes up to ``end``."""
        sock = self._sock
        assert sock is not None
        addr = self.addr
        self._datagrams += count
        if count > 1 and self._gso:
            self._syscalls += 1
            try:
                sock.sendmsg(
                    [view[:end]], [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(seg))], 0, addr
                )
                return end
            except BlockingIOError:
                self._dropped += count
                return 0
            except OSError as exc:
                if exc.errno not in _GSO_ERRNOS:
                    self._failed(exc, count)
                    return 0
                self._gso = False
                _warn_gso(exc)
        sent = 0
        for start in range(0, end, seg):
            stop = min(start + seg, end)
            self._syscalls += 1
            try:
                sock.sendto(view[start:stop], addr)
                sent += stop - start
            except BlockingIOError:
                self._dropped += 1
            except OSError as exc:
                self._failed(exc, 1)
        return sent

    def _failed(self, exc: OSError, count: int) -> None:
        """A send error (unreachable network, ...): drop, as the network would."""
        self._dropped += count
        if not self._error_logged:
            self._error_logged = True
            logger.warning("RTP send to %s failed: %s (dropping)", self.addr, exc)


def _warn_gso(exc: OSError) -> None:
    global _gso_warned
    if not _gso_warned:
        _gso_warned = True
        logger.warning("UDP GSO unavailable (%s): sending one datagram per packet", exc)
