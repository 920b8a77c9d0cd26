"""The layering check of ``make lint`` (scripts/check_imports.py): this tree passes,
and a cycle, an upward import or an oversized module of server/ or signaling/ fails."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def checker() -> ModuleType:
    path = ROOT / "scripts" / "check_imports.py"
    spec = importlib.util.spec_from_file_location("check_imports", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path, files: dict[str, str]) -> Path:
    for package in ("server", "server/http", "signaling", "media"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_this_tree_keeps_its_layers() -> None:
    assert checker().check(ROOT) == []


def test_a_cycle_and_upward_imports_fail(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "server/config.py": "def f():\n    from server.turn import g\n",
            "server/turn.py": "from server.config import f\n",
            "server/http/auth.py": "",
            "server/app.py": "import signaling.handler\n",
            "signaling/handler.py": "from server.http import auth\n",
            "media/wiring.py": "from server.app import create_app\n",
            "server/calls.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import media.sfu\n"
                "import signaling.hub\n"
            ),
            "signaling/hub.py": "",
            "media/sfu.py": "",
            "signaling/presence.py": "x = 1\n" * 401,
            "server/store.py": "x = 1\n" * 400,
            "media/inbound.py": "x = 1\n" * 800,  # media/ has no size rule
        },
    )
    assert sorted(checker().check(root)) == [
        "import cycle: server.config -> server.turn",
        "media.wiring: signaling/ and media/ must not import server.app",
        "server.calls: the domain must not import signaling.hub",
        "signaling.handler: signaling/ and media/ must not import server.http",
        "signaling.handler: signaling/ and media/ must not import server.http.auth",
        "signaling.presence: 401 lines, more than 400",
    ]


# Owners use what they own through its public methods only: the room its
# participants, a participant its tracks and slots, the hub its parts. Only the
# modules that adapt a third party's internals may touch private names.
THIRD_PARTY_ADAPTERS = (
    "media/aiortc_compat.py",
    "media/loadtest/aiortc_compat.py",
    "server/http/edge.py",  # aiohttp's server factory
)


def private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_reaches_into_the_private_names_of_what_it_holds() -> None:
    modules = [
        path
        for package in ("server", "signaling", "media")
        for path in sorted((ROOT / package).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in THIRD_PARTY_ADAPTERS
    ]
    assert len(modules) > 100
    assert [use for path in modules for use in private_uses(path)] == []
