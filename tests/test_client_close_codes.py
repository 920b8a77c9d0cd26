"""The browser client's final close codes are the server's: those the server sends
and docs/protocol.md says not to reconnect after, and no others."""

from __future__ import annotations

import re
from pathlib import Path

from signaling.protocol import CloseCode

ROOT = Path(__file__).resolve().parent.parent


def client_final_codes() -> set[int]:
    source = (ROOT / "static" / "js" / "signaling.js").read_text()
    match = re.search(r"const FINAL_CLOSE_CODES = new Set\(\[(.*?)\]\);", source, re.S)
    assert match, "FINAL_CLOSE_CODES not found in static/js/signaling.js"
    return {int(code) for code in re.findall(r"^\s*(\d{4}),", match[1], re.M)}


def documented_final_codes() -> set[int]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d{4}) \|.*\| (\w+)[^|]* \|$", section, re.M)
    assert rows, "no close code table in docs/protocol.md"
    return {int(code) for code, reconnect in rows if reconnect == "no"}


def test_final_close_codes_are_sent_by_the_server() -> None:
    final = client_final_codes()
    assert final, "the client treats no close as final"
    assert final <= {int(code) for code in CloseCode}, final - {int(c) for c in CloseCode}


def test_final_close_codes_are_the_documented_no_reconnect_ones() -> None:
    assert client_final_codes() == documented_final_codes()
