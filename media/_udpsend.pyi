"""Types of the C extension built from media/_udpsend.c, _fanout.c, _rtpparse.c and _receive.c."""

from collections.abc import Callable, Iterable

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
    twcc: SendLog | None
    pacer: Pacer | None
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
        twcc_at: int = -1,
    ) -> None: ...
    def switch(self) -> None: ...
    def flush(self) -> None: ...
    def build(self, packet: PacketTuple, out_seq: int, /) -> bytes | None: ...
    def send(self, packets: list[bytes], /) -> int: ...
    def take_tx(self) -> tuple[int, int]: ...

class SendLog:
    next: int
    packets: int
    bytes: int
    disorder: int
    def __init__(self, first: int = 0) -> None: ...
    def take(self, size: int, /) -> int: ...
    def lookup(self, base: int, count: int, /) -> list[tuple[int, int] | None]: ...

class Pacer:
    rate: float
    boost: float
    on_queued: Callable[[], object] | None
    queued: int
    queued_bytes: int
    paced: int
    dropped: int
    sent_bytes: int
    def __init__(self) -> None: ...
    def drain(self) -> int: ...
    def close(self) -> None: ...
    def take_longest_wait(self) -> float: ...

def monotonic_us() -> int: ...
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

class InStream:
    ssrc: int
    packets: int
    bytes: int
    base_seq: int
    max_seq: int
    cycles: int
    jitter: float
    nack: object
    sink: Sink | None
    slow: int
    def __init__(
        self,
        ssrc: int,
        clock_rate: int,
        media_pts: Iterable[int],
        rtx_apt: dict[int, int],
        nack: object,
    ) -> None: ...
    def received(self, seq: int, timestamp: int, now: float, /) -> bool: ...
    def set_types(self, media_pts: Iterable[int], rtx_apt: dict[int, int], /) -> None: ...

class Sink:
    mode: int
    fast: int
    armed: int
    hits: int
    misses: int
    packets_in: int
    bytes_in: int
    rtx_bytes_in: int
    keyframes_in: int
    duplicates: int
    width: int
    height: int
    keyframe_seq: int | None
    newest_seq: int | None
    downs: list[Down]
    def __init__(
        self, mode: int, cache_size: int, speech_level: int, on_arm: Callable[[int], None]
    ) -> None: ...
    def put(self, seq: int, item: PacketTuple, keyframe: bool = False, /) -> None: ...
    def get(self, seq: int, /) -> PacketTuple | None: ...
    def holds(self, seq: int, /) -> bool: ...
    def clear(self) -> None: ...
    def flush(self) -> None: ...
    def expire(self, arm_id: int, /) -> None: ...
    def take_counts(self) -> tuple[int, int, int]: ...
    def take_levels(self) -> tuple[int, int, int]: ...

class Receiver:
    srtp: SrtpIn | None
    twcc_id: int
    level_id: int
    rtx_packets: int
    fast_packets: int
    slow_packets: int
    twcc_overflow: int
    def __init__(
        self,
        on_rtcp: Callable[[bytes], None],
        on_rtp: Callable[[bytes], None],
        on_gap: Callable[[], None],
    ) -> None: ...
    def hook(
        self, fallback: Callable[[bytes, object], None], data: bytes, addr: object, /
    ) -> None: ...
    def receive(self, data: bytes, /) -> None: ...
    def set_streams(
        self, streams: list[tuple[int, InStream]], rtx: list[tuple[int, InStream]], /
    ) -> None: ...
    def take_twcc(self) -> list[tuple[int, int]]: ...
    def take_dropped(self) -> tuple[int, int]: ...
    def close(self) -> None: ...
