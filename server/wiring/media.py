"""The SFU in the composition root: its settings from the server's, and one per node."""

from __future__ import annotations

import time

from aiohttp import web

from media.config import IceServer, MediaConfig
from media.sfu import Sfu
from server.config import Config
from server.turn import node_ice_servers


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
        ice_ports=config.media.ice_ports,
        announced_ip=config.media.public_ip,
        pli_min_interval=config.media.pli_min_interval_s,
        udp_gso=config.media.udp_gso,
        max_publish_bitrate=config.media.max_publish_bitrate,
        transport_cc=config.media.transport_cc,
        max_participants=config.limits.max_participants,
        ice_servers_provider=provider if (turn.uris or turn.stun_uris) else None,
    )


SFU = web.AppKey("sfu", Sfu)
