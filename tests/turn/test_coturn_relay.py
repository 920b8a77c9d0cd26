"""The real coturn with the shipped config: Huddle's credentials open a relay,
media flows through it, and everything else is refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aioice import stun, turn

from server.turn import turn_password
from tests.support.polling import eventually
from tests.turn.coturn import Coturn, run_coturn
from tests.turn.huddle import huddle_credentials
from tests.turn.peers import nominated_pair, relay_call, relay_only_config

pytestmark = pytest.mark.coturn


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_relay_only_client_reaches_peer_through_coturn(
    coturn: Coturn, tmp_path: Path, loopback_ice: None, transport: str
) -> None:
    credentials = await huddle_credentials(coturn, tmp_path, transport)
    config = relay_only_config(
        credentials["uris"][0], credentials["username"], credentials["password"]
    )
    async with relay_call(config) as call:
        # The offerer gathered nothing but its relayed address on coturn.
        offer_sdp = call.offerer.localDescription.sdp
        assert " typ relay" in offer_sdp
        assert " typ host" not in offer_sdp and " typ srflx" not in offer_sdp

        async def connected() -> bool:
            return call.offerer.connectionState == "connected" and call.channel.readyState == "open"

        await eventually(connected, timeout=30, message="relay-only connection")

        for n in range(5):
            call.channel.send(f"ping {n}")
        echoed = [await asyncio.wait_for(call.echoes.get(), 10) for _ in range(5)]
        assert echoed == [f"ping {n}" for n in range(5)]

        async def audio_both_ways() -> bool:
            return call.answerer_audio.frames >= 25 and call.offerer_audio.frames >= 25

        await eventually(audio_both_ways, timeout=20, message="audio frames both ways")

        local = nominated_pair(call.offerer)
        assert local is not None
        assert local.local_candidate.type == "relay"
        assert (local.local_candidate.host, local.remote_candidate.host) == (
            "127.0.0.1",
            "127.0.0.1",
        )
        remote = nominated_pair(call.answerer)
        assert remote is not None
        assert remote.remote_candidate.type == "relay"
        assert (remote.remote_candidate.host, remote.remote_candidate.port) == (
            local.local_candidate.host,
            local.local_candidate.port,
        )

    # coturn authenticated exactly the credential Huddle issued.
    log = coturn.log()
    assert credentials["username"] in log
    assert "ALLOCATE processed, success" in log


async def test_wrong_password_is_refused(
    coturn: Coturn, tmp_path: Path, loopback_ice: None
) -> None:
    credentials = await huddle_credentials(coturn, tmp_path, "udp")
    wrong = turn_password("another-secret-of-enough-length", credentials["username"])

    # aioice's own error: the allocation is answered 401 even after authenticating.
    with pytest.raises(stun.TransactionFailed) as failed:
        await turn.create_turn_endpoint(
            asyncio.DatagramProtocol,
            server_addr=(coturn.host, coturn.port),
            username=credentials["username"],
            password=wrong,
        )
    assert failed.value.response.error_code == 401

    # A relay-only peer connection gathers no candidate at all, so it can never
    # connect (aiortc then never even starts ICE: the state stays "new").
    config = relay_only_config(credentials["uris"][0], credentials["username"], wrong)
    async with relay_call(config) as call:
        assert call.offerer.iceGatheringState == "complete"
        assert " typ " not in call.offerer.localDescription.sdp
        assert call.offerer.connectionState != "connected"

    async def logged() -> bool:
        return "401" in coturn.log() and credentials["username"] in coturn.log()

    await eventually(logged, timeout=5, message="coturn logging the refusal")


async def test_expired_credential_is_refused(coturn: Coturn) -> None:
    """coturn reads the expiry from the username: a correctly signed old one fails."""
    username = f"{int(time.time()) - 60}:expired-user"
    with pytest.raises(stun.TransactionFailed) as failed:
        await turn.create_turn_endpoint(
            asyncio.DatagramProtocol,
            server_addr=(coturn.host, coturn.port),
            username=username,
            password=turn_password(coturn.secret, username),
        )
    assert failed.value.response.error_code == 401


async def test_shipped_deny_list_blocks_loopback_relay(tmp_path: Path, loopback_ice: None) -> None:
    """Without the overlay's allowed-peer-ip, coturn refuses to relay to 127.0.0.1
    even with allow-loopback-peers: the shipped denied-peer-ip list applies."""
    async with run_coturn(tmp_path / "coturn", allow_loopback_peer=False) as coturn:
        username = f"{int(time.time()) + 600}:mallory"
        config = relay_only_config(
            coturn.uri("udp"), username, turn_password(coturn.secret, username)
        )
        async with relay_call(config) as call:
            assert " typ relay" in call.offerer.localDescription.sdp  # allocation works

            async def refused() -> bool:
                return "denied in the range: 127.0.0.0-127.255.255.255" in coturn.log()

            await eventually(refused, timeout=20, message="coturn refusing peer 127.0.0.1")
            assert "403: Forbidden IP" in coturn.log()
            assert call.offerer.connectionState != "connected"


class _Errors(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.errors: list[Exception] = []

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


# One address inside each IPv4 range of the recipe (coturn 4.6.1 answers an
# IPv6 peer on an IPv4 allocation with 443 before it looks at the deny list).
DENIED_SAMPLES = [
    "0.1.2.3",
    "10.0.0.1",
    "100.64.0.1",
    "127.0.0.1",
    "127.1.2.3",
    "169.254.169.254",
    "172.17.0.1",
    "172.31.255.254",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "240.0.0.1",
]


async def test_shipped_deny_list_refuses_each_private_range(tmp_path: Path) -> None:
    """A real allocation asks coturn to bind a channel to an address in every
    denied range; each is answered 403 and nothing is sent to the peer."""
    async with run_coturn(tmp_path / "coturn", allow_loopback_peer=False) as coturn:
        username = f"{int(time.time()) + 600}:prober"
        transport, protocol = await turn.create_turn_endpoint(
            _Errors,
            server_addr=(coturn.host, coturn.port),
            username=username,
            password=turn_password(coturn.secret, username),
        )
        try:
            for address in DENIED_SAMPLES:
                transport.sendto(b"x", (address, 9))

            async def all_answered() -> bool:
                return len(protocol.errors) == len(DENIED_SAMPLES)

            await eventually(all_answered, timeout=20, message="403 for every sample")
        finally:
            transport.close()
        codes = [
            exc.response.error_code if isinstance(exc, stun.TransactionFailed) else repr(exc)
            for exc in protocol.errors
        ]
        assert codes == [403] * len(DENIED_SAMPLES)
        # coturn refuses 0.0.0.0/8 (CVE-2020-26262 fix) and, with no-multicast-peers,
        # 224.0.0.0 and above before it reads the deny list; a shipped
        # denied-peer-ip line refuses every other sample.
        for address in DENIED_SAMPLES:
            if address not in {"0.1.2.3", "240.0.0.1"}:
                assert f"A peer IP {address} denied in the range" in coturn.log()
