#!/usr/bin/env python3
"""The layering rules of server/, signaling/ and media/, checked over ``ast``,
and the size of their modules.

Fails (exit 1, one line per problem) on:

- an import cycle between modules of these packages (every import counts,
  also one inside a function; only ``if TYPE_CHECKING:`` blocks are skipped);
- ``signaling/`` or ``media/`` importing the HTTP layer (``server.http``), the
  app factory (``server.app``), the composition root (``server.wiring``),
  the app keys (``server.keys``) or the CLI;
- a domain module of ``server/`` (anything but those and ``server.cli``)
  importing the HTTP layer, the composition root, ``signaling`` or ``media``;
- a module of ``server/`` or ``signaling/`` over ``MAX_LINES`` lines (the
  browser client's limit is ESLint's ``max-lines``).

Run by ``make lint``; docs/architecture.md describes the layers.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "signaling", "media")
#: The edge and the composition root: may import anything.
OUTER = ("server.app", "server.cli", "server.keys", "server.wiring", "server.http")
#: What signaling/ and media/ must not import.
FORBIDDEN_BELOW = OUTER
#: What the domain (server/ minus OUTER) must not import.
FORBIDDEN_IN_DOMAIN = (*OUTER, "signaling", "media")
#: Longest module of the packages below (docs/architecture.md: small, one job each).
MAX_LINES = 400
SIZED = ("server", "signaling")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """First-party modules ``path`` imports (a ``from package import module`` counts
    as the module when it is one)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if within(m, PACKAGES) and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                strongconnect(v)
    finally:
        sys.setrecursionlimit(limit)  # the tests run this in their own process
    return found


def check(root: Path = ROOT) -> list[str]:
    files = {
        module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))
    }
    known = set(files)
    graph = {name: imports(path, name, known) for name, path in files.items()}
    problems = [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    for name, deps in sorted(graph.items()):
        if within(name, ("signaling", "media")):
            rule, forbidden = "signaling/ and media/ must not import", FORBIDDEN_BELOW
        elif within(name, ("server",)) and not within(name, OUTER):
            rule, forbidden = "the domain must not import", FORBIDDEN_IN_DOMAIN
        else:
            continue
        problems += [f"{name}: {rule} {dep}" for dep in sorted(deps) if within(dep, forbidden)]
    for name, path in sorted(files.items()):
        lines = len(path.read_text().splitlines())
        if within(name, SIZED) and lines > MAX_LINES:
            problems.append(f"{name}: {lines} lines, more than {MAX_LINES}")
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
