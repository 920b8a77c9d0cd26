"""media.udpout: in-place SRTP and UDP GSO, checked with real sockets and libsrtp."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from media import udpout
from media.udpout import MAX_SEGMENTS, DatagramOut

KEY = bytes(range(30))


def rtp(seq: int, size: int) -> bytes:
    """An RTP packet of ``size`` bytes with a recognisable payload."""
    header = struct.pack("!BBHLL", 0x80, 96, seq, 1000 + seq, 0x1234)
    return header + bytes([seq % 251]) * (size - len(header))


def sessions() -> tuple[Session, Session]:
    tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
    return tx, rx


class Endpoints:
    def __init__(self, transport: Any, receiver: socket.socket) -> None:
        self.transport = transport
        self.receiver = receiver
        self.addr = receiver.getsockname()

    def received(self, count: int) -> list[bytes]:
        return [self.receiver.recv(65536) for _ in range(count)]

    def nothing_more(self) -> bool:
        try:
            self.receiver.recv(65536)
        except BlockingIOError:
            return True
        return False


@pytest.fixture(params=["c", "python"])
def accelerated(request: pytest.FixtureRequest) -> bool:
    """Every test runs against the C loop and the pure-Python fallback."""
    if request.param == "c" and udpout._udpsend is None:
        if os.environ.get("CI") == "true":
            pytest.fail("media._udpsend was not built (pip install needs a C compiler)")
        pytest.skip("media._udpsend not built")
    return request.param == "c"


def test_the_c_loop_is_used_by_default() -> None:
    if udpout._udpsend is None:
        if os.environ.get("CI") == "true":
            pytest.fail("media._udpsend was not built (pip install needs a C compiler)")
        pytest.skip("media._udpsend not built")
    if os.environ.get("HUDDLE_UDPSEND_PYTHON") == "1":
        pytest.skip("HUDDLE_UDPSEND_PYTHON=1 forces the Python loop")
    assert udpout.ACCELERATED


@pytest.fixture
async def ends() -> AsyncIterator[Endpoints]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    yield Endpoints(transport, receiver)
    receiver.close()
    transport.close()


def decrypt(rx: Session, datagrams: list[bytes]) -> list[bytes]:
    return [rx.unprotect(d) for d in datagrams]


@pytest.mark.parametrize("gso", [True, False])
async def test_a_frame_arrives_as_separate_protected_datagrams(
    ends: Endpoints, gso: bool, accelerated: bool
) -> None:
    tx, rx = sessions()
    out = DatagramOut(tx, ends.transport, ends.addr, gso=gso, accelerated=accelerated)
    assert out.accelerated is accelerated
    packets = [rtp(1, 1200), rtp(2, 1200), rtp(3, 1200), rtp(4, 345)]
    sent = out.send(packets)
    got = ends.received(4)
    assert decrypt(rx, got) == packets
    assert sent == sum(len(d) for d in got) == sum(len(p) + 10 for p in packets)
    assert out.datagrams == 4 and out.dropped == 0
    # One syscall for the frame with GSO (this kernel has it), one per packet without.
    assert out.syscalls == (1 if gso else 4)
    ends.receiver.setblocking(False)
    assert ends.nothing_more()
    out.close()


async def test_datagrams_protected_elsewhere_leave_in_gso_runs(ends: Endpoints) -> None:
    """send_protected (the Python fan-out's send) batches runs of one size like send."""
    tx, rx = sessions()
    out = DatagramOut(tx, ends.transport, ends.addr, accelerated=False)
    packets = [rtp(1, 1200), rtp(2, 1200), rtp(3, 345), rtp(4, 1200), rtp(5, 800)]
    protected = [out.protect(p) for p in packets]
    assert out.send_protected(protected) == sum(map(len, protected))
    assert decrypt(rx, ends.received(5)) == packets
    # 1200, 1200, 345 | 1200, 800: two runs, two syscalls.
    assert out.datagrams == 5 and out.syscalls == 2
    out.close()


async def test_sizes_that_cannot_share_a_segment_size_are_split(
    ends: Endpoints, accelerated: bool
) -> None:
    """GSO needs equal segments but the last: a larger packet or one after a short one
    starts a new batch, and order is kept."""
    tx, rx = sessions()
    out = DatagramOut(tx, ends.transport, ends.addr, accelerated=accelerated)
    sizes = [100, 800, 800, 300, 800, 900, 900, 900]
    packets = [rtp(i, size) for i, size in enumerate(sizes)]
    out.send(packets)
    assert decrypt(rx, ends.received(len(packets))) == packets
    # [100] [800 800 300] [800] [900 900 900]
    assert out.syscalls == 4
    out.close()


async def test_more_packets_than_one_gso_send_takes(ends: Endpoints, accelerated: bool) -> None:
    tx, rx = sessions()
    out = DatagramOut(tx, ends.transport, ends.addr, accelerated=accelerated)
    ends.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    packets = [rtp(i, 1100) for i in range(MAX_SEGMENTS + 10)]  # > 64 segments and > 60 kB
    out.send(packets)
    assert decrypt(rx, ends.received(len(packets))) == packets
    assert out.syscalls >= 2 and out.dropped == 0
    out.close()


async def test_close_releases_only_its_duplicate(ends: Endpoints, accelerated: bool) -> None:
    tx, _ = sessions()
    before = len(os.listdir("/proc/self/fd"))
    out = DatagramOut(tx, ends.transport, ends.addr, accelerated=accelerated)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    out.close()
    out.close()  # idempotent
    assert out.closed
    assert len(os.listdir("/proc/self/fd")) == before
    # The transport's own socket still works.
    ends.transport.sendto(b"still open", ends.addr)
    assert ends.received(1) == [b"still open"]
    with pytest.raises(ConnectionError):
        out.send([rtp(1, 100)])


async def test_matches_follows_session_transport_and_address(ends: Endpoints) -> None:
    tx, _ = sessions()
    other, _ = sessions()
    out = DatagramOut(tx, ends.transport, ends.addr)
    assert out.matches(tx, ends.transport, ends.addr)
    assert not out.matches(other, ends.transport, ends.addr)
    assert not out.matches(tx, ends.transport, ("127.0.0.1", 9))
    out.close()


async def test_c_and_python_loops_send_the_same_bytes(ends: Endpoints) -> None:
    if udpout._udpsend is None:
        pytest.skip("media._udpsend not built")
    sizes = [1200, 1200, 1200, 345, 90, 1200, 1300]
    sent = {}
    for accelerated in (True, False):
        tx, _ = sessions()  # same key, fresh session: same keystream
        out = DatagramOut(tx, ends.transport, ends.addr, accelerated=accelerated)
        packets = [rtp(i, size) for i, size in enumerate(sizes)]
        total = out.send(packets)
        sent[accelerated] = (total, ends.received(len(packets)), out.syscalls, out.datagrams)
        out.close()
    assert sent[True] == sent[False]


async def test_a_bad_packet_list_is_refused(ends: Endpoints, accelerated: bool) -> None:
    tx, rx = sessions()
    out = DatagramOut(tx, ends.transport, ends.addr, accelerated=accelerated)
    with pytest.raises(ValueError):
        out.send([rtp(1, 70_000)])
    if accelerated:
        with pytest.raises(TypeError):
            out.send([rtp(3, 100), "not bytes"])  # type: ignore[list-item]
    out.send([rtp(2, 200)])  # still usable
    assert decrypt(rx, ends.received(1)) == [rtp(2, 200)]
    out.close()


async def test_ipv6_and_a_zone_id_the_c_loop_cannot_parse() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("::1", 0)
        )
    except OSError:
        pytest.skip("no IPv6 loopback")
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.bind(("::1", 0))
    receiver.settimeout(2)
    try:
        tx, rx = sessions()
        out = DatagramOut(tx, transport, receiver.getsockname()[:2])
        assert out.accelerated is (udpout.ACCELERATED)
        packets = [rtp(1, 900), rtp(2, 900), rtp(3, 100)]
        out.send(packets)
        assert decrypt(rx, [receiver.recv(2048) for _ in packets]) == packets
        out.close()
        # A zone id: the C loop refuses the address, the Python loop takes over.
        scoped = DatagramOut(tx, transport, ("fe80::1%lo", 9))
        assert not scoped.accelerated
        scoped.close()
    finally:
        receiver.close()
        transport.close()


def test_an_uninitialised_c_object_refuses_to_send() -> None:
    if udpout._udpsend is None:
        pytest.skip("media._udpsend not built")
    raw = udpout._udpsend.UdpOut.__new__(udpout._udpsend.UdpOut)
    with pytest.raises(RuntimeError, match="not initialised"):
        raw.send([rtp(1, 100)])
