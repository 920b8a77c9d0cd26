"""Every code the server can send is in docs/protocol.md: the ``error`` codes of
signaling and of the SFU, the close codes, and the refusals before the upgrade.

The codes are read from the code itself (``ErrorCode``, ``CloseCode``, every
``code = "..."`` of an exception class in signaling/ and media/, every
``code="..."`` the WebSocket handler refuses with), so a new one fails here
until it is documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from signaling.protocol import CloseCode, ErrorCode

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "protocol.md").read_text()


def section(title: str) -> str:
    return DOC.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def quoted(text: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", text))


def class_codes(package: str) -> set[str]:
    """``code = "..."`` in the body of any class of ``package`` (the SFU's errors)."""
    found = set()
    for path in (ROOT / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and [getattr(t, "id", None) for t in statement.targets] == ["code"]
                    and isinstance(statement.value, ast.Constant)
                    and isinstance(statement.value.value, str)
                ):
                    found.add(statement.value.value)
    return found


def keyword_codes(path: Path) -> set[str]:
    """``code="..."`` arguments of the calls in ``path``."""
    return {
        keyword.value.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg == "code"
        and isinstance(keyword.value, ast.Constant)
        and isinstance(keyword.value.value, str)
    }


def test_every_error_code_of_signaling_and_the_sfu_is_documented() -> None:
    codes = {value for name, value in vars(ErrorCode).items() if name.isupper()}
    codes |= class_codes("media") | class_codes("signaling")
    assert {"invalid_json", "negotiation_timeout", "participant_limit", "room_closed"} <= codes
    assert codes - quoted(section("Errors")) == set()


def test_every_close_code_is_documented() -> None:
    table = {int(code) for code in re.findall(r"^\| (\d{4}) \|", section("Close codes"), re.M)}
    assert {int(code) for code in CloseCode} - table == set()


def test_every_refusal_before_the_upgrade_is_documented() -> None:
    codes = keyword_codes(ROOT / "signaling" / "handler.py")
    assert "not_joined" in codes
    assert codes - quoted(section("Connecting")) == set()
