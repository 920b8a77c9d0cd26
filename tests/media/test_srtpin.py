"""media.srtpin: the C unprotect gives what pylibsrtp gives, and None where it refuses."""

from __future__ import annotations

import os
import struct

import pylibsrtp
import pytest

from media.srtpin import SrtpReceiver
from media.udpout import ACCELERATED

KEY = bytes(range(30))


def sessions() -> tuple[pylibsrtp.Session, pylibsrtp.Session, pylibsrtp.Session]:
    """A sender and two receivers (libsrtp's replay window is per session)."""
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = [
        pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        for _ in range(2)
    ]
    return tx, rx[0], rx[1]


@pytest.mark.skipif(not ACCELERATED, reason="the C extension is not built here")
def test_c_and_python_unprotect_agree() -> None:
    tx, rx_c, rx_py = sessions()
    c, py = SrtpReceiver(rx_c, accelerated=True), SrtpReceiver(rx_py, accelerated=False)
    assert c.accelerated and not py.accelerated
    for seq in range(200):
        plain = struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 0xABC) + os.urandom(seq * 5)
        protected = tx.protect(plain)
        assert c.rtp(protected) == py.rtp(protected) == plain
    rtcp = struct.pack("!BBHI", 0x80, 201, 1, 0xABC)
    protected = tx.protect_rtcp(rtcp)
    assert c.rtcp(protected) == py.rtcp(protected) == rtcp


@pytest.mark.parametrize("accelerated", [True, False] if ACCELERATED else [False])
def test_refused_packets_give_none(accelerated: bool) -> None:
    tx, rx, _ = sessions()
    receiver = SrtpReceiver(rx, accelerated=accelerated)
    plain = struct.pack("!BBHII", 0x80, 96, 1, 2, 3) + b"payload"
    protected = tx.protect(plain)
    tampered = protected[:-1] + bytes([protected[-1] ^ 1])
    assert receiver.rtp(tampered) is None  # authentication fails
    assert receiver.rtp(protected) == plain
    assert receiver.rtp(protected) is None  # replayed
    assert receiver.rtp(b"\x80" * 5) is None  # too short to be anything
    assert receiver.rtcp(b"\x80\xc9\x00\x01" + bytes(4)) is None  # no auth tag
