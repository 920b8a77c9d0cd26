"""A room: the participants of one SFU call and who receives what."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import MediaConfig
from .errors import (
    BadSignal,
    MediaError,
    RoomClosed,
    RoomFull,
    SessionLost,
    UnknownParticipant,
)
from .forwarder import UpTrack
from .metrics import MediaMetrics, NoopMediaMetrics
from .participant import Participant
from .signals import PUBLISH, SUBSCRIBE, Message, RoomSignaling, parse_pc
from .speakers import SpeakerMonitor

if TYPE_CHECKING:
    from .span import RoomSpan

logger = logging.getLogger(__name__)


class Room:
    """Participants of one call; everyone receives everyone else's tracks.

    Talks to the outside only through ``signaling`` (server → client
    messages) and :meth:`handle_signal` (client → server messages). When the
    last participant leaves (and nobody joined while it left), the room closes
    itself and calls ``on_closed``. A participant that fails (see
    :class:`Participant`) gets an ``error`` message with the failure's code and
    is removed like one that left. Its :class:`~media.speakers.SpeakerMonitor`
    task runs from construction to close and tells everyone who is speaking.
    """

    def __init__(
        self,
        room_id: str,
        config: MediaConfig,
        signaling: RoomSignaling,
        metrics: MediaMetrics | None = None,
        on_closed: Callable[[Room], None] | None = None,
        span: Callable[[Room], RoomSpan] | None = None,
    ) -> None:
        self.id = room_id
        self._config = config
        self._signaling = signaling
        self._metrics: MediaMetrics = metrics or NoopMediaMetrics()
        self._on_closed = on_closed
        self._participants: dict[str, Participant] = {}
        self._lock = asyncio.Lock()
        self._removals: set[asyncio.Task[None]] = set()  # of failed participants
        self._closed = False
        self._close_done = asyncio.Event()
        self._speakers = SpeakerMonitor(
            repr(self),
            self._audio_tracks,
            lambda: self._participants,
            self._signaling.send,
            self._metrics,
        )
        self._speakers.start()
        #: Its part in a room that spans nodes (media/span.py), if this node relays.
        self.span = span(self) if span is not None else None
        if self.span is not None:
            self.span.start()
        self._metrics.room_opened()
        logger.info("Room(%s) opened", room_id)

    def __repr__(self) -> str:
        return f"Room({self.id})"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def participants(self) -> dict[str, Participant]:
        """A copy of the participants, by id."""
        return dict(self._participants)

    async def add_participant(self, participant_id: str) -> Participant:
        """Admit a participant; a rejoin replaces the old connections."""
        async with self._lock:
            if self._closed:
                raise RoomClosed(f"room {self.id} is closed")
            old = self._participants.pop(participant_id, None)
            if old is None and len(self._participants) >= self._config.max_participants:
                raise RoomFull(f"room {self.id} has {len(self._participants)} participants")
            participant = Participant(
                self.id,
                participant_id,
                config=self._config,
                metrics=self._metrics,
                signaling=self._signaling,
                on_published_changed=self._refresh,
                on_failed=self._on_participant_failed,
            )
            self._participants[participant_id] = participant
            if old is None:
                self._metrics.participant_joined()
        if old is not None:
            await old.close()
        self._refresh()
        logger.info("%r: %s joined", self, participant_id)
        return participant

    async def remove_participant(self, participant_id: str) -> None:
        """Remove a participant (no-op if absent); the last one out closes the room."""
        participant = self._participants.get(participant_id)
        if participant is not None:
            await self._remove(participant)

    async def _remove(self, participant: Participant) -> None:
        async with self._lock:
            # Only this very participant: a rejoin may have replaced it.
            if self._participants.get(participant.id) is not participant:
                return
            del self._participants[participant.id]
        self._metrics.participant_left()
        logger.info("%r: %s left", self, participant.id)
        # Stop forwarding its tracks to everyone before tearing it down.
        participant.stop_publishing()
        self._refresh()
        await participant.close()
        async with self._lock:
            # Emptiness is decided now, not before the leave was awaited:
            # whoever joined meanwhile keeps the room open.
            if self._participants or self._closed:
                return
            self._closed = True
        await self._release([])

    def _on_participant_failed(self, participant: Participant, error: MediaError) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(
            self._remove_failed(participant, error), name=f"remove failed {participant!r}"
        )
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove_failed(self, participant: Participant, error: MediaError) -> None:
        logger.warning("%r: removing %s: %s", self, participant.id, error)
        if self._participants.get(participant.id) is participant:
            try:
                await self._signaling.send_error(participant.id, error)
            except Exception:
                logger.exception("%r: cannot tell %s it was removed", self, participant.id)
        await self._remove(participant)

    async def handle_signal(self, participant_id: str, message: Message) -> None:
        """Apply one client → server message; a publish offer or ``subscribe`` admits the sender."""
        kind = message.get("type")
        if self._closed:
            raise RoomClosed(f"room {self.id} is closed")
        if kind == "track_settings":
            self._track_settings(participant_id, message)
            return
        if kind == "resume":
            # A client whose socket came back asks whether its session is still here.
            resumed = self._participants.get(participant_id)
            if resumed is None:
                raise SessionLost(f"no session of {participant_id} in room {self.id}: start over")
            await resumed.resend_offer()
            return
        restarting = kind == "ice_restart" or message.get("ice_restart") is True
        if restarting and participant_id not in self._participants:
            # Restarting ICE of a session this room does not hold: it was lost.
            raise SessionLost(f"no session of {participant_id} in room {self.id}: start over")
        if kind == "ice_restart":
            self._participants[participant_id].request_ice_restart()
            return
        if kind == "subscribe":
            # Receive only: enter the room (a subscribe offer follows once
            # there is something to receive), no publish connection needed.
            if participant_id not in self._participants:
                await self.add_participant(participant_id)
            return
        pc = parse_pc(message)
        participant = self._participants.get(participant_id)
        if participant is None:
            if kind == "offer" and pc == PUBLISH:
                participant = await self.add_participant(participant_id)
            else:
                raise UnknownParticipant(f"{participant_id} is not in room {self.id}")
        elif kind == "offer" and pc == PUBLISH and participant.is_new_session(message):
            # The client rebuilt its SFU session (aiortc has no ICE restart):
            # start it over like a rejoin. The old connections close, the
            # others stop receiving the old tracks and get the new ones once
            # published, and the new participant gets a fresh subscribe offer.
            logger.info("%r: %s starts a new session", self, participant_id)
            participant = await self.add_participant(participant_id)
        if kind == "offer":
            if pc != PUBLISH:
                raise BadSignal("the server offers on 'subscribe'; clients offer on 'publish'")
            await participant.handle_publish_offer(message)
        elif kind == "answer":
            if pc != SUBSCRIBE:
                raise BadSignal("clients answer on 'subscribe' only")
            await participant.handle_subscribe_answer(message)
        elif kind == "ice_candidate":
            await participant.handle_candidate(pc, message)
        else:
            raise BadSignal(f"unexpected message type {kind!r} for the SFU")

    def _track_settings(self, participant_id: str, message: Message) -> None:
        participant = self._participants.get(participant_id)
        if participant is None:
            raise UnknownParticipant(f"{participant_id} is not in room {self.id}")
        participant.set_track_settings(message.get("tracks") or [])

    def _audio_tracks(self) -> list[UpTrack]:
        """Every live audio track of the room, also those of other nodes (speakers)."""
        return [up for up in self.local_tracks() + self._remote_tracks() if up.kind == "audio"]

    def local_tracks(self) -> list[UpTrack]:
        """The live tracks published by this node's participants of the room."""
        return [up for p in self._participants.values() for up in p.published()]

    def local_count(self) -> int:
        return len(self._participants)

    def _remote_tracks(self) -> list[UpTrack]:
        return self.span.remote_tracks() if self.span is not None else []

    def refresh(self) -> None:
        """The tracks of other nodes changed: recompute what everyone receives."""
        self._refresh()

    def _refresh(self) -> None:
        """Recompute what every participant should receive (no awaits)."""
        if self._closed:
            return
        participants = list(self._participants.values())
        remote = self._remote_tracks()
        for p in participants:
            wanted = [up for other in participants if other is not p for up in other.published()]
            wanted += [up for up in remote if up.participant_id != p.id]
            p.set_wanted(wanted)
        if self.span is not None:
            self.span.changed()

    async def close(self) -> None:
        """Close every participant and release everything (idempotent)."""
        async with self._lock:
            first = not self._closed
            self._closed = True
            participants = list(self._participants.values()) if first else []
            self._participants.clear()
        if not first:
            await self._close_done.wait()
            return
        for _ in participants:
            self._metrics.participant_left()
        await self._release(participants)

    async def _release(self, participants: list[Participant]) -> None:
        """Close ``participants`` and finish closing (once, by whoever closed the room)."""
        await self._speakers.close()
        if self.span is not None:
            await self.span.close()  # nothing relayed either way from here on
        await asyncio.gather(*(p.close() for p in participants))
        # Removals of failed participants in flight: each finds its
        # participant gone or closes it; let them finish.
        current = asyncio.current_task()
        removals = [t for t in self._removals if t is not current]
        await asyncio.gather(*removals, return_exceptions=True)
        self._metrics.room_closed()
        self._close_done.set()
        logger.info("Room(%s) closed", self.id)
        if self._on_closed is not None:
            self._on_closed(self)
