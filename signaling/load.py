"""Node load in Redis, and the one script that places a room on the least-loaded node.

Every live node writes its load into one Redis hash, ``huddle:nodes`` (field:
node id, value: JSON), at each placement heartbeat (every third of the room
TTL) and at once when it starts draining::

    {"participants": 7, "expected": 10, "rooms": 2, "pps": 2100.0,
     "cpu": 35.0, "draining": false, "at": 1764600000000}

- ``participants``: participants in this node's SFU rooms (with media
  workers: the sum of theirs);
- ``expected``: the same, but each room placed in the last two minutes
  counted at least at its size hint (the call's participants who have not
  declined or left), so a room whose participants are still on their way
  already weighs what it will;
- ``rooms``: SFU rooms placed on this node;
- ``pps``: RTP packets per second forwarded to subscribers (since the last
  heartbeat);
- ``cpu``: CPU of the node's processes (the front and its media workers),
  percent of one core (since the last heartbeat);
- ``draining``: the node takes no new rooms;
- ``at``: Redis time (ms) of the write; an entry older than the room TTL is a
  dead node's and is dropped by the next placement.

A node's score is ``expected + pps * PPS_WEIGHT + cpu * CPU_WEIGHT`` (one
participant = 1000 packets/s = 10 % of a core). :data:`PLACE` places a room
that has no owner (``huddle:room:{call_id}`` unset): in one script, so two
nodes racing for one room never both own it, it picks the live, non-draining
node with the lowest score (the asking node on a tie, else the lowest id),
sets the room key to it, and adds the room's size hint to that node's
``expected``, so a burst of rooms placed between two heartbeats spreads out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

#: Redis hash: node id -> JSON load (above).
NODES_KEY = "huddle:nodes"
#: Score of one forwarded packet per second, and of one percent of a core.
PPS_WEIGHT = 0.001
CPU_WEIGHT = 0.1

# KEYS[1] the room key, KEYS[2] the nodes hash. ARGV: [1] the asking node,
# [2] room TTL (ms), [3] size hint, [4] stale after (ms), [5] PPS_WEIGHT,
# [6] CPU_WEIGHT, [7] "1" when the asking node may not take it (draining).
# Returns {0, owner} (already placed), {1, owner} (placed now) or {2, ""}
# (no node can take it).
PLACE = """
local current = redis.call('GET', KEYS[1])
if current then return {0, current} end
local me, ttl, hint = ARGV[1], ARGV[2], tonumber(ARGV[3])
local stale, w_pps, w_cpu = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local me_excluded = ARGV[7] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('HGETALL', KEYS[2])
local best, best_score, best_load = nil, nil, nil
for i = 1, #entries, 2 do
  local node = entries[i]
  local ok, load = pcall(cjson.decode, entries[i + 1])
  if not ok or type(load) ~= 'table' or now - (tonumber(load.at) or 0) > stale then
    redis.call('HDEL', KEYS[2], node)
  elseif load.draining ~= true and not (me_excluded and node == me) then
    local score = (tonumber(load.expected) or 0) + (tonumber(load.pps) or 0) * w_pps
      + (tonumber(load.cpu) or 0) * w_cpu
    local better = best == nil or score < best_score
    if not better and score == best_score and best ~= me then
      better = node == me or node < best
    end
    if better then best, best_score, best_load = node, score, load end
  end
end
if best == nil then
  if me_excluded then return {2, ''} end
  best = me  -- no load published at all (Redis lost it): the asking node
else
  best_load.expected = (tonumber(best_load.expected) or 0) + math.max(hint, 1)
  best_load.rooms = (tonumber(best_load.rooms) or 0) + 1
  redis.call('HSET', KEYS[2], best, cjson.encode(best_load))
end
redis.call('SET', KEYS[1], best, 'PX', ttl)
return {1, best}
"""

# KEYS[1] the nodes hash; ARGV[1] node id, ARGV[2] its load as JSON (``at`` is
# set here, from Redis's clock, so that nodes' clocks need not agree).
PUBLISH = """
local load = cjson.decode(ARGV[2])
local t = redis.call('TIME')
load.at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(load))
return 1
"""


@dataclass(frozen=True)
class MediaLoad:
    """What the SFU of this node carries now."""

    #: Participants of each open SFU room, by call id.
    room_sizes: Mapping[str, int]
    #: RTP packets forwarded to subscribers since the process started.
    forwarded_packets: int = 0
    #: CPU seconds of the node's media worker processes so far (none: the SFU
    #: runs in this process), added to this process's own.
    worker_cpu_s: float = 0.0


@dataclass(frozen=True)
class NodeLoad:
    participants: int = 0
    expected: int = 0
    rooms: int = 0
    pps: float = 0.0
    cpu: float = 0.0
    draining: bool = False

    @property
    def score(self) -> float:
        return self.expected + self.pps * PPS_WEIGHT + self.cpu * CPU_WEIGHT

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


MediaSource = Callable[[], MediaLoad]


def no_media() -> MediaLoad:
    return MediaLoad({})


class LoadMeter:
    """Samples this node's load: the SFU's rooms, the packet rate and the CPU
    of the process since the previous sample."""

    def __init__(
        self,
        media: MediaSource = no_media,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.media = media
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._last = (clock(), cpu_clock(), 0)
        self._rates = (0.0, 0.0)
        self._on_attach: list[Callable[[], None]] = []

    @property
    def attached(self) -> bool:
        """Whether an SFU is measured: a node without one takes no rooms."""
        return self.media is not no_media

    def attach(self, media: MediaSource) -> None:
        """Measure this SFU from now on (and tell who asked, e.g. to publish at once).
        Rates count from here: media workers' start-up CPU is not load."""
        self.media = media
        now = media()
        self._last = (
            self._clock(),
            self._cpu_clock() + now.worker_cpu_s,
            now.forwarded_packets,
        )
        self._rates = (0.0, 0.0)
        for hook in self._on_attach:
            hook()

    def detach(self) -> None:
        self.media = no_media

    def on_attach(self, hook: Callable[[], None]) -> None:
        self._on_attach.append(hook)

    def sample(self, owned: frozenset[str], hints: Mapping[str, int], draining: bool) -> NodeLoad:
        media = self.media()
        now, packets = self._clock(), media.forwarded_packets
        cpu = self._cpu_clock() + media.worker_cpu_s
        then, cpu_then, packets_then = self._last
        elapsed = now - then
        if elapsed >= 0.5:  # else keep the previous rates (two samples close together)
            self._rates = (
                max(0.0, (packets - packets_then) / elapsed),
                max(0.0, 100.0 * (cpu - cpu_then) / elapsed),
            )
            self._last = (now, cpu, packets)
        pps, cpu_percent = self._rates
        sizes = {call_id: media.room_sizes.get(call_id, 0) for call_id in owned}
        return NodeLoad(
            participants=sum(sizes.values()),
            expected=sum(max(size, hints.get(call_id, 0)) for call_id, size in sizes.items()),
            rooms=len(owned),
            pps=round(pps, 1),
            cpu=round(cpu_percent, 1),
            draining=draining,
        )
