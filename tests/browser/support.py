"""Helpers for the browser tests: participants (one context each), polling the page."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tests.support.polling import eventually

#: The browser tests' polling timeout: generous, for two cores running several
#: Chromium renderers and an aiortc SFU at once.
EVENTUALLY_S = 30.0
#: …and its interval: each poll evaluates in a page (often a getStats()), not free.
POLL_S = 0.25

# Console noise that is not an error of the page (e.g. Chromium's own complaints).
_IGNORED_CONSOLE = ("favicon.ico",)


@dataclass
class Participant:
    name: str
    context: Any
    page: Any
    console_errors: list[str] = field(default_factory=list)
    #: Console errors the test expects (substrings), e.g. the log of a refused request.
    expected_console: list[str] = field(default_factory=list)

    def expect_console(self, text: str) -> None:
        self.expected_console.append(text)

    def unexpected_console_errors(self) -> list[str]:
        return [e for e in self.console_errors if not any(s in e for s in self.expected_console)]

    async def state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.page.evaluate("() => window.huddle.state()")
        return result

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.page.evaluate("() => window.huddle.collectStats()")
        return result

    async def frames_from(self, user_id: str) -> int:
        remote = (await self.stats()).get(user_id)
        return int(remote["video"]["framesDecoded"]) if remote else 0

    async def audio_packets_from(self, user_id: str) -> int:
        remote = (await self.stats()).get(user_id)
        return int(remote["audio"]["packetsReceived"]) if remote else 0


async def new_participant(
    browser: Any, base_url: str, name: str, *, viewport: tuple[int, int] = (1280, 800)
) -> Participant:
    """A browser context of its own (fake devices, permissions, storage) and one page."""
    context = await browser.new_context(
        base_url=base_url,
        permissions=["camera", "microphone"],
        viewport={"width": viewport[0], "height": viewport[1]},
    )
    page = await context.new_page()
    participant = Participant(name, context, page)

    def on_console(message: Any) -> None:
        if message.type == "error" and not any(s in message.text for s in _IGNORED_CONSOLE):
            participant.console_errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: participant.console_errors.append(f"pageerror: {error}"))
    return participant


def call_url(call_id: str, token: str, *, ring: bool = False) -> str:
    query = {"call_id": call_id, "token": token}
    if ring:
        query["ring"] = "1"
    return "/?" + urlencode(query)


async def decodes_from(viewer: Participant, user_id: str, *, more_than: int = 0) -> int:
    """Wait until ``viewer`` has decoded more than ``more_than`` frames of ``user_id``'s video."""

    async def rising() -> int:
        frames = await viewer.frames_from(user_id)
        return frames if frames > more_than + 10 else 0

    result: int = await eventually(
        rising,
        message=f"{viewer.name} decoding video of {user_id} beyond {more_than} frames",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )
    return result


@dataclass(frozen=True)
class User:
    user_id: str
    name: str
    token: str


async def api(
    server: Any, method: str, path: str, token: str | None = None, body: Any = None
) -> Any:
    """An HTTP API call from the test (off the event loop: urllib blocks)."""
    status, answer = await asyncio.to_thread(server.request, method, path, token, body)
    return status, answer


async def make_user(server: Any, name: str) -> User:
    status, body = await api(server, "POST", "/v1/dev/token", body={"name": name})
    assert status == 201, body
    return User(body["user_id"], body["name"], body["token"])


async def make_call(server: Any, caller: User, *callees: User, call_type: str = "video") -> str:
    """A conversation of everyone and a call from ``caller`` ringing ``callees``."""
    status, conversation = await api(
        server,
        "POST",
        "/v1/conversations",
        caller.token,
        {"member_ids": [c.user_id for c in callees]},
    )
    assert status == 201, conversation
    status, call = await api(
        server,
        "POST",
        "/v1/calls/initiate",
        caller.token,
        {
            "call_type": call_type,
            "conversation_id": conversation["conversation_id"],
            "callee_ids": [c.user_id for c in callees],
        },
    )
    assert status == 201, call
    call_id: str = call["call_id"]
    return call_id


async def join_by_link(participant: Participant, call_id: str, user: User) -> str:
    """Open the direct-join link (as an embedding app would) and wait for the call view."""
    await participant.page.goto(call_url(call_id, user.token))
    await participant.page.locator("#screen-call").wait_for()
    return user.user_id


async def steady(sample: Callable[[], Awaitable[int]], *, window: float = 2.0) -> int:
    """Wait until ``sample`` stops changing for ``window`` seconds; return its value."""

    async def unchanged() -> int | None:
        before = await sample()
        await asyncio.sleep(window)
        after = await sample()
        return after if after == before else None

    result = await eventually(
        lambda: unchanged(), message="counter standing still", timeout=EVENTUALLY_S, interval=POLL_S
    )
    return int(result)


async def start_call_from_lobby(
    caller: Participant, invitees: list[str], ring: list[str], call_type: str = "video"
) -> dict[str, str]:
    """Drive the dev lobby: pick a name, create a conversation, ring ``ring``.

    Returns the invite links shown in the call, by invitee name.
    """
    page = caller.page
    await page.goto("/")
    await page.get_by_label("Your name").fill(caller.name)
    await page.get_by_role("button", name="Continue").click()
    await page.get_by_label("People to invite (names, comma-separated)").fill(", ".join(invitees))
    await page.get_by_role("button", name="Create conversation").click()
    for name in invitees:
        if name not in ring:
            await page.locator(f'#member-list input[data-name="{name}"]').uncheck()
    await page.get_by_role("button", name=f"Start {call_type} call").click()
    await page.locator("#screen-call").wait_for(state="visible")
    links: dict[str, str] = {}
    for name in ring:
        field = page.get_by_role("textbox", name=f"Invite link for {name}", exact=True)
        await field.wait_for()
        links[name] = await field.input_value()
    return links


async def accept(invitee: Participant, link: str) -> None:
    page = invitee.page
    await page.goto(link)
    await page.get_by_role("button", name="Accept").click()
    await page.locator("#screen-call").wait_for(state="visible")


async def me(participant: Participant) -> str:
    state = await participant.state()
    user_id: str = state["me"]["user_id"]
    return user_id
