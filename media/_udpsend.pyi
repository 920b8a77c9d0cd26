"""Types of the C extension built from media/_udpsend.c."""

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
        self, fd: int, host: str, port: int, ctx: int, protect: int, gso: bool = True
    ) -> None: ...
    def send(self, packets: list[bytes], /) -> int: ...
    def close(self) -> None: ...

class SrtpIn:
    failures: int
    last_error: int
    def __init__(self, ctx: int, unprotect: int, unprotect_rtcp: int) -> None: ...
    def rtp(self, data: bytes, /) -> bytes | None: ...
    def rtcp(self, data: bytes, /) -> bytes | None: ...
