"""A single node that restarts frees the seats its dead sockets held."""

from __future__ import annotations

from tests.signaling.conftest import NodeFactory
from tests.support.polling import eventually


async def test_after_a_restart_absent_participants_leave_and_returning_ones_stay(
    make_node: NodeFactory,
) -> None:
    first = await make_node(grace_s=1.0)
    ana, ben, cy, dan = await first.api.users("ana", "ben", "cy", "dan")
    abandoned = await first.joined_call(ana, ben)
    resumed = await first.joined_call(cy, dan)
    # Joined over HTTP, sockets never opened or lost with the process: the
    # node goes away with every seat still taken.
    await first.client.close()

    second = await make_node(grace_s=1.0)
    # dan's client reconnects within the grace period and keeps its seat.
    await second.ws(resumed, dan)

    async def abandoned_ended() -> bool:
        status = await second.api.status(abandoned, ana)
        return bool(status["status"] == "ended")

    await eventually(abandoned_ended, timeout=10, message="the abandoned call ended")
    status = await second.api.status(abandoned, ana)
    assert all(p["left_at"] for p in status["participants"] if p["joined_at"])

    async def cy_left() -> bool:
        status = await second.api.status(resumed, dan)
        seats = {p["user_id"]: p for p in status["participants"]}
        return bool(seats[cy.user_id]["left_at"])

    await eventually(cy_left, timeout=10, message="cy left after the grace period")
    status = await second.api.status(resumed, dan)
    seats = {p["user_id"]: p for p in status["participants"]}
    assert status["status"] != "ended"
    assert seats[dan.user_id]["joined_at"] and not seats[dan.user_id]["left_at"]
    metrics = await second.client.get("/metrics")
    assert "video_call_cleanup_on_disconnect_total 3.0" in await metrics.text()
