"""Configuration of the SFU: one frozen dataclass, validated on construction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer

from .iceports import check_range


@dataclass(frozen=True)
class IceServer:
    """One STUN/TURN server handed to aiortc (never a public default)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class MediaConfig:
    """Settings of the media plane.

    ``ice_hosts``: host addresses ICE may offer; empty means aioice's own choice
    (every non-loopback interface). Tests and benchmarks use ``("127.0.0.1",)``.
    ``ice_servers``: STUN/TURN servers; empty means none (aiortc's default would
    contact a public STUN server, which we never want implicitly).
    ``announced_ip``: public address written into our host candidates when the
    server sits behind a 1:1 NAT.
    ``pli_min_interval``: at most one keyframe request per publisher track per
    this many seconds; extra requests are deferred and coalesced, never dropped.
    ``udp_gso``: send a video frame's packets to a subscriber in one UDP GSO
    ``sendmsg`` (falls back to one datagram per packet where the kernel
    refuses); off sends one datagram per packet.
    ``negotiation_timeout``: how long the SFU waits for a subscribe answer;
    a participant that does not answer in time is dropped from its room (an
    ``error`` with code ``negotiation_timeout``).
    ``renegotiation_delay``: changes to what a subscriber receives within this
    many seconds after the first (a burst of joiners) go into one subscribe
    offer; a participant's first offer is sent at once.
    """

    ice_hosts: tuple[str, ...] = ()
    #: UDP ports ICE host candidates bind within (media/iceports.py); None: any.
    ice_ports: tuple[int, int] | None = None
    ice_servers: tuple[IceServer, ...] = ()
    announced_ip: str | None = None
    pli_min_interval: float = 0.5
    negotiation_timeout: float = 30.0
    renegotiation_delay: float = 0.05
    max_participants: int = 10
    udp_gso: bool = True
    #: The bitrate (bit/s) the SFU's REMB announces to each publisher for its
    #: video: a ceiling, like Janus's per-room ``bitrate``.
    max_publish_bitrate: int = 2_500_000
    #: Offer transport-cc to subscribers and estimate their downlinks on the send
    #: side (media/transportcc.py); off: their REMB only.
    transport_cc: bool = True
    #: Called for each new peer connection; adds servers whose credentials are
    #: short-lived (TURN REST), so a long-running node never hands out stale ones.
    ice_servers_provider: Callable[[], Sequence[IceServer]] | None = field(
        default=None, compare=False
    )

    def __post_init__(self) -> None:
        for host in self.ice_hosts:
            ip_address(host)  # raises ValueError on a bad address
        if self.ice_ports is not None:
            check_range(self.ice_ports)
        if self.announced_ip is not None:
            ip_address(self.announced_ip)
        if self.pli_min_interval < 0:
            raise ValueError("pli_min_interval must be >= 0")
        if self.negotiation_timeout <= 0:
            raise ValueError("negotiation_timeout must be > 0")
        if self.renegotiation_delay < 0:
            raise ValueError("renegotiation_delay must be >= 0")
        if self.max_publish_bitrate < 30_000:
            raise ValueError("max_publish_bitrate must be >= 30000 bit/s")
        if self.max_participants < 1:
            raise ValueError("max_participants must be >= 1")

    def rtc_configuration(self) -> RTCConfiguration:
        """An aiortc configuration with exactly the configured ICE servers.

        ``max-bundle``: one ICE/DTLS transport per connection (browsers and
        aiortc peers both bundle), so fewer handshakes and sockets.
        """
        servers = list(self.ice_servers)
        if self.ice_servers_provider is not None:
            servers.extend(self.ice_servers_provider())
        return RTCConfiguration(
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            iceServers=[
                RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
                for s in servers
            ],
        )
