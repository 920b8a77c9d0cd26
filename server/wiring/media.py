"""The SFU in the composition root: its settings from the server's, and the media
plane of a node: one in-process SFU, or a pool of worker processes."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from media.aiortc_compat import check_aiortc
from media.config import IceServer, MediaConfig
from media.metrics import PrometheusMediaMetrics
from media.relay import RelayConfig
from media.relaywire import relay_key
from media.seam import SfuEndpoint, SignalingPort, SpanEndpoint, SpanPort
from media.sfu import Sfu
from media.workers.metrics import WorkerMetrics
from media.workers.pool import WorkerPool
from media.workers.protocol import WorkerSpec
from server.config import Config
from server.turn import node_ice_servers
from server.turn_settings import TurnSettings
from signaling.load import MediaLoad

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnIceServers:
    """TURN credentials minted per peer connection; a value, not a closure, so that a
    worker process gets it with the rest of its :class:`MediaConfig`."""

    turn: TurnSettings
    node_id: str
    ttl_s: int

    def __call__(self) -> list[IceServer]:
        servers = node_ice_servers(self.turn, self.node_id, time.time(), ttl_s=self.ttl_s)
        return [
            IceServer(
                urls=tuple([s.urls] if isinstance(s.urls, str) else s.urls),
                username=s.username,
                credential=s.credential,
            )
            for s in servers
        ]


def media_config(config: Config) -> MediaConfig:
    """The SFU's settings from the server's: ICE hosts, public IP, keyframe pacing,
    and TURN credentials minted per peer connection when TURN is configured."""
    turn = config.turn
    provider = TurnIceServers(turn, config.node_id, int(config.limits.max_duration_s))
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


def spans(config: Config) -> bool:
    """Whether this node's rooms may span nodes: asked for, and over Redis."""
    return config.span.enabled and config.redis_url is not None


def relay_config(config: Config, worker: int = 0) -> RelayConfig:
    """The relay socket's address (``HUDDLE_RELAY_HOST``, else the first ICE host, else
    loopback; with media workers, worker ``i`` binds ``HUDDLE_RELAY_PORT + i``) and the
    cluster secret (``HUDDLE_RELAY_SECRET``, else from the JWT secret)."""
    span = config.span
    host = span.relay_host or next(iter(config.media.ice_hosts), "127.0.0.1")
    secret = span.relay_secret or relay_key(config.jwt_secret).hex()
    port = span.relay_port + worker if span.relay_port else 0
    return RelayConfig(host=host, port=port, secret=secret)


@dataclass(frozen=True)
class MediaPlane:
    """What the app plugs into the hub and the load meter."""

    endpoint: SfuEndpoint
    load: Callable[[], MediaLoad]
    #: The SFU's side of rooms across nodes, when this node relays.
    span: SpanEndpoint | None = None
    #: The in-process SFU (one worker), or the pool of worker processes.
    sfu: Sfu | None = None
    pool: WorkerPool | None = None


@contextlib.asynccontextmanager
async def open_media(
    config: Config,
    signaling: SignalingPort,
    registry: CollectorRegistry,
    span: SpanPort | None = None,
) -> AsyncIterator[MediaPlane]:
    """``HUDDLE_WORKERS=1``: the SFU in this process, as always (unless
    ``HUDDLE_SFU_IN_PROCESS=0``: one worker process). More: that many worker
    processes behind a :class:`WorkerPool`, their metrics merged into ``registry``.
    With ``span`` (rooms across nodes) the SFU, or each worker, opens a relay socket.
    Closed (rooms first, workers stopped) when the block ends."""
    settings = media_config(config)
    if config.workers == 1 and config.sfu_in_process:
        media_metrics = PrometheusMediaMetrics(registry)
        relay = relay_config(config) if span is not None else None
        sfu = Sfu(
            settings, signaling, media_metrics, relay=relay, span=span, node_id=config.node_id
        )
        try:
            await sfu.start()
            yield MediaPlane(
                sfu,
                lambda: MediaLoad(
                    {call_id: len(members) for call_id, members in sfu.members().items()},
                    media_metrics.forwarded_packets(),
                ),
                span=sfu if relay is not None else None,
                sfu=sfu,
            )
        finally:
            await sfu.close()
        return
    check_aiortc()  # here too: a worker without the aiortc it needs would only crash-loop
    level = logging.getLogger().getEffectiveLevel()

    def spec(index: int) -> WorkerSpec:
        relay = relay_config(config, index) if span is not None else None
        return WorkerSpec(index, settings, level, relay=relay, node_id=config.node_id)

    pool = WorkerPool(spec, config.workers, signaling, span=span)
    collector = WorkerMetrics(pool)
    registry.register(collector)

    def load() -> MediaLoad:
        packets, cpu_s = pool.totals()
        sizes = {call_id: len(members) for call_id, members in pool.members().items()}
        return MediaLoad(sizes, packets, worker_cpu_s=cpu_s)

    try:
        await pool.start()
        yield MediaPlane(pool, load, span=pool if span is not None else None, pool=pool)
    finally:
        await pool.close()
        registry.unregister(collector)


SFU = web.AppKey("sfu", Sfu)
WORKERS = web.AppKey("workers", WorkerPool)
