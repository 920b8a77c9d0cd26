"""Huddle beside Janus: one table from ``bench.sfu.run --json`` files.

    python -m bench.sfu.compare var/bench-sfu-huddle.json \\
        var/bench-sfu-janus.json var/bench-sfu-janus-el1.json

The first file is the reference (Huddle); every other file gets a column and
a ratio column, reference / other (below 1: Huddle needs less). Rows: server
CPU per scenario (fan-out with video only and with Opus added, rooms),
marginal µs of server CPU per forwarded packet, the fixed cost of 1 → 1, the
receive path per incoming packet, setup CPU per joining subscriber and the
late joiner's first keyframe. A last row per scenario group flags any run
whose subscribers lost packets or fell under 29 fps, since such a run's CPU
figures are not comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Run = dict[str, Any]
Getter = Callable[[Run], float | None]


def label(run: Run, path: str) -> str:
    server = run.get("server", {})
    mode = str(run.get("mode", Path(path).stem))
    if mode == "janus":
        loops = server.get("event_loops", "default")
        version = server.get("janus_version", "")
        return f"Janus {version} (event_loops {loops})".replace("  ", " ")
    return mode.capitalize()


def point(run: Run, scenario: str, subscribers: int) -> dict[str, Any] | None:
    for m in run.get("measurements", []):
        if m["scenario"] == scenario and m["subscribers"] == subscribers:
            return dict(m)
    return None


def series(run: Run, scenario: str) -> dict[str, Any]:
    derived: dict[str, Any] = run.get("derived", {})
    if scenario == "fanout":
        return derived
    value: dict[str, Any] = derived.get(scenario, {})
    return value


def rows(runs: list[Run]) -> list[tuple[str, str, Getter]]:
    """(group, row label, getter) for every row any run has data for."""
    out: list[tuple[str, str, Getter]] = []

    def core(scenario: str, n: int) -> Getter:
        def get(run: Run) -> float | None:
            m = point(run, scenario, n)
            return None if m is None else float(m["server_core"]) * 100

        return get

    def derived(scenario: str, key: str, scale: float = 1.0) -> Getter:
        def get(run: Run) -> float | None:
            value = series(run, scenario).get(key)
            return None if value is None else float(value) * scale

        return get

    def late(scenario: str, n: int) -> Getter:
        def get(run: Run) -> float | None:
            m = point(run, scenario, n)
            if m is None:
                return None
            joined = m.get("late_join", {})
            value = joined.get("video_keyframe_s") or joined.get("video_s")
            return None if value is None else float(value) * 1e3

        return get

    def setup(scenario: str, n: int) -> Getter:
        def get(run: Run) -> float | None:
            m = point(run, scenario, n)
            value = None if m is None else m.get("setup", {}).get("cpu_ms_per_subscriber")
            return None if value is None else float(value)

        return get

    def counts(scenario: str) -> list[int]:
        found = {
            int(m["subscribers"])
            for run in runs
            for m in run.get("measurements", [])
            if m["scenario"] == scenario
        }
        return sorted(found)

    for scenario, name in (("fanout", "fan-out, video"), ("fanout_av", "fan-out, video + Opus")):
        for n in counts(scenario):
            text = f"server core %, 1 → {n}" if n else "server core %, publisher alone"
            out.append((name, text, core(scenario, n)))
        for key, text, scale in (
            ("marginal_us_per_packet", "marginal µs / forwarded packet", 1.0),
            ("fixed_core_1_to_1", "fixed cost 1 → 1, core %", 100.0),
            ("receive_us_per_incoming_packet", "receive path µs / incoming packet", 1.0),
            (
                "receive_in_process_us_per_datagram",
                "receive path in-process CPU µs / datagram",
                1.0,
            ),
            ("setup_cpu_ms_per_subscriber", "setup CPU ms / joining subscriber", 1.0),
        ):
            if any(series(run, scenario).get(key) is not None for run in runs):
                out.append((name, text, derived(scenario, key, scale)))
        for n in counts(scenario):
            if n > 0:
                out.append((name, f"late joiner first keyframe ms, N = {n}", late(scenario, n)))
    for n in counts("room"):
        name = f"room of {n}"
        out.append((name, "server core %", core("room", n)))
        out.append((name, "setup CPU ms / member", setup("room", n)))
        out.append((name, "late joiner first keyframe ms", late("room", n)))
    return out


def health(run: Run) -> list[str]:
    """Points whose delivery was not clean (loss, under 29 fps, a subscriber not receiving)."""
    bad = []
    for m in run.get("measurements", []):
        if m["subscribers"] == 0:
            continue
        where = f"{m['scenario']} {m['subscribers']}"
        if m.get("loss", 0) > 0.001:
            bad.append(f"{where}: loss {m['loss'] * 100:.1f}%")
        if m.get("fps_min", 30) < 29:
            bad.append(f"{where}: worst {m['fps_min']:.1f} fps")
        if m.get("receiving", 0) < m["subscribers"]:
            bad.append(f"{where}: {m['receiving']}/{m['subscribers']} receiving")
    return bad


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def table(runs: list[Run], labels: list[str]) -> str:
    head = ["scenario", "measure"]
    for i, name in enumerate(labels):
        head.append(name)
        if i > 0:
            head.append(f"{labels[0]} / {name}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, text, get in rows(runs):
        values = [get(run) for run in runs]
        if all(v is None for v in values):
            continue
        cells = [group, text]
        for i, value in enumerate(values):
            cells.append(fmt(value))
            if i > 0:
                ref = values[0]
                ratio = ref / value if ref is not None and value else None
                cells.append(f"{ratio:.2f}x" if ratio is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "files", nargs="+", help="bench.sfu.run --json outputs; the first is the reference"
    )
    args = parser.parse_args(argv)
    runs = [json.loads(Path(f).read_text()) for f in args.files]
    labels = [label(run, f) for run, f in zip(runs, args.files, strict=True)]
    print(table(runs, labels))
    for run, name in zip(runs, labels, strict=True):
        conditions = run.get("conditions", {})
        load = conditions.get("load_when_started", [float("nan")])[0]
        print(f"\n{name}: 1-min load {load:.2f} at start, window {run.get('window_s')} s", end="")
        problems = health(run)
        print("; " + "; ".join(problems) if problems else "; all points clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
