"""Private aiortc/aioice/pylibsrtp names stay in the compat modules (issue #12, item 5).

Every module under ``media/`` is read as an AST; outside the two compat
modules (the SFU's :mod:`media.aiortc_compat`, the load tester's
:mod:`media.loadtest.aiortc_compat`) none may

* read or write an attribute whose name starts with ``_`` on anything but
  ``self`` or ``cls`` (dunders such as ``__name__`` are not private);
* call ``getattr``/``setattr``/``hasattr``/``delattr`` with a string literal
  starting with ``_`` (name-mangled privates, ``_RTCRtpSender__x``);
* import a private module or name of aiortc, aioice or pylibsrtp
  (``pylibsrtp._binding``, ``from aiortc.x import _y``).

The attribute rule does not know whose object it is, so it also catches a
parent reaching into its child's privates; the known cases are allowlisted
below with the issue that removes them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEDIA = ROOT / "media"

#: The modules that own the private names, each guarded at start-up.
COMPAT_MODULES = frozenset({"media/aiortc_compat.py", "media/loadtest/aiortc_compat.py"})

#: Whole modules not checked yet (none: media/fastsend.py goes through
#: media.aiortc_compat.SenderInternals and send_route now).
BEING_CONTAINED: frozenset[str] = frozenset()

#: (module, expression) pairs allowed for now: parents calling their child's
#: private method. Issue #14 item 5 ("parents stop calling children's private
#: methods") removed the last of them; keep it empty.
OWN_PRIVATE_ACCESS: frozenset[tuple[str, str]] = frozenset()

PRIVATE_PACKAGES = frozenset({"aiortc", "aioice", "pylibsrtp"})
_ATTR_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_module(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] in PRIVATE_PACKAGES and any(_private(p) for p in parts)


def offences(source: str) -> Iterator[tuple[int, str, str]]:
    """``(line, expression, why)`` for each private-name use in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            yield node.lineno, ast.unparse(node), "private attribute"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _ATTR_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            yield node.lineno, ast.unparse(node), f"{node.func.id} of a private name"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _private_module(alias.name):
                    yield node.lineno, f"import {alias.name}", "private module"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PRIVATE_PACKAGES:
                continue
            if _private_module(node.module):
                yield node.lineno, f"from {node.module} import ...", "private module"
            for alias in node.names:
                if _private(alias.name):
                    yield node.lineno, f"from {node.module} import {alias.name}", "private name"


def _modules() -> list[tuple[str, str]]:
    paths = sorted(MEDIA.rglob("*.py"))
    assert paths, f"no modules under {MEDIA}"
    return [(p.relative_to(ROOT).as_posix(), p.read_text()) for p in paths]


def test_private_aiortc_names_only_in_the_compat_modules() -> None:
    found = []
    for path, source in _modules():
        if path in COMPAT_MODULES or path in BEING_CONTAINED:
            continue
        for line, expression, why in offences(source):
            if (path, expression) in OWN_PRIVATE_ACCESS:
                continue
            found.append(f"{path}:{line}: {expression} ({why})")
    assert not found, (
        "private names outside media/aiortc_compat.py and media/loadtest/aiortc_compat.py "
        "(add a guarded helper there and call it instead):\n" + "\n".join(found)
    )


def test_allowlists_are_not_stale() -> None:
    """An allowlisted module or expression that no longer offends must leave the list."""
    sources = dict(_modules())
    stale = [path for path in sorted(COMPAT_MODULES | BEING_CONTAINED) if path not in sources]
    stale += [
        f"{path} (clean now)"
        for path in sorted(BEING_CONTAINED)
        if path in sources and not any(offences(sources[path]))
    ]
    for path, expression in sorted(OWN_PRIVATE_ACCESS):
        used = path in sources and any(e == expression for _, e, _ in offences(sources[path]))
        if not used:
            stale.append(f"{path}: {expression}")
    assert not stale, "remove from the allowlists in this test:\n" + "\n".join(stale)


def test_the_check_finds_each_kind_of_private_use() -> None:
    source = "\n".join(
        [
            "import pylibsrtp._binding",  # 1
            "from pylibsrtp._binding import ffi",  # 2
            "from aiortc.rtcrtpsender import _private_helper",  # 3
            "x = sender._stream_id",  # 4
            "receiver.transport._rtp_router.ssrc_table[1] = 2",  # 5
            "setattr(sender, '_RTCRtpSender__encoder', None)",  # 6
            "getattr(receiver, '_RTCRtpReceiver__rtx_ssrc', {})",  # 7
            "self._ok = cls._ok",  # 8: own attributes
            "name = owner.__name__",  # 9: a dunder is not private
            "from aiortc import RTCRtpSender",  # 10: public
            "from media.udpout import _udpsend",  # 11: not aiortc's
            "getattr(x, 'public', None)",  # 12
        ]
    )
    lines = sorted({line for line, _, _ in offences(source)})
    assert lines == [1, 2, 3, 4, 5, 6, 7]
    messages = {expression for _, expression, _ in offences(source)}
    assert "receiver.transport._rtp_router" in messages
    assert "sender._stream_id" in messages
