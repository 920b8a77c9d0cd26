"""The SFU of a node as N worker processes, behind signaling's one seam.

:class:`WorkerPool` implements :class:`~media.seam.SfuEndpoint`: it routes each
call's messages and events to the worker that holds its room, placing a room
it does not know on the least-loaded live worker (score: the participants of
its rooms, each room at least one, plus forwarded packets/s and CPU, weighed
like a node's in :mod:`signaling.load`). A worker that dies is restarted
(bounded backoff); its rooms leave the routing table and each of their
participants gets :class:`~media.errors.SessionLost` (``sfu_session_lost``:
start the SFU session over), so the next publish offer places the room anew.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from media.errors import MediaError, SessionLost
from media.seam import Message, ParticipantLeft, RoomEnded, RoomEvent, SignalingPort, SpanPort

from .link import WorkerLink
from .protocol import Frame, WorkerError, WorkerSpec

logger = logging.getLogger(__name__)

#: Score of one forwarded packet per second and of one percent of a core
#: (the node weights of :mod:`signaling.load`: 1 participant = 1000 packets/s = 10 %).
PPS_WEIGHT = 0.001
CPU_WEIGHT = 0.1
#: A routed room its worker does not report is dropped from the table after this
#: long without a message for it (a new room is reported at the next ``load``).
ROUTE_IDLE_S = 3.0


@dataclass(frozen=True)
class PoolSettings:
    #: Restart delays after a worker dies: doubling from ``backoff_min_s``.
    backoff_min_s: float = 0.2
    backoff_max_s: float = 5.0
    #: A worker that ran this long before dying restarts after the shortest delay.
    healthy_after_s: float = 30.0
    #: How long a placement waits for some worker to be up.
    ready_timeout_s: float = 30.0
    #: How long a worker gets to close its rooms at shut-down before it is killed.
    close_timeout_s: float = 5.0
    #: A worker that sends nothing for this long (stuck) is killed and restarted.
    stall_after_s: float = 10.0


@dataclass
class _Route:
    worker: WorkerLink
    #: Who sent this room messages through the pool (told if the worker dies).
    seen: set[str]
    used_at: float
    #: Requests for the room on their way: it is not dropped from the table meanwhile.
    pending: int = 0


class WorkerPool:
    """A node's SFU as ``count`` worker processes (``spec(index)`` starts each)."""

    def __init__(
        self,
        spec: Callable[[int], WorkerSpec],
        count: int,
        signaling: SignalingPort,
        settings: PoolSettings | None = None,
        span: SpanPort | None = None,
    ) -> None:
        self._spec = spec
        self._count = count
        self._signaling = signaling
        #: Rooms across nodes: where the workers' span states go (None: they do not span).
        self._span = span
        self.settings = settings or PoolSettings()
        self._links: list[WorkerLink | None] = [None] * count
        self._routes: dict[str, _Route] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._notices: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        #: Worker restarts so far (a metric), and what dead workers had counted.
        self.restarts = 0
        self._retired_packets = 0
        self._retired_cpu_s = 0.0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each is up (bounded)."""
        loop = asyncio.get_running_loop()
        self._supervisors = [
            loop.create_task(self._supervise(i), name=f"worker {i} supervisor")
            for i in range(self._count)
        ]
        try:
            async with asyncio.timeout(self.settings.ready_timeout_s):
                while len(self.live_workers()) < self._count:
                    await self._wait_changed()
        except TimeoutError:
            await self.close()
            raise RuntimeError(
                f"{self._count - len(self.live_workers())} media worker(s) did not start "
                f"within {self.settings.ready_timeout_s:.0f} s"
            ) from None
        logger.info("media: %d worker processes up", self._count)

    async def close(self) -> None:
        """Stop the workers in order: each closes its rooms, bounded, then is killed.
        Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        links = [link for link in self._links if link is not None]
        await asyncio.gather(*(link.close(self.settings.close_timeout_s) for link in links))
        for task in [*self._supervisors, *self._notices]:
            task.cancel()
        await asyncio.gather(*self._supervisors, *self._notices, return_exceptions=True)
        for link in self._links:  # one started while closing
            if link is not None:
                link.kill()
        self._links = [None] * self._count
        self._routes.clear()
        self._closed.set()

    async def _supervise(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        delay = self.settings.backoff_min_s
        while not self._closing:
            started = loop.time()
            try:
                link = await WorkerLink.spawn(
                    self._spec(index), self._deliver, self._announce if self._span else None
                )
            except Exception:
                logger.exception("media worker %d could not start", index)
            else:
                self._links[index] = link
                ready = loop.create_task(self._announce_ready(link))
                try:
                    status = await self._watch(link)
                finally:
                    ready.cancel()
                self._links[index] = None
                self._changed.set()
                self._retired_packets += link.packets
                self._retired_cpu_s += link.cpu_s
                if self._closing:
                    return
                self.restarts += 1
                logger.error(
                    "media worker %d (pid %d) exited with %s", index, link.process.pid, status
                )
                self._lost(link)
            if loop.time() - started > self.settings.healthy_after_s:
                delay = self.settings.backoff_min_s
            logger.info("media worker %d restarts in %.1f s", index, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.backoff_max_s)

    async def _watch(self, link: WorkerLink) -> int:
        """Until the worker is gone; one silent for ``stall_after_s`` (stuck: its load
        report is due every second) is killed, and then restarts like a dead one."""
        finished = asyncio.ensure_future(link.finished())
        try:
            while True:
                done, _ = await asyncio.wait([finished], timeout=1.0)
                if done:
                    return finished.result()
                silent = asyncio.get_running_loop().time() - link.heard_at
                if silent > self.settings.stall_after_s and not self._closing:
                    logger.error("media worker %d silent for %.0f s: killed", link.index, silent)
                    link.kill()
        finally:
            if not finished.done():
                finished.cancel()
                await asyncio.gather(finished, return_exceptions=True)

    async def _announce_ready(self, link: WorkerLink) -> None:
        await link.ready.wait()
        self._changed.set()

    async def _wait_changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def _lost(self, link: WorkerLink) -> None:
        """Forget the rooms of a dead worker and tell their participants."""
        lost: list[tuple[str, str]] = []
        for call_id, route in list(self._routes.items()):
            if route.worker is link:
                del self._routes[call_id]
                pids = route.seen | link.rooms.get(call_id, frozenset())
                lost.extend((call_id, pid) for pid in sorted(pids))
        rooms = len({call_id for call_id, _ in lost})
        logger.warning(
            "media worker %d lost %d room(s); telling %d participant(s) to start over",
            link.index,
            rooms,
            len(lost),
        )
        if lost:
            task = asyncio.get_running_loop().create_task(self._tell_lost(lost))
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)

    async def _tell_lost(self, lost: list[tuple[str, str]]) -> None:
        error = SessionLost("the media worker of this room restarted; publish again")
        for call_id, pid in lost:
            try:
                await self._signaling.send_error(call_id, pid, error)
            except Exception:
                logger.exception("Room(%s) could not tell %s its session was lost", call_id, pid)

    # -- what the workers send ----------------------------------------------------------

    async def _announce(self, call_id: str, state: Message) -> None:
        if self._span is not None:
            await self._span.announce(call_id, state)

    async def on_span(self, call_id: str, state: Message) -> None:
        """Another node's span state: to the worker of the call's room, if there is one."""
        route = self._routes.get(call_id)
        if route is None or not route.worker.live:
            return
        await self._request(route, {"kind": "span", "call_id": call_id, "state": state})

    async def _deliver(self, call_id: str, pid: str, what: Message | MediaError) -> None:
        if isinstance(what, MediaError):
            await self._signaling.send_error(call_id, pid, what)
        else:
            await self._signaling.send_to(call_id, pid, what)

    # -- state --------------------------------------------------------------------------

    def live_workers(self) -> list[WorkerLink]:
        return [link for link in self._links if link is not None and link.live]

    def worker_of(self, call_id: str) -> int | None:
        """The index of the worker the call's room is routed to (tests, logs)."""
        route = self._routes.get(call_id)
        return route.worker.index if route is not None else None

    def score(self, link: WorkerLink) -> float:
        """How loaded a worker is: its rooms' participants (each room at least one,
        so rooms placed since its last report count), packets/s and CPU."""
        rooms = {call_id for call_id, r in self._routes.items() if r.worker is link}
        rooms.update(link.rooms)
        people = sum(
            max(1, len(link.rooms.get(c, frozenset()) | self._seen(c, link))) for c in rooms
        )
        return people + link.pps * PPS_WEIGHT + link.cpu_percent * CPU_WEIGHT

    def _seen(self, call_id: str, link: WorkerLink) -> set[str]:
        route = self._routes.get(call_id)
        return route.seen if route is not None and route.worker is link else set()

    def has_room(self, call_id: str) -> bool:
        route = self._routes.get(call_id)
        return route is not None and route.worker.live

    def members(self) -> dict[str, frozenset[str]]:
        self._expire_routes()
        out: dict[str, frozenset[str]] = {}
        for link in self.live_workers():
            out.update(link.rooms)
        return out

    def totals(self) -> tuple[int, float]:
        """RTP packets forwarded and CPU seconds used by every worker so far (also
        those that died), for the node's load."""
        links = [link for link in self._links if link is not None]
        return (
            self._retired_packets + sum(link.packets for link in links),
            self._retired_cpu_s + sum(link.cpu_s for link in links),
        )

    def _expire_routes(self) -> None:
        now = asyncio.get_running_loop().time()
        for call_id, route in list(self._routes.items()):
            idle = route.pending == 0 and now - route.used_at > ROUTE_IDLE_S
            if idle and call_id not in route.worker.rooms:
                del self._routes[call_id]

    # -- SfuEndpoint --------------------------------------------------------------------

    async def _route(self, call_id: str) -> _Route:
        route = self._routes.get(call_id)
        if route is not None and route.worker.live:
            return route
        if self._closing:
            raise WorkerError("sfu_unavailable", "the media workers are stopping")
        self._expire_routes()
        try:
            async with asyncio.timeout(self.settings.ready_timeout_s):
                while not (live := self.live_workers()):
                    await self._wait_changed()
        except TimeoutError:
            raise WorkerError("sfu_unavailable", "no media worker is up") from None
        route = self._routes.get(call_id)  # placed while this one waited
        if route is not None and route.worker.live:
            return route
        worker = min(live, key=lambda link: (self.score(link), link.index))
        route = _Route(worker, set(), asyncio.get_running_loop().time())
        self._routes[call_id] = route
        logger.info("Room(%s) placed on media worker %d", call_id, worker.index)
        return route

    async def _request(self, route: _Route, frame: Frame) -> None:
        loop = asyncio.get_running_loop()
        route.used_at = loop.time()
        route.pending += 1
        try:
            error = await route.worker.request(frame)
        finally:
            route.pending -= 1
            route.used_at = loop.time()
        if error is not None:
            raise error

    async def handle_signal(self, call_id: str, participant_id: str, message: Message) -> None:
        if message.get("type") == "resume" and not self.has_room(call_id):
            # No room is opened for a resume: its worker died, or it never was here.
            raise SessionLost(f"no room for call {call_id} here: start over")
        route = await self._route(call_id)
        route.seen.add(participant_id)
        frame: Frame = {
            "kind": "signal",
            "call_id": call_id,
            "participant_id": participant_id,
            "message": message,
        }
        await self._request(route, frame)

    async def on_event(self, event: RoomEvent) -> None:
        route = self._routes.get(event.call_id)
        if route is None:
            return
        if isinstance(event, ParticipantLeft):
            route.seen.discard(event.participant_id)
            frame: Frame = {
                "kind": "left",
                "call_id": event.call_id,
                "participant_id": event.participant_id,
            }
        elif isinstance(event, RoomEnded):
            del self._routes[event.call_id]
            frame = {"kind": "ended", "call_id": event.call_id}
        await self._request(route, frame)
