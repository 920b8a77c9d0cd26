"""Who may be in a conversation: the rule the server checks when one is created.

Huddle has no user directory of its own, so by default (:class:`OpenMembership`)
the creator's list is taken as it is: fine for dev mode and for deployments
where every token holder may ring every other. A production operator whose
users may not ring arbitrary people points ``HUDDLE_MEMBERSHIP_URL`` at its own
service (:class:`WebhookMembership`); the server then asks it, signed like the
notification webhooks, before any conversation exists:

``POST <url>`` with body ``{"created_by": <user id>, "member_ids": [<user id>, ...]}``
(compact JSON, sorted keys) and headers ``X-Huddle-Event: conversation.create``,
``X-Huddle-Timestamp`` and ``X-Huddle-Signature`` (see :mod:`server.notify`),
keyed with ``HUDDLE_MEMBERSHIP_SECRET``.

A 2xx answer allows the conversation; any 4xx refuses it (403
``membership_denied``); no answer within ``HUDDLE_MEMBERSHIP_TIMEOUT``, a 5xx or
an unreachable service refuses it too (503 ``membership_unavailable``): the
check fails closed. Calls and invitations then stay within the conversation's
members, as before.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Protocol

import aiohttp

from server.errors import Forbidden, Unavailable
from server.notify import sign

logger = logging.getLogger(__name__)


class MembershipDenied(Forbidden):
    code = "membership_denied"


class MembershipUnavailable(Unavailable):
    code = "membership_unavailable"


class Membership(Protocol):
    async def check(self, created_by: str, member_ids: list[str]) -> None:
        """Return if the conversation may exist; raise MembershipDenied or
        MembershipUnavailable otherwise."""

    async def close(self) -> None: ...


class OpenMembership:
    """The creator's list is the membership (the default)."""

    async def check(self, created_by: str, member_ids: list[str]) -> None:
        return None

    async def close(self) -> None:
        return None


class WebhookMembership:
    """Asks the operator's service (see the module docstring)."""

    def __init__(self, url: str, secret: str, *, timeout_s: float = 2.0) -> None:
        self._url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def check(self, created_by: str, member_ids: list[str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = json.dumps(
            {"created_by": created_by, "member_ids": member_ids},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "huddle-membership",
            "X-Huddle-Event": "conversation.create",
            "X-Huddle-Timestamp": timestamp,
            "X-Huddle-Signature": sign(self._secret, timestamp, body),
        }
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            logger.warning("membership service unreachable: %s", type(exc).__name__)
            raise MembershipUnavailable(
                "the membership service did not answer; retry later"
            ) from exc
        if 200 <= status < 300:
            return
        if 400 <= status < 500:
            raise MembershipDenied("the membership service refused these members")
        raise MembershipUnavailable(f"the membership service answered HTTP {status}")

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
