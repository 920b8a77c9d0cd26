"""The SFU's dominant speaker, shown in real browsers.

Chromium's default fake microphone beeps for 20 ms twice a second: never
speech. The talker gets a Chromium of its own whose microphone plays a WAV
file of speech-like syllables, so only its audio levels (RFC 6464, written by
Chromium's WebRTC) say it speaks.
"""

from __future__ import annotations

import math
import re
import struct
import wave
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS, Server
from tests.browser.support import (
    EVENTUALLY_S,
    POLL_S,
    Participant,
    join_by_link,
    make_call,
    make_user,
    new_participant,
)
from tests.support.polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RATE = 48_000


def write_talk(path: Path, seconds: float = 6.0) -> None:
    """Syllables of 200 ms at varying pitch, 50 ms apart: loud (about -12 dBov), unsteady."""
    frames = bytearray()
    pitches = (180, 240, 210, 300, 260)
    n = 0
    while n < seconds * RATE:
        pitch = pitches[(n // (RATE // 4)) % len(pitches)]
        syllable = n % (RATE // 4)  # 250 ms: 200 of voice, 50 of pause
        value = 0.0
        if syllable < RATE // 5:
            envelope = math.sin(math.pi * syllable / (RATE // 5))
            phase = 2 * math.pi * pitch * n / RATE
            value = 0.5 * envelope * (math.sin(phase) + 0.4 * math.sin(3 * phase)) / 1.4
        frames += struct.pack("<h", round(value * 32767))
        n += 1
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(bytes(frames))


async def tile_classes(viewer: Participant, key: str) -> str:
    tile = viewer.page.locator(f'.tile[data-participant="{key}"]')
    return str(await tile.get_attribute("class") or "")


@pytest.mark.timeout(240)
async def test_the_talker_is_highlighted_and_enlarged(
    browser: Any, server: Server, people: list[Participant], tmp_path: Path
) -> None:
    talk = tmp_path / "talk.wav"
    write_talk(talk)
    talker_browser = await browser.browser_type.launch(
        executable_path=CHROMIUM,
        args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={talk}"],
        headless=True,
    )
    try:
        ana, bob, cyd = [await make_user(server, name) for name in ("ana", "bob", "cyd")]
        call_id = await make_call(server, ana, bob, cyd)
        talker = await new_participant(talker_browser, server.base_url, "ana")
        listeners = [await new_participant(browser, server.base_url, n) for n in ("bob", "cyd")]
        people.extend([talker, *listeners])
        talker.expect_console("status of 409")  # the caller is joined from initiation…
        talker.expect_console("status of 404")  # …so it asks for TURN servers: none configured
        for participant, user in zip([talker, *listeners], (ana, bob, cyd), strict=True):
            await join_by_link(participant, call_id, user)

        async def marked(viewer: Participant, key: str, classes: set[str]) -> bool:
            return classes <= set((await tile_classes(viewer, key)).split())

        for viewer in listeners:
            await eventually(
                lambda v=viewer: marked(v, ana.user_id, {"dominant", "enlarged"}),
                message=f"{viewer.name} shows ana large",
                timeout=EVENTUALLY_S,
                interval=POLL_S,
            )
            others = [bob.user_id if viewer.name == "cyd" else cyd.user_id, "self"]
            for key in others:
                assert "dominant" not in await tile_classes(viewer, key)
        # The talker's own tile is outlined, never enlarged.
        await eventually(
            lambda: marked(talker, "self", {"dominant"}),
            message="ana's own tile outlined",
            timeout=EVENTUALLY_S,
            interval=POLL_S,
        )
        assert "enlarged" not in await tile_classes(talker, "self")
        _, metrics = server.request("GET", "/metrics")
        changes = re.search(r"^video_call_sfu_dominant_speaker_changes_total (\S+)$", metrics, re.M)
        assert changes is not None and float(changes.group(1)) >= 1
    finally:
        for participant in people:
            if participant.context.browser is talker_browser:
                await participant.context.close()
        await talker_browser.close()
