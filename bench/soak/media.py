"""Media rooms from the load tester, joining and leaving over and over.

Each round is one ``huddle loadtest`` process (a real aiortc client per peer,
in a process of its own so its CPU does not slow the lifecycle driver): its
rooms join, stay ``room_seconds``, leave, and the next round starts. A round
counts as failed when a peer failed to join or connect, a track received no
frame, or the process exited other than 0/1 (1 alone is a broken quality
threshold; the soak sets them loose, it watches for leaks, not for quality).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MediaStats:
    rounds: int = 0
    failed_rounds: int = 0
    peers: int = 0
    peers_failed: int = 0
    tracks: int = 0
    tracks_missing: int = 0
    packets_received: int = 0
    packets_lost: int = 0
    errors: list[str] = field(default_factory=list)

    def record_error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


class MediaRooms:
    def __init__(
        self,
        base_url: str,
        *,
        rooms: int = 2,
        publishers: int = 3,
        room_seconds: float = 20.0,
    ) -> None:
        self._base = base_url
        self._rooms = rooms
        self._publishers = publishers
        self._room_seconds = room_seconds
        self.stats = MediaStats()

    def command(self, report: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "server.cli",
            "loadtest",
            "--url",
            self._base,
            "--rooms",
            str(self._rooms),
            "--publishers",
            str(self._publishers),
            "--subscribers",
            "0",
            "--duration",
            f"{self._room_seconds:g}",
            "--ramp",
            "0",
            "--min-fps",
            "0",
            "--max-loss",
            "100",
            "--quiet",
            "--json",
            str(report),
        ]

    async def _round(self, folder: Path) -> None:
        stats = self.stats
        report = folder / f"round-{stats.rounds}.json"
        stats.rounds += 1
        process = await asyncio.create_subprocess_exec(
            *self.command(report),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        # Bounded: ramp + settle (20 s) + steady + leave (30 s) + slack.
        try:
            _, stderr = await asyncio.wait_for(
                process.communicate(), timeout=self._room_seconds + 120
            )
        except TimeoutError:
            process.kill()
            await process.wait()
            stats.failed_rounds += 1
            stats.record_error(f"round {stats.rounds}: the load tester hung; killed")
            return
        if process.returncode not in (0, 1) or not report.exists():
            stats.failed_rounds += 1
            tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
            stats.record_error(f"round {stats.rounds}: exit {process.returncode}: {tail}")
            return
        summary: dict[str, Any] = json.loads(report.read_text())["summary"]
        report.unlink()
        stats.peers += summary["peers_planned"]
        stats.peers_failed += summary["peers_failed"]
        stats.tracks += summary["tracks_expected"]
        stats.tracks_missing += summary["tracks_missing"]
        stats.packets_received += summary["packets_received"]
        stats.packets_lost += summary["packets_lost"]
        if summary["peers_failed"] or summary["tracks_missing"]:
            stats.failed_rounds += 1
            stats.record_error(
                f"round {stats.rounds}: {summary['peers_failed']} peers failed, "
                f"{summary['tracks_missing']} tracks missing"
            )

    async def run(
        self, stop: asyncio.Event, between: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Rounds until ``stop`` is set; the round in flight finishes first.

        ``between`` is awaited after each round, before the next starts: the
        moment when no media peer is connected (the soak samples there)."""
        with tempfile.TemporaryDirectory(prefix="huddle-soak-media-") as folder:
            while not stop.is_set():
                await self._round(Path(folder))
                if between is not None:
                    await between()
