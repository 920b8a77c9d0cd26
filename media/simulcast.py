"""Simulcast negotiation on publish connections (RFC 8853 ``a=simulcast``, RFC 8851 ``a=rid``).

A browser publishing simulcast offers, in its video m-section, one
``a=rid:<id> send`` line per encoding and ``a=simulcast:send <id>;<id>;…``;
its packets then carry the rid (and, on RTX, the repaired rid) header
extension, and their SSRCs are not signalled. aiortc neither reads nor
answers these lines, so the SFU reads them from the offer here
(:func:`offered_layers`) and writes the matching ``a=rid:<id> recv`` and
``a=simulcast:recv`` lines into aiortc's answer (:func:`answer_layers`),
after accepting the two header extensions
(:func:`media.aiortc_compat.accept_header_extensions`).

Layers are kept in the offer's ``a=simulcast`` order; Huddle's client sends
them lowest first (rids ``q``, ``h``, ``f``), as the order of
``sendEncodings``. Anything this does not understand (alternatives, a rid
not declared by an ``a=rid`` line, more than :data:`MAX_LAYERS`) is left
out, and an m-section with fewer than two usable layers is treated as not
simulcast.
"""

from __future__ import annotations

import re

#: Most layers taken per track (Huddle's client sends three).
MAX_LAYERS = 3
#: RFC 8851 rid-id: alphanumerics, "-" and "_" (bounded here).
_RID = re.compile(r"[A-Za-z0-9_-]{1,16}")


def _sections(sdp: str) -> list[str]:
    """The SDP split into its session part and one string per m-section."""
    return re.split(r"\r?\n(?=m=)", sdp)


def _layers_of(section: str) -> tuple[str, ...]:
    declared: set[str] = set()
    order: list[str] = []
    for line in section.splitlines():
        if line.startswith("a=rid:"):
            parts = line[6:].split()
            if len(parts) >= 2 and parts[1] == "send" and _RID.fullmatch(parts[0]):
                declared.add(parts[0])
        elif line.startswith("a=simulcast:"):
            words = line[12:].split()
            for direction, streams in zip(words[::2], words[1::2], strict=False):
                if direction != "send":
                    continue
                for group in streams.split(";"):
                    first = group.split(",")[0].lstrip("~")  # alternatives: the first
                    if _RID.fullmatch(first) and first not in order:
                        order.append(first)
    layers = tuple(rid for rid in order if rid in declared)[:MAX_LAYERS]
    return layers if len(layers) >= 2 else ()


def offered_layers(sdp: str) -> dict[str, tuple[str, ...]]:
    """mid -> the rids its video m-section offers to send as simulcast, in order."""
    out: dict[str, tuple[str, ...]] = {}
    for section in _sections(sdp)[1:]:
        if not section.startswith("m=video"):
            continue
        mid = re.search(r"^a=mid:(\S+)", section, re.MULTILINE)
        layers = _layers_of(section)
        if mid and layers:
            out[mid.group(1)] = layers
    return out


def answer_layers(answer: str, layers: dict[str, tuple[str, ...]]) -> str:
    """``answer`` with ``a=rid:<id> recv`` and ``a=simulcast:recv`` where ``layers`` says."""
    if not layers:
        return answer
    newline = "\r\n" if "\r\n" in answer else "\n"
    sections = _sections(answer)
    for i, section in enumerate(sections[1:], start=1):
        mid = re.search(r"^a=mid:(\S+)", section, re.MULTILINE)
        rids = layers.get(mid.group(1)) if mid else None
        if not rids or section.startswith("m=video 0 "):  # rejected m-line
            continue
        body = section.rstrip("\r\n")
        lines = [f"a=rid:{rid} recv" for rid in rids]
        lines.append("a=simulcast:recv " + ";".join(rids))
        sections[i] = body + newline + newline.join(lines)
    out = newline.join(sections)
    return out if out.endswith(newline) else out + newline
