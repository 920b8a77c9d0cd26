"""The SFU's own RTCP: the packets it sends upstream and what it reads back.

Builders for receiver reports (RFC 3550 6.4.2), generic NACK (RFC 4585 6.2.1),
PLI (6.3.1) and REMB (draft-alvestrand-rmcat-remb), each returning the bytes of
one RTCP packet (concatenate them for a compound packet), and
:func:`iter_rtcp`, a total parser of compound packets that yields
``(packet_type, fmt_or_count, packet_bytes)`` and stops at the first malformed
header instead of raising.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_RTPFB = 205
RTCP_PSFB = 206
FMT_NACK = 1
FMT_TWCC = 15
FMT_PLI = 1
FMT_FIR = 4
FMT_REMB = 15

_HEADER = struct.Struct("!BBH")
_REPORT = struct.Struct("!IIIIII")
_SR = struct.Struct("!IIIIII")  # ssrc, ntp msw, ntp lsw, rtp ts, packets, octets


def _header(count: int, packet_type: int, body_len: int) -> bytes:
    return _HEADER.pack(0x80 | count, packet_type, (body_len + 4) // 4 - 1)


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report about a source we receive."""

    ssrc: int
    fraction_lost: int  # 1/256 units, since the previous report
    cumulative_lost: int  # may be negative (duplicates), 24-bit signed
    highest_sequence: int  # extended (cycles << 16 | seq)
    jitter: int  # in RTP timestamp units
    lsr: int = 0  # middle 32 bits of the last SR's NTP time
    dlsr: int = 0  # delay since that SR, 1/65536 s


def receiver_report(sender_ssrc: int, reports: Iterable[ReportBlock]) -> bytes:
    blocks = []
    for r in list(reports)[:31]:
        lost = max(-0x800000, min(0x7FFFFF, r.cumulative_lost)) & 0xFFFFFF
        blocks.append(
            _REPORT.pack(
                r.ssrc,
                ((r.fraction_lost & 0xFF) << 24) | lost,
                r.highest_sequence & 0xFFFFFFFF,
                r.jitter & 0xFFFFFFFF,
                r.lsr & 0xFFFFFFFF,
                r.dlsr & 0xFFFFFFFF,
            )
        )
    body = struct.pack("!I", sender_ssrc) + b"".join(blocks)
    return _header(len(blocks), RTCP_RR, len(body)) + body


def nack_items(sequence_numbers: Iterable[int]) -> list[tuple[int, int]]:
    """(PID, BLP) pairs covering ``sequence_numbers`` (16-bit, any order)."""
    items: list[tuple[int, int]] = []
    for seq in sorted(set(sequence_numbers), key=lambda s: s & 0xFFFF):
        seq &= 0xFFFF
        if items:
            pid, blp = items[-1]
            delta = (seq - pid) & 0xFFFF
            if 1 <= delta <= 16:
                items[-1] = (pid, blp | (1 << (delta - 1)))
                continue
        items.append((seq, 0))
    return items


def generic_nack(sender_ssrc: int, media_ssrc: int, sequence_numbers: Iterable[int]) -> bytes:
    items = nack_items(sequence_numbers)
    body = struct.pack("!II", sender_ssrc, media_ssrc) + b"".join(
        struct.pack("!HH", pid, blp) for pid, blp in items
    )
    return _header(FMT_NACK, RTCP_RTPFB, len(body)) + body


def parse_nack(packet: bytes) -> tuple[int, list[int]]:
    """(media ssrc, lost sequence numbers) of one generic NACK packet; raises ValueError."""
    if len(packet) < 12:
        raise ValueError("NACK too short")
    media_ssrc = int.from_bytes(packet[8:12], "big")
    lost = []
    for pos in range(12, len(packet) - 3, 4):
        pid, blp = struct.unpack_from("!HH", packet, pos)
        lost.append(pid)
        for bit in range(16):
            if blp & (1 << bit):
                lost.append((pid + bit + 1) & 0xFFFF)
    return media_ssrc, lost


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    body = struct.pack("!II", sender_ssrc, media_ssrc)
    return _header(FMT_PLI, RTCP_PSFB, len(body)) + body


def remb(sender_ssrc: int, bitrate: int, ssrcs: Iterable[int]) -> bytes:
    """Receiver estimated max bitrate ``bitrate`` (bit/s) for the streams ``ssrcs``."""
    media = list(ssrcs)[:255]
    bitrate = max(0, int(bitrate))
    exponent = 0
    while bitrate >= 1 << 18:
        bitrate >>= 1
        exponent += 1
    exponent = min(exponent, 63)
    body = (
        struct.pack("!II", sender_ssrc, 0)
        + b"REMB"
        + struct.pack("!I", (len(media) << 24) | (exponent << 18) | (bitrate & 0x3FFFF))
        + b"".join(struct.pack("!I", s) for s in media)
    )
    return _header(FMT_REMB, RTCP_PSFB, len(body)) + body


def parse_remb(packet: bytes) -> tuple[int, list[int]] | None:
    """(bitrate, ssrcs) of a REMB packet, None if it is not one."""
    if len(packet) < 20 or packet[12:16] != b"REMB":
        return None
    word = int.from_bytes(packet[16:20], "big")
    count, exponent, mantissa = word >> 24, (word >> 18) & 0x3F, word & 0x3FFFF
    ssrcs = [int.from_bytes(packet[p : p + 4], "big") for p in range(20, len(packet) - 3, 4)]
    return mantissa << exponent, ssrcs[:count]


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp: int  # 64-bit NTP time
    rtp_timestamp: int
    packets: int
    octets: int


def parse_sender_report(packet: bytes) -> SenderReport | None:
    if len(packet) < 28:
        return None
    ssrc, msw, lsw, rtp_ts, packets, octets = _SR.unpack_from(packet, 4)
    return SenderReport(ssrc, (msw << 32) | lsw, rtp_ts, packets, octets)


def iter_rtcp(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """``(packet_type, fmt_or_count, packet)`` for each packet of a compound packet.

    Stops at the first header that is not RTCP version 2 or whose length runs
    past the data; never raises.
    """
    pos = 0
    size = len(data)
    while pos + 4 <= size:
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        length = (words + 1) * 4
        if first >> 6 != 2 or pos + length > size:
            return
        yield packet_type, first & 0x1F, data[pos : pos + length]
        pos += length


def is_rtcp(data: bytes) -> bool:
    """RTP vs RTCP demultiplexing on one port (RFC 5761 4): RTCP types 192-223."""
    return len(data) >= 2 and 192 <= data[1] <= 223
