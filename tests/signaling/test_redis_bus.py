"""RedisBus batching, without Redis: coalescing keeps the order; lists dispatch in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from signaling.bus import Envelope
from signaling.redis_bus import RedisBus, _coalesce


def test_coalesce_merges_only_consecutive_runs_of_a_channel() -> None:
    loop = asyncio.new_event_loop()
    try:
        batch = [
            (channel, json.dumps({"n": n}), loop.create_future())
            for n, channel in enumerate(["a", "a", "b", "a", "a", "a"])
        ]
        merged = _coalesce(batch)
    finally:
        loop.close()
    assert [channel for channel, _ in merged] == ["a", "b", "a"]
    payloads = [json.loads(data) for _, data in merged]
    assert payloads == [[{"n": 0}, {"n": 1}], {"n": 2}, [{"n": 3}, {"n": 4}, {"n": 5}]]


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Envelope]] = []

    async def on_bus_message(self, call_id: str, envelope: Envelope) -> None:
        self.seen.append((call_id, envelope))

    async def on_bus_down(self, call_ids: list[str]) -> None:
        pass

    async def on_bus_restored(self, call_ids: list[str]) -> None:
        pass


async def test_a_list_on_the_node_channel_dispatches_each_envelope_in_order() -> None:
    bus = RedisBus(None, None, "n1")  # type: ignore[arg-type]
    recorder = Recorder()
    bus._listener = recorder
    data = json.dumps([{"kind": "deliver", "call_id": "c1", "n": 1}, {"kind": "x"}, 7])
    await bus._dispatch({"type": "message", "channel": b"huddle:node:n1", "data": data})
    call_data = json.dumps([{"kind": "deliver", "n": 2}, {"kind": "deliver", "n": 3}])
    await bus._dispatch({"type": "message", "channel": b"call:c2", "data": call_data})
    expected: list[tuple[str, dict[str, Any]]] = [
        ("c1", {"kind": "deliver", "n": 1}),  # no call_id: dropped; not a dict: skipped
        ("c2", {"kind": "deliver", "n": 2}),
        ("c2", {"kind": "deliver", "n": 3}),
    ]
    assert recorder.seen == expected
