"""A load run: rooms, a join ramp, a steady window, a clean leave, a report.

::

    config = LoadTestConfig(url="http://127.0.0.1:8080", rooms=4, publishers=3, subscribers=2)
    report = await LoadTest(config).run()

Each room is a conversation and a call created through the HTTP API by a
*host* identity, which leaves once the room's first peer has joined: every
peer then makes an honest ``POST /v1/calls/{id}/join`` (the host only holds
the call open) and the call is in SFU mode from the start. Joins are spread
over time (``ramp_per_s`` across all rooms, rooms interleaved). The steady
window starts once every join finished and every joined peer is connected
(or ``settle_s`` passed) and lasts ``duration_s``; then every peer leaves
over HTTP and closes its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from media.aiortc_compat import restrict_host_addresses
from media.loadtest.preencoded import EncodedClip, opus_clip, vp8_clip
from media.loadtest.simulcast import SimulcastClips, simulcast_clips

from .api import ApiError, HuddleApi, Identity
from .metrics import (
    Check,
    PeerResult,
    ServerSampler,
    Snapshot,
    Summary,
    Thresholds,
    TimelinePoint,
    check,
    expected_kinds,
    interval_point,
    peer_result,
    snapshot,
    summarize,
)
from .peers import PUBLISHER, SUBSCRIBER, SignaledPeer

logger = logging.getLogger(__name__)

MAX_DURATION_S = 24 * 3600.0
MAX_PEERS = 10_000
JOIN_TIMEOUT_S = 30.0
LEAVE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LoadTestConfig:
    """What to run. ``publishers`` per room publish and receive each other;
    ``subscribers`` per room only receive."""

    url: str
    rooms: int = 1
    publishers: int = 2
    subscribers: int = 1
    duration_s: float = 30.0
    ramp_per_s: float = 5.0  # joins per second over all rooms; 0: all at once
    audio_only: bool = False
    video_bitrate: int = 300_000
    video_width: int = 320
    video_height: int = 240
    video_fps: int = 30
    clip_seconds: float = 10.0  # keyframe only at the start of the loop and on PLI
    # Publishers send three VP8 layers (rids q/h/f at 1/4, 1/2 and the full
    # video size; bitrates 10/33/100 % of video_bitrate), as the browser does.
    simulcast: bool = False
    # Every receive-only subscriber's downlink is capped to this (media.loadtest.netcap).
    subscriber_cap_bps: int | None = None
    secret: str | None = None  # mint tokens locally instead of /v1/dev/token
    ice_hosts: tuple[str, ...] = ("127.0.0.1",)
    settle_s: float = 20.0
    # Receivers count RTP from headers (media.loadtest.rtpcount) instead of aiortc's
    # receive path: ~4x cheaper per packet, but they send no NACK or PLI.
    light_receivers: bool = False
    sample_interval_s: float = 1.0
    thresholds: Thresholds = field(default_factory=Thresholds)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if self.rooms < 1:
            raise ValueError("rooms must be at least 1")
        if self.publishers < 1:
            raise ValueError("publishers must be at least 1 (someone has to send media)")
        if self.subscribers < 0:
            raise ValueError("subscribers must not be negative")
        if self.publishers + self.subscribers < 2:
            raise ValueError("a room needs at least 2 peers (publishers + subscribers)")
        if self.rooms * (self.publishers + self.subscribers) > MAX_PEERS:
            raise ValueError(f"at most {MAX_PEERS} peers in all")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] seconds")
        if self.ramp_per_s < 0:
            raise ValueError("ramp must not be negative")
        if not 0.1 <= self.sample_interval_s <= 60:
            raise ValueError("sample interval must be in [0.1, 60] seconds")
        if not 0 <= self.settle_s <= 600:
            raise ValueError("settle must be in [0, 600] seconds")
        if not 10_000 <= self.video_bitrate <= 20_000_000:
            raise ValueError("video bitrate must be in [10 kbit/s, 20 Mbit/s]")
        if not (16 <= self.video_width <= 3840 and 16 <= self.video_height <= 2160):
            raise ValueError("video size must be within 16x16 .. 3840x2160")
        if not 1 <= self.video_fps <= 60:
            raise ValueError("video fps must be in [1, 60]")
        if not 1 <= self.clip_seconds <= 60:
            raise ValueError("clip length must be in [1, 60] seconds")
        if self.subscriber_cap_bps is not None and self.subscriber_cap_bps < 10_000:
            raise ValueError("a subscriber cap must be at least 10 kbit/s")
        if self.simulcast and self.audio_only:
            raise ValueError("simulcast needs video (not --audio-only)")
        if self.simulcast and min(self.video_width, self.video_height) < 64:
            raise ValueError("simulcast needs a video size of at least 64x64 (its top layer)")

    @property
    def peers_per_room(self) -> int:
        return self.publishers + self.subscribers


@dataclass
class _Slot:
    """One planned peer."""

    room: int
    index: int
    role: str
    identity: Identity | None = None
    peer: SignaledPeer | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        letter = "p" if self.role == PUBLISHER else "s"
        return f"r{self.room}-{letter}{self.index}"


@dataclass
class _Room:
    index: int
    slots: list[_Slot]
    call_id: str | None = None
    host: Identity | None = None
    host_left: bool = False
    error: str | None = None


@dataclass(frozen=True)
class RoomReport:
    index: int
    call_id: str | None
    error: str | None
    peers: list[PeerResult]


@dataclass(frozen=True)
class LoadTestReport:
    """Everything a run measured; :func:`media.loadtest.report.to_json` writes it."""

    config: dict[str, Any]
    started_at: str
    ramp_s: float
    settle_s: float
    steady_s: float
    leave_s: float
    rooms: list[RoomReport]
    timeline: list[TimelinePoint]
    summary: Summary
    checks: list[Check]
    warnings: list[str]
    server_rss_after_leave_bytes: float | None

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def peers(self) -> list[PeerResult]:
        return [p for room in self.rooms for p in room.peers]


Progress = Callable[[TimelinePoint], None]


class LoadTest:
    """Runs one load test; see the module docstring for the phases."""

    def __init__(
        self,
        config: LoadTestConfig,
        *,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
        before_steady: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``before_steady``: awaited once the run settled, before its steady window
        (a barrier: several load generator processes start their windows together)."""
        config.validate()
        self.config = config
        self._progress = progress
        self._before_steady = before_steady
        self._clock = clock
        self._rooms: list[_Room] = []
        self._phase = "ramp"
        self._t0 = 0.0
        self.timeline: list[TimelinePoint] = []
        self._warnings: list[str] = []
        self._layers: SimulcastClips | None = None

    # --- the run ---------------------------------------------------------

    async def run(self) -> LoadTestReport:
        config = self.config
        if config.ice_hosts:
            restrict_host_addresses(config.ice_hosts)  # process-wide (aioice)
        video, audio = await asyncio.to_thread(self._clips)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = HuddleApi(config.url, session, secret=config.secret)
            sampler = ServerSampler(api.metrics_text, self._clock)
            self._rooms = [self._plan(i) for i in range(config.rooms)]
            await asyncio.gather(*(self._create_room(api, room) for room in self._rooms))
            self._t0 = self._clock()
            sampling = asyncio.create_task(self._sample_loop(sampler), name="loadtest sampler")
            try:
                await self._ramp(api, session, video, audio)
                ramp_end = self._clock()
                self._phase = "settle"
                await self._settle()
                if self._before_steady is not None:
                    await self._before_steady()
                steady_at = self._clock()
                self._phase = "steady"
                steady = snapshot(self._live_peers())
                await asyncio.sleep(config.duration_s)
                end_at = self._clock()
                end = snapshot(self._live_peers())
            finally:
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            rooms = self._results(steady, end, steady_at, end_at)
            self._phase = "leave"
            await self._leave_all(api)
            leave_end = self._clock()
            after = await sampler.sample()
        if sampler.error:
            self._warnings.append(f"server metrics: {sampler.error}")
        peers = [p for room in rooms for p in room.peers]
        summary = summarize(peers, self.timeline)
        self._warn_about_self(summary)
        return LoadTestReport(
            config=_config_dict(config),
            started_at=started_at,
            ramp_s=round(ramp_end - self._t0, 3),
            settle_s=round(steady_at - ramp_end, 3),
            steady_s=round(end_at - steady_at, 3),
            leave_s=round(leave_end - end_at, 3),
            rooms=rooms,
            timeline=list(self.timeline),
            summary=summary,
            checks=check(config.thresholds, summary, peers),
            warnings=list(self._warnings),
            server_rss_after_leave_bytes=after.rss_bytes if after else None,
        )

    def _clips(self) -> tuple[EncodedClip | None, EncodedClip]:
        """Encode once for every publisher of the run."""
        c = self.config
        audio = opus_clip()
        if c.audio_only:
            return None, audio
        frames = int(c.clip_seconds * c.video_fps)
        if c.simulcast:
            self._layers = simulcast_clips(
                c.video_width,
                c.video_height,
                frames=frames,
                fps=c.video_fps,
                bitrate=c.video_bitrate,
                keyframe_every=frames,
            )
            return None, audio
        video = vp8_clip(
            frames=frames,
            width=c.video_width,
            height=c.video_height,
            fps=c.video_fps,
            bitrate=c.video_bitrate,
            keyframe_every=frames,  # only frame 0: PLIs must be answered
        )
        return video, audio

    def _plan(self, index: int) -> _Room:
        c = self.config
        slots = [_Slot(index, i, PUBLISHER) for i in range(c.publishers)]
        slots += [_Slot(index, i, SUBSCRIBER) for i in range(c.subscribers)]
        return _Room(index, slots)

    async def _create_room(self, api: HuddleApi, room: _Room) -> None:
        try:
            room.host = await api.identity(f"r{room.index}-host")
            for slot in room.slots:
                slot.identity = await api.identity(slot.name)
            members = [s.identity for s in room.slots if s.identity is not None]
            conversation = await api.conversation(room.host, members, f"loadtest room {room.index}")
            call = await api.initiate(
                room.host, conversation, members, video=not self.config.audio_only
            )
            room.call_id = str(call["call_id"])
            if call.get("mode") != "sfu":
                raise RuntimeError(f"the call is in {call.get('mode')} mode, not sfu")
        except (ApiError, aiohttp.ClientError, TimeoutError, RuntimeError, KeyError) as exc:
            room.error = f"creating the room failed: {exc}"
            logger.warning("room %d: %s", room.index, room.error)

    def _schedule(self) -> list[_Slot]:
        """Join order: rooms interleaved, publishers before subscribers in each."""
        longest = max(len(r.slots) for r in self._rooms)
        return [r.slots[i] for i in range(longest) for r in self._rooms if i < len(r.slots)]

    async def _ramp(
        self,
        api: HuddleApi,
        session: aiohttp.ClientSession,
        video: EncodedClip | None,
        audio: EncodedClip,
    ) -> None:
        rate = self.config.ramp_per_s
        tasks = []
        for k, slot in enumerate(self._schedule()):
            delay = k / rate if rate > 0 else 0.0
            tasks.append(
                asyncio.create_task(
                    self._join(api, session, slot, delay, video, audio), name=f"join {slot.name}"
                )
            )
        await asyncio.gather(*tasks)

    async def _join(
        self,
        api: HuddleApi,
        session: aiohttp.ClientSession,
        slot: _Slot,
        delay: float,
        video: EncodedClip | None,
        audio: EncodedClip,
    ) -> None:
        room = self._rooms[slot.room]
        await asyncio.sleep(max(0.0, self._t0 + delay - self._clock()))
        if room.error or room.call_id is None or slot.identity is None:
            slot.error = room.error or "no room"
            return
        who = slot.identity
        publishing = slot.role == PUBLISHER
        started = self._clock()
        try:
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                await api.join(room.call_id, who)
                if not room.host_left and room.host is not None:
                    # The room has a real participant now: the host is not needed.
                    room.host_left = True
                    await api.leave(room.call_id, room.host)
                slot.peer = await SignaledPeer.connect(
                    api.base_url,
                    room.call_id,
                    who.token,
                    who.user_id,
                    video=video if publishing else None,
                    audio=audio if publishing else None,
                    session=session,
                    started_at=started,
                    count_only=self.config.light_receivers,
                    simulcast=self._layers if publishing else None,
                    receive_cap_bps=None if publishing else self.config.subscriber_cap_bps,
                )
                await slot.peer.publish()
        except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            slot.error = f"join failed: {type(exc).__name__}: {exc}"
            logger.warning("%s: %s", slot.name, slot.error)
        except Exception as exc:  # a bug or an SFU refusal: report it, keep going
            slot.error = f"join failed: {type(exc).__name__}: {exc}"
            logger.exception("%s: join failed", slot.name)

    async def _settle(self) -> None:
        deadline = self._clock() + self.config.settle_s
        while self._clock() < deadline:
            peers = self._live_peers()
            if all(p.connected or p.failed for p in peers) and self._all_announced():
                return
            await asyncio.sleep(0.1)
        self._warnings.append(
            f"not every peer was connected and receiving every track within "
            f"{self.config.settle_s:g} s of the last join; measured anyway"
        )

    def _all_announced(self) -> bool:
        kinds = expected_kinds(self.config.audio_only)
        for room in self._rooms:
            publishers = [s.peer.user_id for s in room.slots if s.peer and s.role == PUBLISHER]
            for slot in room.slots:
                if slot.peer is None:
                    continue
                tracks = slot.peer.tracks()
                for source in publishers:
                    for kind in kinds:
                        if source == slot.peer.user_id:
                            continue
                        stats = tracks.get((source, kind))
                        if stats is None or stats.frames == 0:
                            return False
        return True

    def _live_peers(self) -> list[SignaledPeer]:
        return [s.peer for r in self._rooms for s in r.slots if s.peer is not None]

    def _errors(self) -> int:
        slots = [s for r in self._rooms for s in r.slots]
        return sum(1 for s in slots if s.error or (s.peer is not None and s.peer.failed))

    async def _sample_loop(self, sampler: ServerSampler) -> None:
        interval = self.config.sample_interval_s
        before = snapshot(self._live_peers())
        server_before = await sampler.sample()
        at = self._clock()
        cpu = time.process_time()
        planned = self.config.rooms * self.config.peers_per_room
        # Ends when run() cancels it; each turn is bounded by the interval.
        while True:
            await asyncio.sleep(max(0.0, at + interval - self._clock()))
            try:
                async with asyncio.timeout(interval * 2):
                    server_after = await sampler.sample()
            except TimeoutError:
                server_after = None
            now = self._clock()
            cpu_now = time.process_time()
            peers = self._live_peers()
            after = snapshot(peers)
            point = interval_point(
                t=now - self._t0,
                dt=now - at,
                phase=self._phase,
                before=before,
                after=after,
                peers_planned=planned,
                peers_connected=sum(p.connected for p in peers),
                server_before=server_before,
                server_after=server_after,
                loadgen_cpu_s=cpu_now - cpu,
                errors=self._errors(),
            )
            self.timeline.append(point)
            if self._progress is not None:
                self._progress(point)
            before, at, cpu = after, now, cpu_now
            server_before = server_after or server_before

    def _results(
        self, steady: Snapshot, end: Snapshot, steady_at: float, end_at: float
    ) -> list[RoomReport]:
        kinds = expected_kinds(self.config.audio_only)
        out = []
        for room in self._rooms:
            sources = [s.peer.user_id for s in room.slots if s.peer and s.role == PUBLISHER]
            results = []
            for slot in room.slots:
                if slot.peer is None:
                    results.append(
                        PeerResult(
                            user_id=slot.identity.user_id if slot.identity else "",
                            name=slot.name,
                            room=room.index,
                            role=slot.role,
                            joined=False,
                            join_latency_s=None,
                            failures=[slot.error or "did not join"],
                            plis_sent=0,
                            keyframes_forced=0,
                        )
                    )
                    continue
                result = peer_result(
                    slot.peer,
                    name=slot.name,
                    room=room.index,
                    sources=sources,
                    kinds=kinds,
                    steady=steady,
                    end=end,
                    steady_at=steady_at,
                    end_at=end_at,
                    layer_names=self._layer_names(),
                    t0=self._t0,
                )
                if slot.error:
                    result.failures.append(slot.error)
                results.append(result)
            out.append(RoomReport(room.index, room.call_id, room.error, results))
        return out

    def _layer_names(self) -> dict[tuple[int, int], str]:
        """(width, height) -> rid of the simulcast layers; else the one video size."""
        layers = self._layers
        if layers is not None:
            return {size: rid for rid, size in zip(layers.rids, layers.sizes, strict=True)}
        c = self.config
        return {(c.video_width, c.video_height): "single"}

    async def _leave_all(self, api: HuddleApi) -> None:
        async def leave(room: _Room, slot: _Slot) -> None:
            peer, who = slot.peer, slot.identity
            try:
                if peer is not None and who is not None and room.call_id is not None:
                    with contextlib.suppress(ApiError):  # e.g. the call already ended
                        await api.leave(room.call_id, who)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._warnings.append(f"{slot.name}: leave failed: {exc}")
            finally:
                if peer is not None:
                    await peer.close()

        async def release_host(room: _Room) -> None:
            if room.call_id and room.host and not room.host_left:
                room.host_left = True
                with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                    await api.leave(room.call_id, room.host)

        # Media first, everywhere: a peer still negotiating while the others
        # leave would answer new subscribe offers on a closing socket.
        peers = self._live_peers()
        await asyncio.gather(*(p.stop_media() for p in peers), return_exceptions=True)
        jobs = [leave(room, slot) for room in self._rooms for slot in room.slots]
        jobs += [release_host(room) for room in self._rooms]
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                await asyncio.gather(*jobs)
        except TimeoutError:
            self._warnings.append(f"leaving took over {LEAVE_TIMEOUT_S:g} s")

    def _warn_about_self(self, summary: Summary) -> None:
        load = summary.loadgen_cpu_pct
        if load is not None and load.mean > 85:
            self._warnings.append(
                f"the load generator used {load.mean:.0f}% of its core on average: "
                "its own event loop may have delayed packets and frames; "
                "run fewer peers per process or several load generators"
            )


def _config_dict(config: LoadTestConfig) -> dict[str, Any]:
    data = asdict(config)
    if data.get("secret"):
        data["secret"] = "***"
    data["ice_hosts"] = list(config.ice_hosts)
    return data
