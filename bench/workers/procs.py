"""What ``/proc`` says about the processes the workers benchmark measures."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of a process so far; None if it is gone."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def children(parent: int, match: str | None = None) -> list[int]:
    """Live children of ``parent`` (whose command line contains ``match``, if given)."""
    out = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None or int(fields[1]) != parent or fields[0] == "Z":
            continue
        if match is not None:
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if match not in cmdline:
                continue
        out.append(int(entry.name))
    return sorted(out)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live children (the front and its workers)."""
    return sum(c for p in [pid, *children(pid)] if (c := cpu_s(p)) is not None)
