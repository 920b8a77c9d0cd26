"""One subscriber stream's rewrite and batch: the SFU's hot path, per packet per subscriber.

A *down* turns one incoming RTP packet of its current source into this
subscriber's packet and queues it, protected, for the next send:

- the **keyframe gate**: video starts at a keyframe after every source change;
- the **epoch**: at the first packet of a source, offsets for the sequence
  number, timestamp, VP8 picture id and TL0PICIDX chosen so the subscriber's
  stream continues where the previous source left it (packets from before
  that first one are dropped);
- the **header**: this stream's SSRC and payload type, the rewritten numbers
  and its own header-extension block, with abs-send-time and the publisher's
  audio level written in, in front of the shared payload;
- the **batch**: SRTP-protected datagrams in runs of one size, each run sent
  with one UDP GSO ``sendmsg`` when the frame is complete (:func:`flush`), or
  handed to ``spill`` (TURN pairs) to be sent by the event loop. (The Python
  reference sends one datagram per ``sendto``.) A packet libsrtp refuses is
  taken and lost, as on the network, and counted in ``send_errors``.

:func:`forward` does that for every down of a track at once. The C version
(``media._udpsend.Down``, ``forward``, ``flush``, in ``media/_fanout.c``) runs
the whole loop with no interpreter work per subscriber; :class:`PyDown` here
is the reference it is tested against, and the fallback where the extension
is not built (or ``HUDDLE_UDPSEND_PYTHON=1``).

A packet is described once per incoming packet by :func:`describe` as a
tuple (``PacketTuple``): ``(data, start, end, seq, ts, marker, keyframe,
pid, pid_at, tl0, tl0_at, level)``, -1 where a picture id, TL0PICIDX or audio
level is absent, positions relative to the payload start.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

from .sendlog import monotonic_us
from .udpout import ACCELERATED, MAX_BATCH_BYTES, MAX_SEGMENTS, MAX_TRAILER, DatagramOut, _udpsend

PacketTuple = tuple[bytes, int, int, int, int, bool, bool, int, int, int, int, int]

_HEADER = struct.Struct("!BBHLL")
_NTP_OFFSET = 2208988800
_TWO32 = float(1 << 32)


def ntp_now() -> int:
    """The current NTP time (64-bit fixed point)."""
    return int((time.time() + _NTP_OFFSET) * _TWO32)


class Down(Protocol):
    """What :class:`PyDown` and ``media._udpsend.Down`` both are."""

    spill: Callable[[list[bytes]], None] | None
    ready: bool
    twcc: Any

    def configure(
        self,
        ssrc: int,
        payload_type: int,
        first_byte: int,
        ext: bytes,
        abs_at: int,
        level_at: int,
        sequence_number: int,
        timestamp_origin: int,
        twcc_at: int = -1,
    ) -> None: ...
    def switch(self) -> None: ...
    def flush(self) -> None: ...
    def build(self, packet: PacketTuple, out_seq: int) -> bytes | None: ...
    def send(self, packets: list[bytes]) -> int: ...
    def take_tx(self) -> tuple[int, int]: ...
    @property
    def epoch(self) -> int | None: ...
    @property
    def rtp_timestamp(self) -> int: ...
    @property
    def gated(self) -> bool: ...
    @property
    def packets_sent(self) -> int: ...
    @property
    def octets_sent(self) -> int: ...
    @property
    def send_errors(self) -> int: ...
    @property
    def ntp(self) -> int: ...
    @property
    def seq_offset(self) -> int: ...
    @property
    def sequence_number(self) -> int: ...
    @property
    def ssrc(self) -> int: ...
    @property
    def queued(self) -> int: ...


class PyDown:
    """The reference implementation of a down (see the module docstring)."""

    def __init__(self, video: bool, step: int) -> None:
        self.video = video
        self.step = step
        self.out: DatagramOut | None = None
        self.spill: Callable[[list[bytes]], None] | None = None
        self._ready = False
        self._configured = False
        self.ssrc = 0
        self._pt = 0
        self._first_byte = 0x80
        self._ext = b""
        self._abs_at = -1
        self._level_at = -1
        self._twcc_at = -1
        #: The connection's transport-wide numbering (media.sendlog.PySendLog), if negotiated.
        self.twcc: Any = None
        self.gated = video
        self.epoch: int | None = None
        self.seq_offset = 0
        self._ts_offset = 0
        self._pid_offset = 0
        self._tl0_offset = 0
        self._rewrite_vp8 = False
        self.sequence_number = 0
        self._ts_origin = 0
        self._last: tuple[int, int, int] | None = None  # ts, pid, tl0 as sent (-1: none)
        self.packets_sent = 0
        self.octets_sent = 0
        self.send_errors = 0
        self.ntp = 0
        self._tx_bytes = 0
        self._tx_packets = 0
        self._pending: list[bytes] = []
        self._pending_twcc: list[int] = []  # their transport-wide numbers (-1: none)

    # --- set-up --------------------------------------------------------------

    def configure(
        self,
        ssrc: int,
        payload_type: int,
        first_byte: int,
        ext: bytes,
        abs_at: int,
        level_at: int,
        sequence_number: int,
        timestamp_origin: int,
        twcc_at: int = -1,
    ) -> None:
        """``ext``: the header-extension block (its 4-byte header included);
        ``abs_at`` / ``level_at`` / ``twcc_at``: where in it abs-send-time, the
        audio level and the transport-wide sequence number go, after that
        header (-1: not negotiated)."""
        if (
            len(ext) > 256
            or len(ext) % 4
            or not 0 <= payload_type <= 127
            or abs_at < -1
            or level_at < -1
            or (abs_at >= 0 and (abs_at < 4 or abs_at + 3 > len(ext)))
            or (level_at >= 0 and (level_at < 4 or level_at + 1 > len(ext)))
            or twcc_at < -1
            or (twcc_at >= 0 and (twcc_at < 4 or twcc_at + 2 > len(ext)))
        ):
            raise ValueError("bad stream layout")
        self.ssrc = ssrc
        self._pt = payload_type
        self._first_byte = first_byte
        self._ext = bytes(ext)
        self._abs_at = abs_at
        self._level_at = level_at
        self._twcc_at = twcc_at
        self.sequence_number = sequence_number & 0xFFFF
        self._ts_origin = timestamp_origin & 0xFFFFFFFF
        self._configured = True

    @property
    def ready(self) -> bool:
        return self._ready

    @ready.setter
    def ready(self, ready: bool) -> None:
        if not ready and self.video:
            self.gated = True
            self.epoch = None
        self._ready = ready

    def switch(self) -> None:
        self.flush()
        self.gated = self.video
        self.epoch = None

    @property
    def rtp_timestamp(self) -> int:
        return self._last[0] if self._last is not None else self._ts_origin

    @property
    def queued(self) -> int:
        return len(self._pending)

    def take_tx(self) -> tuple[int, int]:
        tx = self._tx_bytes, self._tx_packets
        self._tx_bytes = self._tx_packets = 0
        return tx

    # --- the hot path -------------------------------------------------------------

    def take(self, p: PacketTuple, ntp: int) -> bool:
        """The gate, the rewrite and the batch for one packet; True if taken."""
        p = _checked(p)
        if not self._ready or self.out is None or not self._configured:
            if self.video:
                self.gated = True
                self.epoch = None
            return False
        seq = p[3]
        if self.gated:
            if not p[6]:
                return False
            self.gated = False
            self._start_epoch(p)
        elif self.epoch is None:
            self._start_epoch(p)
        elif seq != self.epoch and ((seq - self.epoch) & 0xFFFF) >= 0x8000:
            return False
        out_seq = (seq + self.seq_offset) & 0xFFFF
        data = self._write(p, out_seq, ntp)
        if len(data) + MAX_TRAILER > MAX_BATCH_BYTES:
            self.send_errors += 1
            return False
        if len(self._pending) >= MAX_SEGMENTS:
            self.flush()
        self._queue(self._stamp(data))
        if ((out_seq - self.sequence_number) & 0xFFFF) < 0x8000:
            self.sequence_number = (out_seq + 1) & 0xFFFF
            ts = (p[4] + self._ts_offset) & 0xFFFFFFFF
            pid = (p[7] + self._pid_offset) & 0x7FFF if p[7] >= 0 else -1
            tl0 = (p[9] + self._tl0_offset) & 0xFF if p[9] >= 0 else -1
            self._last = (ts, pid, tl0)
        self.packets_sent += 1
        self.octets_sent += p[2] - p[1]
        self.ntp = ntp
        return True

    def _start_epoch(self, p: PacketTuple) -> None:
        seq, ts, pid, tl0 = p[3], p[4], p[7], p[9]
        self.epoch = seq
        self.seq_offset = (self.sequence_number - seq) & 0xFFFF
        last = self._last
        start = self._ts_origin if last is None else last[0] + self.step
        self._ts_offset = (start - ts) & 0xFFFFFFFF
        self._pid_offset = self._tl0_offset = 0
        if pid >= 0 and last is not None and last[1] >= 0:
            self._pid_offset = (last[1] + 1 - pid) & 0x7FFF
        if tl0 >= 0 and last is not None and last[2] >= 0:
            self._tl0_offset = (last[2] + 1 - tl0) & 0xFF
        self._rewrite_vp8 = bool(self._pid_offset or self._tl0_offset)

    def _write(self, p: PacketTuple, out_seq: int, ntp: int) -> bytes:
        data, start, end, _, ts, marker, _, pid, pid_at, tl0, tl0_at, level = p
        header = _HEADER.pack(
            self._first_byte,
            (0x80 | self._pt) if marker else self._pt,
            out_seq,
            (ts + self._ts_offset) & 0xFFFFFFFF,
            self.ssrc,
        )
        ext = self._ext
        if self._abs_at >= 0 or self._level_at >= 0:
            block = bytearray(ext)
            if self._abs_at >= 0:
                at = self._abs_at
                block[at : at + 3] = ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")
            if self._level_at >= 0:
                block[self._level_at] = level if level >= 0 else 0x7F
            ext = bytes(block)
        payload = data[start:end]
        length = end - start
        if self._rewrite_vp8 and (pid >= 0 or tl0 >= 0):
            body = bytearray(payload)
            if pid >= 0 and pid_at >= 0 and pid_at + 2 <= length:
                new = (pid + self._pid_offset) & 0x7FFF
                body[pid_at] = 0x80 | (new >> 8)
                body[pid_at + 1] = new & 0xFF
            if tl0 >= 0 and 0 <= tl0_at < length:
                body[tl0_at] = (tl0 + self._tl0_offset) & 0xFF
            payload = bytes(body)
        return header + ext + payload

    def _stamp(self, data: bytes) -> bytes | tuple[bytes, int]:
        """``data`` numbered with the connection's next transport-wide sequence
        number, and the number; ``data`` alone if it carries none."""
        log, at = self.twcc, self._twcc_at
        if log is None or at < 0 or len(data) < 14 + at or not data[0] & 0x10:
            return data
        other = log.pending
        if other is not None and other is not self:
            log.pending = None
            other.flush()  # numbers leave in order: its queued ones first
        log.pending = self
        seq = log.stamp()
        block = bytearray(data)
        block[12 + at : 14 + at] = seq.to_bytes(2, "big")
        return bytes(block), seq

    def _queue(self, stamped: bytes | tuple[bytes, int]) -> None:
        """Protect one packet into the batch (one libsrtp refuses is lost, counted)."""
        out = self.out
        assert out is not None
        data, seq = stamped if isinstance(stamped, tuple) else (stamped, -1)
        try:
            protected = out.protect(data)
        except Exception:
            self.send_errors += 1
            return
        self._pending.append(protected)
        self._pending_twcc.append(seq)

    def flush(self) -> None:
        if self.twcc is not None and self.twcc.pending is self:
            self.twcc.pending = None
        pending = self._pending
        if not pending:
            return
        self._pending = []
        numbers, self._pending_twcc = self._pending_twcc, []
        log = self.twcc
        if log is not None:  # logged as sent when the batch is
            now = monotonic_us()
            for seq, datagram in zip(numbers, pending, strict=True):
                if seq >= 0:
                    log.record(seq, len(datagram), now)
        out = self.out
        if out is not None and not out.closed and out.has_socket:
            out.send_protected(pending)
        elif self.spill is not None:
            self.spill(pending)
        else:
            self.send_errors += len(pending)
            return
        self._tx_bytes += sum(map(len, pending))
        self._tx_packets += len(pending)

    # --- retransmissions -------------------------------------------------------------

    def build(self, packet: PacketTuple, out_seq: int) -> bytes | None:
        packet = _checked(packet)
        if not self._configured:
            return None
        self.ntp = ntp_now()
        return self._write(packet, out_seq & 0xFFFF, self.ntp)

    def send(self, packets: list[bytes]) -> int:
        if self.out is None:
            return 0
        taken = 0
        for data in packets:
            if len(data) < 12 or len(data) + MAX_TRAILER > MAX_BATCH_BYTES:
                self.send_errors += 1
                continue
            errors = self.send_errors
            self._queue(self._stamp(data))
            taken += self.send_errors == errors
        self.flush()
        return taken


def _checked(p: PacketTuple) -> PacketTuple:
    """``p`` with a picture id or TL0PICIDX whose position lies outside the payload unset."""
    data, start, end, seq, ts, marker, keyframe, pid, pid_at, tl0, tl0_at, level = p
    if not 0 <= start <= end <= len(data):
        raise ValueError("payload bounds outside the packet")
    length = end - start
    if pid >= 0 and not (pid_at >= 0 and pid_at + 2 <= length):
        pid = -1
    if tl0 >= 0 and not (tl0_at >= 0 and tl0_at + 1 <= length):
        tl0 = -1
    return (data, start, end, seq & 0xFFFF, ts & 0xFFFFFFFF, marker, keyframe,
            pid, pid_at, tl0, tl0_at, level)  # fmt: skip


def py_forward(downs: list[Any], packet: PacketTuple, flush: bool) -> int:
    """:func:`forward` in Python, for :class:`PyDown`."""
    ntp = ntp_now()
    taken = 0
    for down in downs:
        if down.take(packet, ntp):
            taken += 1
        if flush:
            down.flush()
    return taken


def py_flush(downs: list[Any]) -> None:
    for down in downs:
        down.flush()


def describe(packet: Any, keyframe: bool, vp8: Any = None, level: int = -1) -> PacketTuple:
    """The packet tuple of a parsed incoming packet (``keyframe``: a decoder can
    start from it; ``vp8``: its VP8 descriptor, if read; ``level``: its audio
    level byte, -1 if none)."""
    pid = pid_at = tl0 = tl0_at = -1
    if vp8 is not None:
        if vp8.picture_id is not None:
            pid, pid_at = vp8.picture_id, vp8.picture_id_at
        if vp8.tl0 is not None:
            tl0, tl0_at = vp8.tl0, vp8.tl0_at
    return (
        packet.data,
        packet.payload_start,
        packet.payload_end,
        packet.sequence_number,
        packet.timestamp,
        packet.marker,
        keyframe,
        pid,
        pid_at,
        tl0,
        tl0_at,
        level,
    )


def py_vp8_packet(packet: Any, level: int) -> PacketTuple | None:
    """The packet tuple of a VP8 packet; None if its descriptor is truncated."""
    from .payload import parse_vp8

    vp8 = parse_vp8(packet.data, packet.payload_start, packet.payload_end)
    return None if vp8 is None else describe(packet, vp8.keyframe, vp8, level)


#: The VP8 reading of the receive path: C where it is built (same result).
vp8_packet: Callable[[Any, int], PacketTuple | None] = (
    _udpsend.vp8_packet if ACCELERATED and _udpsend is not None else py_vp8_packet
)


class Implementation:
    """Which downs a sender makes and which loop fans out to them (C or Python)."""

    def __init__(self, accelerated: bool) -> None:
        if accelerated and _udpsend is None:
            raise RuntimeError("media._udpsend is not built")
        self.accelerated = accelerated
        self.forward: Callable[[list[Any], PacketTuple, bool], int]
        self.flush: Callable[[list[Any]], None]
        if accelerated:
            assert _udpsend is not None
            self.forward = _udpsend.forward
            self.flush = _udpsend.flush
        else:
            self.forward = py_forward
            self.flush = py_flush

    def new_down(self, video: bool, step: int) -> Any:
        if self.accelerated:
            assert _udpsend is not None
            return _udpsend.Down(video, step)
        return PyDown(video, step)

    def attach(self, down: Any, out: DatagramOut | None) -> None:
        """Route ``down`` through ``out`` (None: nowhere to send now)."""
        if self.accelerated:
            down.out = None if out is None else out.c_output
        else:
            down.out = out


C = Implementation(True) if _udpsend is not None else None
PYTHON = Implementation(False)
#: What the SFU uses: C unless it is not built or HUDDLE_UDPSEND_PYTHON=1.
DEFAULT = C if ACCELERATED and C is not None else PYTHON
