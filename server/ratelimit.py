"""Rate limits: a sliding window in process, a fixed window in Redis for several nodes."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.errors import Unavailable

logger = logging.getLogger(__name__)

#: Redis key of one user's counter in one window: ``huddle:rate:{name}:{key}:{window}``.
REDIS_RATE_KEY = "huddle:rate:{name}:{key}:{window}"


class RateLimiterUnavailable(Unavailable):
    """The shared rate-limit counters cannot be reached: refuse rather than guess."""

    code = "rate_limiter_unavailable"


class RateLimiter(Protocol):
    async def hit(self, name: str, key: str, limit: int, window_s: float) -> float | None:
        """Count one event; None if allowed, else the seconds to wait before retrying.

        Raises :class:`RateLimiterUnavailable` when the count cannot be kept.
        """


class LocalRateLimiter:
    """Exact sliding window per key, in this process."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._events: dict[tuple[str, str], deque[float]] = {}
        self._max_keys = max_keys

    async def hit(self, name: str, key: str, limit: int, window_s: float) -> float | None:
        now = time.monotonic()
        events = self._events.setdefault((name, key), deque())
        while events and events[0] <= now - window_s:
            events.popleft()
        if len(events) >= limit:
            return events[0] + window_s - now
        events.append(now)
        if len(self._events) > self._max_keys:
            self._prune(now, window_s)
        return None

    def _prune(self, now: float, window_s: float) -> None:
        for k in [k for k, v in self._events.items() if not v or v[-1] <= now - window_s]:
            del self._events[k]


class RedisRateLimiter:
    """Fixed window shared by every node.

    Fails closed: while Redis is down every hit raises
    :class:`RateLimiterUnavailable` (HTTP 503 ``rate_limiter_unavailable``).
    Letting everything through would turn a Redis outage into an open door for
    the abuse the limit exists to stop; a limited operation (initiating a call)
    is refused, nothing already running is affected. One warning is logged
    when Redis goes away and one line when it is back.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._down = False

    async def hit(self, name: str, key: str, limit: int, window_s: float) -> float | None:
        now = time.time()
        window = math.floor(now / window_s)
        redis_key = REDIS_RATE_KEY.format(name=name, key=key, window=window)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(redis_key)
                pipe.expire(redis_key, math.ceil(window_s) + 1)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            if not self._down:
                logger.warning(
                    "rate limiter: Redis unavailable, refusing limited requests (%s)", exc
                )
            self._down = True
            raise RateLimiterUnavailable(
                "the rate limiter cannot reach Redis; retry later"
            ) from exc
        if self._down:
            logger.info("rate limiter: Redis reachable again")
            self._down = False
        if int(count) > limit:
            return (window + 1) * window_s - now
        return None
