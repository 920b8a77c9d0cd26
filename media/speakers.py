"""Active speakers of a room, from the audio levels its publishers send (RFC 6464).

The packet path only counts (:meth:`media.forwarder.UpTrack.on_packet`): per
audio track, packets carrying a level, those at :data:`SPEECH_LEVEL` or
louder, and their summed loudness. Everything else happens here, every
:data:`INTERVAL` seconds:

- :class:`SpeakerDetector` (pure) turns one sample per participant and
  interval into an *activity* (the share of its packets that were speech) and
  a *level* (activity weighted by loudness, 0..1), each averaged over a
  sliding window of :data:`WINDOW` intervals, as LiveKit averages over an
  observe window and Jitsi's dominant speaker identification looks at a
  medium time scale rather than single packets.
- A participant is *speaking* once its window activity reaches
  :data:`SPEAKING_ON` (speech for about half of the last second), and stays
  speaking until it drops below :data:`SPEAKING_OFF`: a cough or an "mm-hm"
  of a few hundred milliseconds never reaches the threshold.
- The *dominant* speaker changes only to a speaking participant, and only if
  the current one is no longer speaking or the challenger's level beats the
  current one's by :data:`SWITCH_MARGIN`: two people talking at once don't
  make it flap. Silence keeps the last dominant speaker (the enlarged tile
  stays put while everyone listens); it is cleared only when that participant
  stops publishing audio or leaves.
- :class:`SpeakerMonitor` is the room-owned task that samples the room's
  audio tracks, feeds the detector and sends every participant a ``speakers``
  message (docs/protocol.md) when the dominant speaker or the set of speaking
  participants changes; a participant that joins later gets the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .metrics import MediaMetrics

logger = logging.getLogger(__name__)

#: A packet whose level (-dBov, 0 loudest, 127 silence) is at most this is speech.
SPEECH_LEVEL = 40
#: Seconds between two samples of the room's audio tracks.
INTERVAL = 0.2
#: Samples averaged: 5 x 0.2 s, the last second.
WINDOW = 5
#: Window activity (share of speech packets) at which a participant starts speaking...
SPEAKING_ON = 0.5
#: ...and below which it stops.
SPEAKING_OFF = 0.2
#: How much higher a challenger's window level must be to take over from a
#: dominant speaker who is still speaking.
SWITCH_MARGIN = 0.1

#: One interval of one participant's audio: (packets with a level, speech
#: packets, summed ``127 - level`` of the speech packets).
Sample = tuple[int, int, int]

Message = dict[str, Any]


@dataclass(frozen=True)
class Speaker:
    """A speaking participant and its window level (0..1)."""

    participant_id: str
    level: float


class _History:
    """The last :data:`WINDOW` intervals of one participant."""

    __slots__ = ("activity", "level", "speaking")

    def __init__(self, window: int) -> None:
        self.activity: deque[float] = deque(maxlen=window)
        self.level: deque[float] = deque(maxlen=window)
        self.speaking = False


class SpeakerDetector:
    """Speaking participants and the dominant speaker, from interval samples.

    Pure: no clock, no I/O; :meth:`update` is called once per interval with
    a sample for every participant that publishes audio (those missing are
    forgotten).
    """

    def __init__(
        self,
        *,
        window: int = WINDOW,
        speaking_on: float = SPEAKING_ON,
        speaking_off: float = SPEAKING_OFF,
        switch_margin: float = SWITCH_MARGIN,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if not 0 <= speaking_off <= speaking_on <= 1:
            raise ValueError("need 0 <= speaking_off <= speaking_on <= 1")
        self._window = window
        self._on = speaking_on
        self._off = speaking_off
        self._margin = switch_margin
        self._history: dict[str, _History] = {}
        self.dominant: str | None = None
        self.speakers: tuple[Speaker, ...] = ()

    def update(self, samples: Mapping[str, Sample]) -> bool:
        """Take one interval; True if the dominant speaker or the set of speakers changed."""
        for gone in self._history.keys() - samples.keys():
            del self._history[gone]
        scores: dict[str, tuple[float, float]] = {}
        for participant_id, (packets, active, loudness) in samples.items():
            history = self._history.get(participant_id)
            if history is None:
                history = self._history[participant_id] = _History(self._window)
            share = active / packets if packets > 0 else 0.0
            loud = loudness / (active * 127) if active > 0 else 0.0
            history.activity.append(min(share, 1.0))
            history.level.append(min(share * loud, 1.0))
            # Divided by the whole window: a newcomer needs the same sustained speech.
            activity = sum(history.activity) / self._window
            level = sum(history.level) / self._window
            history.speaking = activity >= (self._off if history.speaking else self._on)
            if history.speaking:
                scores[participant_id] = (level, activity)
        ranked = sorted(scores, key=lambda pid: (scores[pid], pid), reverse=True)
        before = (self.dominant, {s.participant_id for s in self.speakers})
        dominant = self.dominant if self.dominant in samples else None
        if ranked and ranked[0] != dominant:
            top = ranked[0]
            if dominant not in scores or scores[top][0] >= scores[dominant][0] + self._margin:
                dominant = top
        self.dominant = dominant
        self.speakers = tuple(Speaker(pid, round(scores[pid][0], 2)) for pid in ranked)
        return before != (self.dominant, set(ranked))

    def message(self) -> Message:
        """The ``speakers`` message of the current state (docs/protocol.md)."""
        return {
            "type": "speakers",
            "dominant": self.dominant,
            "speakers": [
                {"participant_id": s.participant_id, "level": s.level} for s in self.speakers
            ],
        }


class LevelSource(Protocol):
    """An audio up track as the monitor reads it."""

    @property
    def participant_id(self) -> str: ...

    def take_audio_levels(self) -> Sample: ...


class SpeakerMonitor:
    """The room's task: sample its audio tracks each interval, tell everyone of changes.

    ``sources`` returns the room's live audio up tracks, ``participants``
    everyone in the room (publishing or not) by id, ``send`` delivers a
    message to one of them. A participant object not seen before (a newcomer,
    or a rejoin under the same id) is sent the current state. Started with
    the room, closed by it.
    """

    def __init__(
        self,
        name: str,
        sources: Callable[[], Iterable[LevelSource]],
        participants: Callable[[], Mapping[str, object]],
        send: Callable[[str, Message], Awaitable[None]],
        metrics: MediaMetrics,
        *,
        interval: float = INTERVAL,
        detector: SpeakerDetector | None = None,
    ) -> None:
        self._name = name
        self._sources = sources
        self._participants = participants
        self._send = send
        self._metrics = metrics
        self._interval = interval
        self.detector = detector or SpeakerDetector()
        self._told: dict[str, object] = {}  # participants that have the current state
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"speakers {self._name}"
            )

    async def close(self) -> None:
        """Stop sampling (idempotent); nothing is sent after it returns."""
        task = self._task
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # if cancelled before it ran
            await task

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self.tick()
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%s: speaker detection stopped", self._name)

    async def tick(self) -> None:
        """One interval: sample, detect, send the ``speakers`` message where it is due."""
        samples: dict[str, Sample] = {}
        for source in list(self._sources()):
            packets, active, loudness = source.take_audio_levels()
            p, a, loud = samples.get(source.participant_id, (0, 0, 0))
            samples[source.participant_id] = (p + packets, a + active, loud + loudness)
        detector = self.detector
        previous = detector.dominant
        changed = detector.update(samples)
        if detector.dominant is not None and detector.dominant != previous:
            self._metrics.dominant_speaker_changed()
            logger.debug("%s: dominant speaker %s", self._name, detector.dominant)
        present = dict(self._participants())
        if changed:
            recipients = set(present)
        elif detector.dominant is not None or detector.speakers:
            # Newcomers get the current state.
            recipients = {pid for pid, p in present.items() if self._told.get(pid) is not p}
        else:
            recipients = set()  # nothing to say yet
        self._told = present
        if not recipients:
            return
        message = detector.message()
        for participant_id in sorted(recipients):
            try:
                await self._send(participant_id, dict(message))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: cannot send speakers to %s", self._name, participant_id)
