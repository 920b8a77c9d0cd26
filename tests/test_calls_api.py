"""The call lifecycle through the HTTP API, on SQLite and on real Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import AppFactory, FakeClock
from tests.support.api import Api, error_code
from tests.support.polling import eventually


async def test_full_call_from_token_to_end(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    conversation_id = await api.conversation(ana, bob)

    call = await api.initiate(ana, conversation_id, bob)
    assert call["status"] == "ringing"
    assert call["mode"] == "p2p"
    assert call["caller_id"] == ana.user_id
    assert [p["user_id"] for p in call["participants"]] == [ana.user_id, bob.user_id]
    assert call["participants"][0]["joined_at"] is not None  # the caller is in from the start
    assert call["participants"][1]["joined_at"] is None

    joined = await api.action(call["call_id"], "join", bob)
    assert joined["status"] == "active"
    assert joined["started_at"] is not None
    assert joined["ice_servers"] == []
    assert joined["participants"][1]["name"] == "bob"

    status = await api.status(call["call_id"], ana)
    assert status["status"] == "active"
    assert all(p["joined_at"] and p["left_at"] is None for p in status["participants"])

    after_bob = await api.action(call["call_id"], "leave", bob)
    assert after_bob["status"] == "active"
    ended = await api.action(call["call_id"], "leave", ana)
    assert ended["status"] == "ended"
    assert ended["end_reason"] == "completed"
    assert ended["duration_seconds"] is not None

    history = await api.call("GET", f"/v1/calls?conversation_id={conversation_id}", bob, expect=200)
    assert [c["call_id"] for c in history["calls"]] == [call["call_id"]]


async def test_history_is_newest_first_and_paged(make_client: AppFactory, clock: FakeClock) -> None:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    conversation_id = await api.conversation(ana, bob)
    ids = []
    for _ in range(3):
        call = await api.initiate(ana, conversation_id, bob)
        await api.action(call["call_id"], "end", ana)
        ids.append(call["call_id"])
        clock.advance(1)
    history = await api.call("GET", f"/v1/calls?conversation_id={conversation_id}", ana, expect=200)
    assert [c["call_id"] for c in history["calls"]] == ids[::-1]
    page = await api.call(
        "GET", f"/v1/calls?conversation_id={conversation_id}&limit=2", ana, expect=200
    )
    assert [c["call_id"] for c in page["calls"]] == ids[:0:-1]
    before = page["calls"][-1]["created_at"]
    rest = await api.call(
        "GET", f"/v1/calls?conversation_id={conversation_id}&before={before}", ana, expect=200
    )
    assert [c["call_id"] for c in rest["calls"]] == ids[:1]


async def test_only_invited_members_may_join(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob, eve, carl = await api.users("ana", "bob", "eve", "carl")
    conversation_id = await api.conversation(ana, bob, carl)
    call = await api.initiate(ana, conversation_id, bob)

    outsider = await api.action(call["call_id"], "join", eve, expect=403)
    assert error_code(outsider) == "not_invited"
    member_not_invited = await api.action(call["call_id"], "join", carl, expect=403)
    assert error_code(member_not_invited) == "not_invited"
    # Neither a non-member nor a member who was not invited can read the call.
    for reader in (eve, carl):
        body = await api.call("GET", f"/v1/calls/{call['call_id']}", reader, expect=403)
        assert error_code(body) == "not_invited"


async def test_initiate_requires_membership(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob, eve = await api.users("ana", "bob", "eve")
    conversation_id = await api.conversation(ana, bob)
    body = {"call_type": "audio", "conversation_id": conversation_id, "callee_ids": [bob.user_id]}
    assert (
        error_code(await api.call("POST", "/v1/calls/initiate", eve, json=body, expect=403))
        == "not_a_member"
    )
    body["callee_ids"] = [eve.user_id]
    assert (
        error_code(await api.call("POST", "/v1/calls/initiate", ana, json=body, expect=403))
        == "not_a_member"
    )


async def test_no_duplicate_join_but_rejoin_after_leaving(make_client: AppFactory) -> None:
    client = await make_client()
    api = Api(client)
    ana, bob, cid = await api.users("ana", "bob", "cid")
    call = await api.group_call(ana, bob, cid)
    call_id = call["call_id"]
    await api.action(call_id, "join", bob)
    assert error_code(await api.action(call_id, "join", bob, expect=409)) == "already_joined"
    assert error_code(await api.action(call_id, "join", ana, expect=409)) == "already_joined"
    await api.action(call_id, "leave", bob)
    rejoined = await api.action(call_id, "join", bob)
    bob_row = next(p for p in rejoined["participants"] if p["user_id"] == bob.user_id)
    assert bob_row["left_at"] is None and bob_row["joined_at"] is not None
    metrics = await (await client.get("/metrics")).text()
    assert "video_call_duplicate_join_attempt_total 2.0" in metrics


async def test_all_callees_declining_ends_the_call(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob, cid = await api.users("ana", "bob", "cid")
    call = await api.group_call(ana, bob, cid)
    call_id = call["call_id"]
    first = await api.action(call_id, "decline", bob)
    assert first["status"] == "ringing"
    assert error_code(await api.action(call_id, "decline", bob, expect=409)) == ("already_declined")
    assert error_code(await api.action(call_id, "decline", ana, expect=403)) == "not_invited"
    ended = await api.action(call_id, "decline", cid)
    assert ended["status"] == "ended"
    assert ended["end_reason"] == "declined"
    assert error_code(await api.action(call_id, "join", cid, expect=410)) == "call_ended"


async def test_participant_limit(make_client: AppFactory) -> None:
    client = await make_client(max_participants=3)
    api = Api(client)
    ana, *callees = await api.users("ana", "b", "c", "d")
    call = await api.group_call(ana, *callees)
    await api.action(call["call_id"], "join", callees[0])
    await api.action(call["call_id"], "join", callees[1])
    full = await api.action(call["call_id"], "join", callees[2], expect=409)
    assert error_code(full) == "participant_limit_reached"
    await api.action(call["call_id"], "leave", callees[0])
    await api.action(call["call_id"], "join", callees[2])  # a seat freed up
    metrics = await (await client.get("/metrics")).text()
    assert "video_call_participant_limit_exceeded_total 1.0" in metrics


async def test_concurrent_joins_never_exceed_the_limit(make_client: AppFactory) -> None:
    api = Api(await make_client(max_participants=5))
    ana, *callees = await api.users("ana", *(f"u{i}" for i in range(20)))
    call = await api.group_call(ana, *callees)
    call_id = call["call_id"]

    async def join(user: Any) -> int:
        response = await api.client.post(f"/v1/calls/{call_id}/join", headers=user.headers)
        await response.read()
        return response.status

    statuses = await asyncio.gather(*(join(user) for user in callees))
    assert statuses.count(200) == 4  # the caller holds the fifth seat
    assert statuses.count(409) == 16
    status = await api.status(call_id, ana)
    assert sum(1 for p in status["participants"] if p["joined_at"] and not p["left_at"]) == 5


async def test_concurrent_duplicate_joins_join_once(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob, cid = await api.users("ana", "bob", "cid")
    call = await api.group_call(ana, bob, cid)

    async def join() -> int:
        response = await api.client.post(f"/v1/calls/{call['call_id']}/join", headers=bob.headers)
        await response.read()
        return response.status

    statuses = await asyncio.gather(*(join() for _ in range(10)))
    assert sorted(statuses) == [200] + [409] * 9


async def test_initiate_rate_limit(make_client: AppFactory) -> None:
    client = await make_client(initiate_per_minute=2)
    api = Api(client)
    ana, bob = await api.users("ana", "bob")
    conversation_id = await api.conversation(ana, bob)
    await api.initiate(ana, conversation_id, bob)
    await api.initiate(ana, conversation_id, bob)
    response = await client.post(
        "/v1/calls/initiate",
        headers=ana.headers,
        json={
            "call_type": "audio",
            "conversation_id": conversation_id,
            "callee_ids": [bob.user_id],
        },
    )
    assert response.status == 429
    assert error_code(await response.json()) == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    # The limit is per user: bob may still call.
    await api.initiate(bob, conversation_id, ana)


async def test_ringing_timeout_ends_call_as_missed(
    make_client: AppFactory, clock: FakeClock
) -> None:
    client = await make_client(ringing_timeout_s=60)
    api = Api(client)
    ana, bob = await api.users("ana", "bob")
    call = await api.group_call(ana, bob)
    clock.advance(61)

    # Before the sweeper gets to it, a join is refused as expired all the same.
    async def missed() -> bool:
        return (await api.status(call["call_id"], ana))["end_reason"] == "missed"

    await eventually(missed)
    assert error_code(await api.action(call["call_id"], "join", bob, expect=410)) in {
        "call_ended",
        "ringing_expired",
    }
    metrics = await (await client.get("/metrics")).text()
    assert 'video_call_auto_terminated_total{reason="missed"} 1.0' in metrics
    assert "video_call_expired_join_attempt_total 1.0" in metrics


async def test_join_after_ringing_window_is_gone_even_before_sweep(
    make_client: AppFactory, clock: FakeClock
) -> None:
    api = Api(await make_client(ringing_timeout_s=60, sweep_interval_s=3600))
    ana, bob = await api.users("ana", "bob")
    call = await api.group_call(ana, bob)
    clock.advance(61)
    body = await api.action(call["call_id"], "join", bob, expect=410)
    assert error_code(body) == "ringing_expired"


async def test_max_duration_expires_call(make_client: AppFactory, clock: FakeClock) -> None:
    api = Api(await make_client(max_duration_s=3600))
    ana, bob = await api.users("ana", "bob")
    call = await api.group_call(ana, bob)
    await api.action(call["call_id"], "join", bob)
    clock.advance(3601)

    async def expired() -> bool:
        return (await api.status(call["call_id"], ana))["end_reason"] == "expired"

    await eventually(expired)


async def test_stale_call_is_cleaned(make_client: AppFactory, clock: FakeClock) -> None:
    api = Api(await make_client(stale_after_s=600, max_duration_s=7200))
    ana, bob = await api.users("ana", "bob")
    call = await api.group_call(ana, bob)
    await api.action(call["call_id"], "join", bob)
    clock.advance(601)

    async def cleaned() -> bool:
        return (await api.status(call["call_id"], ana))["end_reason"] == "cleaned"

    await eventually(cleaned)


async def test_end_for_everyone_and_gone_afterwards(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob, cid = await api.users("ana", "bob", "cid")
    call = await api.group_call(ana, bob, cid)
    await api.action(call["call_id"], "join", bob)
    assert error_code(await api.action(call["call_id"], "end", cid, expect=403)) == "not_joined"
    ended = await api.action(call["call_id"], "end", bob)
    assert ended["status"] == "ended" and ended["end_reason"] == "completed"
    assert all(p["left_at"] or not p["joined_at"] for p in ended["participants"])
    for action in ("join", "leave", "end", "decline"):
        user = cid if action in {"join", "decline"} else bob
        body = await api.action(call["call_id"], action, user, expect=410)
        assert error_code(body) == "call_ended"


async def test_caller_hanging_up_while_ringing_is_missed(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    call = await api.group_call(ana, bob)
    ended = await api.action(call["call_id"], "leave", ana)
    assert ended["end_reason"] == "missed"


async def test_invite_into_running_call_switches_to_sfu_on_join(
    make_client: AppFactory,
) -> None:
    api = Api(await make_client())
    ana, bob, cid, eve = await api.users("ana", "bob", "cid", "eve")
    conversation_id = await api.conversation(ana, bob, cid)
    call = await api.initiate(ana, conversation_id, bob)
    call_id = call["call_id"]
    assert (await api.action(call_id, "join", bob))["mode"] == "p2p"

    not_member = await api.call(
        "POST", f"/v1/calls/{call_id}/invite", bob, json={"callee_ids": [eve.user_id]}, expect=403
    )
    assert error_code(not_member) == "not_a_member"
    not_joined = await api.call(
        "POST", f"/v1/calls/{call_id}/invite", cid, json={"callee_ids": [cid.user_id]}, expect=403
    )
    assert error_code(not_joined) == "not_invited"  # not even a participant

    invited = await api.call(
        "POST", f"/v1/calls/{call_id}/invite", bob, json={"callee_ids": [cid.user_id]}, expect=200
    )
    assert invited["mode"] == "p2p"  # an invitation alone does not move media
    assert cid.user_id in [p["user_id"] for p in invited["participants"]]
    joined = await api.action(call_id, "join", cid)
    assert joined["mode"] == "sfu"
    await api.action(call_id, "leave", cid)
    assert (await api.status(call_id, ana))["mode"] == "sfu"  # and stays there


async def test_group_call_is_sfu_from_the_start(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob, cid = await api.users("ana", "bob", "cid")
    call = await api.group_call(ana, bob, cid)
    assert call["mode"] == "sfu"


async def test_unknown_call_and_conversation(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana = await api.user("ana")
    missing = "00000000-0000-4000-8000-000000000000"
    assert (
        error_code(await api.call("GET", f"/v1/calls/{missing}", ana, expect=404))
        == "call_not_found"
    )
    assert error_code(await api.action(missing, "join", ana, expect=404)) == "call_not_found"
    assert (
        error_code(await api.call("GET", f"/v1/conversations/{missing}", ana, expect=404))
        == "conversation_not_found"
    )
    body = {"call_type": "audio", "conversation_id": missing, "callee_ids": ["bob"]}
    assert (
        error_code(await api.call("POST", "/v1/calls/initiate", ana, json=body, expect=404))
        == "conversation_not_found"
    )


async def test_ice_servers_for_joined_participants_only(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob, cid = await api.users("ana", "bob", "cid")
    call = await api.group_call(ana, bob, cid)
    assert call["ice_servers"] == []  # the caller is joined from initiation
    assert (await api.status(call["call_id"], ana))["ice_servers"] == []
    assert "ice_servers" not in await api.status(call["call_id"], bob)  # invited, not joined
