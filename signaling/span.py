"""Rooms across nodes, signaling's side: on which node a participant's media lives,
and the rooms' span states between the call's nodes.

Without spanning (the default) every participant's media lives on the room's
owner node (:mod:`signaling.placement`). With spanning on (docs/deploy.md,
``HUDDLE_ROOM_NODE_LIMIT`` / ``HUDDLE_ROOM_SPAN``), each participant of a
room is assigned a *media node* when its first SFU message is routed, kept
in the Redis hash ``huddle:media:{call_id}`` (field: participant id, value:
node id; expires with the room, refreshed at each assignment), by one script
(:data:`ASSIGN`), so two nodes routing at once agree:

- policy ``owner`` (default): the owner, while it holds fewer than the limit of
  the room's media participants; then the participant's own socket node, if it
  holds fewer than the limit; else the live node holding the fewest of the room
  (ties: the least loaded). A room grows on its owner, and spills over only
  when it outgrows it.
- policy ``local``: always the participant's socket node (tests; and a balancer
  that already sends each user to its nearest node).

A participant keeps its media node while that node is live (in
``huddle:nodes``); one assigned to a dead node is assigned anew. The entry
is removed when the participant leaves the call; the hash goes when the call
ends. Every node writes back its own participants (``HSETNX``) each time it
sends its state, so a Redis that restarted empty has the hash again.

Span states (:mod:`media.span`) travel as ``span`` envelopes
``{state}`` on the other media nodes' own channels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from media.seam import Message
from server.config import SpanConfig
from signaling.bus import BusUnavailable
from signaling.load import NODES_KEY, PPS_WEIGHT

logger = logging.getLogger(__name__)

#: Redis hash: participant id -> the node its media lives on, per call.
MEDIA_KEY = "huddle:media:{call_id}"


def media_key(call_id: str) -> str:
    return MEDIA_KEY.format(call_id=call_id)


# KEYS[1] the media hash, KEYS[2] the nodes hash. ARGV: [1] participant, [2] owner,
# [3] the asking node (the participant's socket), [4] per-node limit (0: none),
# [5] policy, [6] TTL (ms), [7] stale after (ms), [8] PPS_WEIGHT.
# Returns the participant's media node.
ASSIGN = """
local pid, owner, here = ARGV[1], ARGV[2], ARGV[3]
local limit, policy = tonumber(ARGV[4]), ARGV[5]
local stale, w_pps = tonumber(ARGV[7]), tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live, score = {}, {}
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local ok, load = pcall(cjson.decode, entries[i + 1])
  if ok and type(load) == 'table' and now - (tonumber(load.at) or 0) <= stale
      and load.draining ~= true then
    live[entries[i]] = true
    score[entries[i]] = (tonumber(load.expected) or 0) + (tonumber(load.pps) or 0) * w_pps
  end
end
local current = redis.call('HGET', KEYS[1], pid)
if current and (live[current] or current == owner or current == here) then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return current
end
local counts = {}
local members = redis.call('HGETALL', KEYS[1])
for i = 1, #members, 2 do
  if members[i] ~= pid then
    counts[members[i + 1]] = (counts[members[i + 1]] or 0) + 1
  end
end
local choice
if policy == 'local' then
  choice = here
elseif limit <= 0 or (counts[owner] or 0) < limit then
  choice = owner
elseif (counts[here] or 0) < limit then
  choice = here
else
  local best, best_n, best_s = nil, nil, nil
  for node, _ in pairs(live) do
    local n, s = counts[node] or 0, score[node] or 0
    local tie = n == best_n and (s < best_s or (s == best_s and node < best))
    if best == nil or n < best_n or tie then
      best, best_n, best_s = node, n, s
    end
  end
  choice = best or here
end
redis.call('HSET', KEYS[1], pid, choice)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return choice
"""


class SpanPlacement:
    """Media nodes of participants in Redis (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        settings: SpanConfig,
        *,
        ttl_s: float = 15.0,
        nodes_key: str = NODES_KEY,
    ) -> None:
        self._redis = redis
        self._node_id = node_id
        self.settings = settings
        self._ttl_ms = int(ttl_s * 1000)
        #: The media hash outlives a quiet hour (refreshed by every assignment and state).
        self._hash_ttl_ms = max(self._ttl_ms * 20, 3_600_000)
        self._nodes_key = nodes_key

    async def media_node(self, call_id: str, participant_id: str, owner: str) -> str:
        """The node ``participant_id``'s media lives on (assigned now if it has none).
        Raises :class:`BusUnavailable`."""
        try:
            node = await self._redis.eval(  # type: ignore[misc]
                ASSIGN,
                2,
                media_key(call_id),
                self._nodes_key,
                participant_id,
                owner,
                self._node_id,
                str(self.settings.node_limit),
                self.settings.policy,
                str(self._hash_ttl_ms),
                str(self._ttl_ms),
                str(PPS_WEIGHT),
            )
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"media placement unavailable: {exc}") from exc
        return node.decode() if isinstance(node, bytes) else str(node)

    async def nodes(self, call_id: str, local: Iterable[str] = ()) -> set[str]:
        """Every node with media participants of the call. Keeps the hash alive (a
        room's nodes ask every second while it spans) and writes back, unless another
        node holds them now, the participants whose media is here (``local``), so a
        Redis that lost the hash has it again within a second."""
        key = media_key(call_id)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for pid in sorted(local):
                pipe.hsetnx(key, pid, self._node_id)
            pipe.hvals(key)
            pipe.pexpire(key, self._hash_ttl_ms)
            *_, values, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"media placement unavailable: {exc}") from exc
        return {v.decode() if isinstance(v, bytes) else str(v) for v in values}

    async def forget_call(self, call_id: str) -> None:
        """The call's room is gone (ended, released): forget every media node of it."""
        try:
            await self._redis.delete(media_key(call_id))
        except (RedisError, OSError) as exc:
            logger.warning("Call(%s) media nodes not dropped (expire): %s", call_id, exc)

    async def forget(self, call_id: str, participant_id: str) -> None:
        """The participant left the call: it has no media node any more."""
        try:
            await self._redis.hdel(media_key(call_id), participant_id)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            logger.warning("Call(%s) media node of %s kept: %s", call_id, participant_id, exc)


def span_envelope(state: Message) -> Message:
    return {"kind": "span", "state": state}
