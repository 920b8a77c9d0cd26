"""Valid protocol payloads shared by the signaling tests and the benchmark."""

from __future__ import annotations

from typing import Any

SDP = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
)
CANDIDATE_LINE = (
    "candidate:842163049 1 udp 1677729535 127.0.0.1 46154 typ srflx"
    " raddr 0.0.0.0 rport 0 generation 0"
)


def offer(target_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "offer", "target_id": target_id, "sdp": SDP, **extra}


def answer(target_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "answer", "target_id": target_id, "sdp": SDP, **extra}


def candidate(target_id: str, line: str = CANDIDATE_LINE, **extra: Any) -> dict[str, Any]:
    return {
        "type": "ice_candidate",
        "target_id": target_id,
        "candidate": {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0},
        **extra,
    }


def end_of_candidates(target_id: str) -> dict[str, Any]:
    return {"type": "ice_candidate", "target_id": target_id, "candidate": None}
