"""Active speaker detection on synthetic interval samples (media/speakers.py)."""

from __future__ import annotations

import asyncio

import pytest

from media.metrics import CountingMediaMetrics
from media.speakers import (
    INTERVAL,
    SPEECH_LEVEL,
    Sample,
    SpeakerDetector,
    SpeakerMonitor,
)

PACKETS = round(INTERVAL / 0.02)  # 20 ms Opus frames per interval


def speech(level: int = 20, share: float = 1.0) -> Sample:
    """An interval in which ``share`` of the packets were speech at ``-level`` dBov."""
    active = round(PACKETS * share)
    return (PACKETS, active, active * (127 - level))


SILENCE: Sample = (PACKETS, 0, 0)


def run(detector: SpeakerDetector, *intervals: dict[str, Sample]) -> list[str | None]:
    """Feed intervals; the dominant speaker after each."""
    dominants = []
    for samples in intervals:
        detector.update(samples)
        dominants.append(detector.dominant)
    return dominants


def test_sustained_speech_becomes_dominant_within_a_second() -> None:
    detector = SpeakerDetector()
    dominants = run(detector, *[{"ana": speech(), "bob": SILENCE}] * 5)
    first = dominants.index("ana")
    assert (first + 1) * INTERVAL <= 0.8
    assert dominants[first:] == ["ana"] * (5 - first)
    assert [s.participant_id for s in detector.speakers] == ["ana"]
    assert 0.8 < detector.speakers[0].level <= 1.0


def test_a_short_cough_does_not_switch() -> None:
    detector = SpeakerDetector()
    run(detector, *[{"ana": speech(), "bob": SILENCE}] * 10)
    # Bob coughs loudly for 400 ms while Ana speaks, and again while she pauses.
    cough = [{"ana": speech(), "bob": speech(level=5)}] * 2
    assert set(run(detector, *cough, *[{"ana": speech(), "bob": SILENCE}] * 5)) == {"ana"}
    pause = [{"ana": SILENCE, "bob": SILENCE}] * 10
    cough = [{"ana": SILENCE, "bob": speech(level=5)}] * 2
    assert set(run(detector, *pause, *cough, *pause)) == {"ana"}


def test_an_overlapping_mm_hm_does_not_switch() -> None:
    detector = SpeakerDetector()
    run(detector, *[{"ana": speech(level=25), "bob": SILENCE}] * 10)
    # 600 ms of "mm-hm" at the same loudness: Bob is speaking too, Ana stays dominant.
    mm_hm = [{"ana": speech(level=25), "bob": speech(level=25)}] * 3
    assert set(run(detector, *mm_hm)) == {"ana"}
    assert {s.participant_id for s in detector.speakers} == {"ana", "bob"}
    assert set(run(detector, *[{"ana": speech(level=25), "bob": SILENCE}] * 10)) == {"ana"}
    assert [s.participant_id for s in detector.speakers] == ["ana"]


def test_the_floor_passes_when_the_dominant_speaker_stops() -> None:
    detector = SpeakerDetector()
    run(detector, *[{"ana": speech(), "bob": SILENCE}] * 10)
    both = [{"ana": speech(), "bob": speech()}] * 10
    assert set(run(detector, *both)) == {"ana"}  # equal talkers: no flapping
    handover = run(detector, *[{"ana": SILENCE, "bob": speech()}] * 5)
    assert handover[-1] == "bob"
    assert handover.index("bob") <= 2  # Bob was speaking already: quick


def test_a_much_louder_challenger_takes_over() -> None:
    detector = SpeakerDetector()
    # Ana's mic picks up a steady noise just above the speech level.
    run(detector, *[{"ana": speech(level=SPEECH_LEVEL), "bob": SILENCE}] * 10)
    assert detector.dominant == "ana"
    dominants = run(detector, *[{"ana": speech(level=SPEECH_LEVEL), "bob": speech(10)}] * 10)
    assert dominants[-1] == "bob"
    assert dominants[dominants.index("bob") :] == ["bob"] * (10 - dominants.index("bob"))


def test_quiet_audio_is_never_speech() -> None:
    detector = SpeakerDetector()
    quiet = (PACKETS, 0, 0)  # every packet above SPEECH_LEVEL: counted, not active
    assert run(detector, *[{"ana": quiet, "bob": (0, 0, 0)}] * 10) == [None] * 10
    assert detector.speakers == ()


def test_silence_keeps_the_last_speaker_leaving_clears_it() -> None:
    detector = SpeakerDetector()
    run(detector, *[{"ana": speech(), "bob": SILENCE}] * 10)
    changed = [detector.update({"ana": SILENCE, "bob": SILENCE}) for _ in range(20)]
    assert detector.dominant == "ana"
    assert detector.speakers == ()
    assert changed.count(True) == 1  # Ana stopped speaking: once
    assert detector.update({"bob": SILENCE})  # Ana unpublished or left
    assert detector.dominant is None


def test_speaking_has_hysteresis() -> None:
    detector = SpeakerDetector()
    run(detector, *[{"ana": speech()}] * 5)
    # Speech for 40% of the time keeps a speaker speaking, but does not start one.
    sparse = [{"ana": speech(share=0.4)}] * 20
    changes = [detector.update(s) for s in sparse]
    assert not any(changes) and detector.speakers
    fresh = SpeakerDetector()
    run(fresh, *sparse)
    assert fresh.speakers == () and fresh.dominant is None


def test_message_shape() -> None:
    detector = SpeakerDetector()
    run(detector, *[{"ana": speech(level=10), "bob": speech(level=30, share=0.8)}] * 5)
    message = detector.message()
    assert message["type"] == "speakers"
    assert message["dominant"] == "ana"
    assert [s["participant_id"] for s in message["speakers"]] == ["ana", "bob"]
    levels = [s["level"] for s in message["speakers"]]
    assert 1 >= levels[0] > levels[1] > 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        SpeakerDetector(window=0)
    with pytest.raises(ValueError):
        SpeakerDetector(speaking_on=0.2, speaking_off=0.5)


class _Track:
    def __init__(self, participant_id: str) -> None:
        self.participant_id = participant_id
        self.next: Sample = SILENCE

    def take_audio_levels(self) -> Sample:
        return self.next


async def test_monitor_tells_everyone_of_changes_and_newcomers_of_the_state() -> None:
    ana, bob = _Track("ana"), _Track("bob")
    # Participant objects by id; cyd only listens.
    participants: dict[str, object] = {pid: object() for pid in ("ana", "bob", "cyd")}
    sent: list[tuple[str, dict[str, object]]] = []

    async def send(participant_id: str, message: dict[str, object]) -> None:
        sent.append((participant_id, message))

    metrics = CountingMediaMetrics()
    monitor = SpeakerMonitor("Room(x)", lambda: [ana, bob], lambda: participants, send, metrics)
    for _ in range(5):
        await monitor.tick()
    assert sent == []  # nothing to say yet
    ana.next = speech()
    for _ in range(10):
        await monitor.tick()
    assert {pid for pid, _ in sent} == {"ana", "bob", "cyd"}
    assert all(m["dominant"] == "ana" for _, m in sent)
    assert metrics.counts["dominant_speaker_changes"] == 1
    sent.clear()
    participants["dan"] = object()
    await monitor.tick()
    assert [(pid, m["dominant"]) for pid, m in sent] == [("dan", "ana")]
    sent.clear()
    participants["cyd"] = object()  # a new session under the same id
    await monitor.tick()
    await monitor.tick()
    assert [(pid, m["dominant"]) for pid, m in sent] == [("cyd", "ana")]
    sent.clear()
    bob.next, ana.next = speech(), SILENCE
    for _ in range(10):
        await monitor.tick()
    assert {pid for pid, m in sent if m["dominant"] == "bob"} == {"ana", "bob", "cyd", "dan"}
    assert metrics.counts["dominant_speaker_changes"] == 2


async def test_monitor_task_runs_until_closed() -> None:
    track = _Track("ana")
    track.next = speech()
    got = asyncio.Event()

    async def send(participant_id: str, message: dict[str, object]) -> None:
        got.set()

    metrics = CountingMediaMetrics()
    monitor = SpeakerMonitor(
        "Room(x)", lambda: [track], lambda: {"ana": track}, send, metrics, interval=0.01
    )
    monitor.start()
    await asyncio.wait_for(got.wait(), 5)
    await monitor.close()
    await monitor.close()  # idempotent
    assert monitor._task is not None and monitor._task.done()
