"""How the app factory plugs the SFU in: one :class:`Sfu` per node, attached to the hub.

``create_app`` calls :func:`setup_media` after :func:`signaling.wiring.setup_signaling`,
so on shutdown the SFU closes its rooms (every peer connection, task and buffer)
before the hub goes away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from media.config import IceServer, MediaConfig
from media.errors import MediaError
from media.metrics import PrometheusMediaMetrics
from media.sfu import Sfu
from media.signals import Message
from server.config import Config
from server.keys import CALLS, CONFIG, METRICS
from server.models import CallMode
from server.turn import node_ice_servers
from signaling.keys import HUB

logger = logging.getLogger(__name__)

SFU = web.AppKey("sfu", Sfu)


class WrongMode(MediaError):
    code = "wrong_mode"


def media_config(config: Config) -> MediaConfig:
    """The SFU's settings from the server's: ICE hosts, public IP, keyframe pacing,
    and TURN credentials minted per peer connection when TURN is configured."""
    turn = config.turn

    def provider() -> list[IceServer]:
        servers = node_ice_servers(
            turn, config.node_id, time.time(), ttl_s=int(config.limits.max_duration_s)
        )
        return [
            IceServer(
                urls=tuple([s.urls] if isinstance(s.urls, str) else s.urls),
                username=s.username,
                credential=s.credential,
            )
            for s in servers
        ]

    return MediaConfig(
        ice_hosts=config.media.ice_hosts,
        announced_ip=config.media.public_ip,
        pli_min_interval=config.media.pli_min_interval_s,
        udp_gso=config.media.udp_gso,
        max_publish_bitrate=config.media.max_publish_bitrate,
        max_participants=config.limits.max_participants,
        ice_servers_provider=provider if (turn.uris or turn.stun_uris) else None,
    )


class SfuEndpoint:
    """The hub's :class:`signaling.sfu.SfuEndpoint` over this node's :class:`Sfu`.

    A publish offer (or ``subscribe``) for a call in P2P mode is refused: a 1:1 call's media flows
    between the two browsers and the SFU holds nothing for it.
    """

    def __init__(self, sfu: Sfu, app: web.Application) -> None:
        self._sfu = sfu
        self._app = app

    async def handle_signal(self, call_id: str, participant_id: str, message: Message) -> None:
        if self._sfu.room(call_id) is None and message.get("type") in ("offer", "subscribe"):
            call = await self._app[CALLS].store.get_call(call_id)
            if call is not None and call.mode is CallMode.P2P:
                raise WrongMode("this call is peer-to-peer; send media to the other participant")
        await self._sfu.handle_signal(call_id, participant_id, message)

    async def participant_gone(self, call_id: str, participant_id: str) -> None:
        await self._sfu.remove_participant(call_id, participant_id)

    async def close_room(self, call_id: str) -> None:
        await self._sfu.close_room(call_id)


def setup_media(app: web.Application) -> None:
    app.cleanup_ctx.append(media_ctx)


async def media_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = app[HUB]
    sfu = Sfu(media_config(app[CONFIG]), hub, PrometheusMediaMetrics(app[METRICS].registry))
    app[SFU] = sfu
    hub.attach_sfu(SfuEndpoint(sfu, app))
    logger.info(
        "media: SFU ready (ICE hosts: %s)",
        ", ".join(app[CONFIG].media.ice_hosts) or "all non-loopback interfaces",
    )
    try:
        yield
    finally:
        hub.attach_sfu(None)
        await sfu.close()
