"""Readiness: each dependency registers a check; /ready reports all of them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Check = Callable[[], Awaitable[None]]


class Readiness:
    def __init__(self, timeout_s: float = 2.0) -> None:
        self._checks: dict[str, Check] = {}
        self._timeout_s = timeout_s
        self.shutting_down = False

    def add(self, name: str, check: Check) -> None:
        """``check`` returns when the dependency is usable and raises otherwise."""
        self._checks[name] = check

    async def report(self) -> tuple[bool, dict[str, dict[str, str]]]:
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[name]) for name in names))
        report = dict(zip(names, results, strict=True))
        ok = not self.shutting_down and all(r["status"] == "up" for r in results)
        return ok, report

    async def _run(self, check: Check) -> dict[str, str]:
        try:
            async with asyncio.timeout(self._timeout_s):
                await check()
        except TimeoutError:
            return {"status": "down", "error": f"no answer within {self._timeout_s:g} s"}
        except Exception as exc:  # any failure means "down"; the message says why
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            return {"status": "down", "error": message}
        return {"status": "up"}
