"""Types of the C extension built from media/_udpsend.c and media/_fanout.c."""

from collections.abc import Callable

MAX_SEGMENTS: int
MAX_BATCH_BYTES: int

class UdpOut:
    gso: bool
    datagrams: int
    syscalls: int
    dropped: int
    last_errno: int
    gso_errno: int
    def __init__(
        self,
        fd: int,
        host: str,
        port: int,
        ctx: int,
        protect: int,
        gso: bool = True,
        keep: object = None,
    ) -> None: ...
    def send(self, packets: list[bytes], /) -> int: ...
    def close(self) -> None: ...

class SrtpIn:
    failures: int
    last_error: int
    def __init__(self, ctx: int, unprotect: int, unprotect_rtcp: int) -> None: ...
    def rtp(self, data: bytes, /) -> bytes | None: ...
    def rtcp(self, data: bytes, /) -> bytes | None: ...

PacketTuple = tuple[bytes, int, int, int, int, bool, bool, int, int, int, int, int]

class Down:
    out: UdpOut | None
    spill: Callable[[list[bytes]], None] | None
    ready: bool
    epoch: int | None
    rtp_timestamp: int
    gated: bool
    packets_sent: int
    octets_sent: int
    send_errors: int
    ntp: int
    last_srtp_error: int
    seq_offset: int
    sequence_number: int
    ssrc: int
    queued: int
    def __init__(self, video: bool, step: int) -> None: ...
    def configure(
        self,
        ssrc: int,
        payload_type: int,
        first_byte: int,
        ext: bytes,
        abs_at: int,
        level_at: int,
        sequence_number: int,
        timestamp_origin: int,
    ) -> None: ...
    def switch(self) -> None: ...
    def flush(self) -> None: ...
    def build(self, packet: PacketTuple, out_seq: int, /) -> bytes | None: ...
    def send(self, packets: list[bytes], /) -> int: ...
    def take_tx(self) -> tuple[int, int]: ...

def forward(downs: list[Down], packet: PacketTuple, flush: bool, /) -> int: ...
def flush(downs: list[Down], /) -> None: ...

class RtpPacket:
    data: bytes
    extensions: dict[int, bytes] | None
    marker: bool
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload_start: int
    payload_end: int
    def __init__(
        self,
        data: bytes,
        marker: bool,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        payload_start: int,
        payload_end: int,
        extensions: dict[int, bytes] | None,
    ) -> None: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def payload_size(self) -> int: ...
    def extension(self, ext_id: int | None, /) -> bytes | None: ...

def parse_rtp(data: bytes, /) -> RtpPacket | str: ...
def vp8_packet(packet: RtpPacket, level: int, /) -> PacketTuple | None: ...
