"""Reading transport-wide feedback (media.twcc.parse_feedback): what subscribers send the SFU."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from media.twcc import TwccRecorder, parse_feedback

from .test_inbound import parse_twcc


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.integers(0, 400), st.integers(0, 2_000_000), min_size=1, max_size=120),
    st.integers(0, 0xFFFF),
)
def test_it_reads_back_what_the_recorder_builds(arrivals: dict[int, int], start: int) -> None:
    recorder = TwccRecorder()
    t0 = 5_000_000_000
    for offset, at in sorted(arrivals.items()):
        recorder.record((start + offset) & 0xFFFF, t0 + at)
    while (packet := recorder.feedback(0x11, 0x22)) is not None:
        feedback = parse_feedback(packet)
        assert feedback is not None
        base, count, reference = parse_twcc(packet)
        assert (feedback.base, feedback.count, feedback.arrivals) == (base, count, reference)
        assert feedback.media_ssrc == 0x22


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_read_or_refused(data: bytes) -> None:
    for packet in (data, bytes([0x8F, 205]) + data[2:]):
        feedback = parse_feedback(packet)
        if feedback is not None:
            assert all(a is None or isinstance(a, int) for a in feedback.arrivals)


def test_truncated_deltas_and_the_reserved_symbol_are_refused() -> None:
    header = struct.pack("!BBHIIHHI", 0x8F, 205, 4, 1, 2, 100, 3, (5 << 8) | 7)
    run_of_small = struct.pack("!H", (1 << 13) | 3)
    assert parse_feedback(header + run_of_small + bytes([4, 4, 4, 0])) is not None
    assert parse_feedback(header + run_of_small + bytes([4, 4])) is None  # a delta short
    reserved = struct.pack("!H", (3 << 13) | 3)
    assert parse_feedback(header + reserved + bytes(4)) is None
    assert parse_feedback(header) is None  # no chunks for its three statuses
    negative = struct.pack("!BBHIIHHI", 0x8F, 205, 4, 1, 2, 100, 1, (0xFFFFFF << 8) | 7)
    feedback = parse_feedback(negative + struct.pack("!H", (1 << 13) | 1) + bytes([8, 0, 0, 0]))
    assert feedback is not None and feedback.arrivals == [-64_000 + 8 * 250]
