"""The loss a subscriber's receiver reports give the estimate (media/feedback.py)."""

from __future__ import annotations

from media.feedback import LOSS_MIN_PACKETS, StreamReport, SubscriberFeedback
from media.metrics import CountingMediaMetrics
from media.rtcp import ReportBlock, receiver_report

VIDEO, THIN = 0x1111, 0x2222


class Target:
    """A sender the feedback reports about; keeps its reports."""

    def __init__(self) -> None:
        self.reports: list[StreamReport] = []

    def resend(self, sequence_numbers: list[int]) -> int:
        return 0

    def keyframe_wanted(self) -> None:
        pass

    def reported(self, report: StreamReport) -> None:
        self.reports.append(report)


def _feedback() -> tuple[SubscriberFeedback, dict[int, Target], list[float]]:
    targets = {VIDEO: Target(), THIN: Target()}
    feedback = SubscriberFeedback("sub", targets.get, metrics=CountingMediaMetrics())
    told: list[float] = []
    feedback.on_loss = told.append
    return feedback, targets, told


def _block(ssrc: int, fraction: float, lost: int, highest: int) -> ReportBlock:
    return ReportBlock(ssrc, int(fraction * 256), lost, highest, 0)


def test_loss_is_counted_over_every_streams_packets_not_one_blocks_fraction() -> None:
    feedback, targets, told = _feedback()
    feedback.handle(receiver_report(1, [_block(VIDEO, 0, 0, 1000), _block(THIN, 0, 0, 50)]))
    assert told == []  # a first block only marks where each stream's count starts

    # 100 video packets, none lost; the thin stream's two, one lost: "50 %" in its block.
    feedback.handle(receiver_report(1, [_block(VIDEO, 0, 0, 1100), _block(THIN, 0.5, 1, 52)]))
    assert told == [1 / 102]
    assert targets[THIN].reports[-1].fraction_lost == 0.5  # each stream's own block is kept


def test_reports_accumulate_until_they_cover_enough_packets() -> None:
    feedback, _, told = _feedback()
    feedback.handle(receiver_report(1, [_block(THIN, 0, 0, 10)]))
    highest, lost = 10, 0
    for _ in range(LOSS_MIN_PACKETS // 4 - 1):
        highest, lost = highest + 4, lost + 2
        feedback.handle(receiver_report(1, [_block(THIN, 0.5, lost, highest)]))
    assert told == []  # each "50 %" of four packets: too few to judge
    feedback.handle(receiver_report(1, [_block(THIN, 0.5, lost + 2, highest + 4)]))
    assert told == [0.5]  # now twenty packets, ten lost


def test_duplicates_and_wraps_and_resets_do_not_make_loss_up() -> None:
    feedback, _, told = _feedback()
    feedback.handle(receiver_report(1, [_block(VIDEO, 0, 5, 0x1FFF0)]))
    # Across a sequence number wrap (the extended number's cycles), duplicates
    # received making the cumulative count fall: no loss, not negative.
    feedback.handle(receiver_report(1, [_block(VIDEO, 0, 3, 0x20010)]))
    assert told == [0.0]
    # A stream that started over (its highest number far back): a new baseline.
    feedback.handle(receiver_report(1, [_block(VIDEO, 0, 0, 0x100)]))
    feedback.handle(receiver_report(1, [_block(VIDEO, 0.25, 10, 0x100 + 40)]))
    assert told == [0.0, 0.25]


def test_blocks_about_unknown_streams_are_skipped() -> None:
    feedback, _, told = _feedback()
    feedback.handle(receiver_report(1, [_block(0x9999, 0, 0, 0)]))
    feedback.handle(receiver_report(1, [_block(0x9999, 1.0, 100, 100)]))
    assert told == []
