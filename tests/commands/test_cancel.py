"""Cancel: an operator closes an open command; the same forward-only rule as the acks decides
what a later ack or a racing one gets, and the device stops seeing the command."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from service.commands.acks import STAGE, AckResult, AckRow, merge_acks
from service.commands.cancel import cancel_command
from service.ingest.connection import prepare_connection
from tests.api.test_commands import ack, dev, dispatch
from tests.api.test_operators import bearer, new_operator
from tests.support.app import Api


async def cancel(
    api: Api, request_id: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    r = await api.client.post(f"/v1/commands/{request_id}/cancel", headers=headers or api.op())
    return r.status, await r.json()


async def events_of(api: Api, request_id: str) -> list[tuple[str, dict[str, Any]]]:
    conn = await asyncpg.connect(api.db_url)
    try:
        rows = await conn.fetch(
            "SELECT type, payload::text AS payload FROM events WHERE payload->>'request_id' = $1 ORDER BY id",
            request_id,
        )
    finally:
        await conn.close()
    return [(r["type"], json.loads(r["payload"])) for r in rows]


def device_view(command: dict[str, Any]) -> dict[str, Any]:
    """An operator's read of a command as the device's answers show it: without its push."""
    return {k: v for k, v in command.items() if k != "push"}


async def test_cancel_closes_a_pending_command_with_its_event_and_the_pull_drops_it(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "keep", "phone-1")
    await dispatch(api, "drop", "phone-1")
    status, body = await cancel(api, "drop")
    assert status == 200 and body["changed"] is True
    command = body["command"]
    assert command["status"] == "cancelled" and command["cancelled_at"] is not None
    assert command["delivered_at"] is None and command["result"] is None
    r = await api.client.get("/v1/device/commands", headers=dev(token))
    assert [c["request_id"] for c in (await r.json())["commands"]] == ["keep"]
    assert await events_of(api, "drop") == [
        ("command.cancelled", {"request_id": "drop", "command": "lock", "previous": "pending", "by": "alice"})
    ]
    r = await api.client.get("/v1/commands/drop", headers=api.op())
    assert (await r.json()) == command


async def test_cancel_of_a_delivered_command_keeps_its_delivery_time(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "req-1", "phone-1")
    _, delivered = await ack(api, token, "req-1", status="delivered")
    status, body = await cancel(api, "req-1")
    assert status == 200 and body["command"]["status"] == "cancelled"
    assert body["command"]["delivered_at"] == delivered["command"]["delivered_at"]
    assert body["command"]["cancelled_at"] >= body["command"]["delivered_at"]
    assert [t for t, _ in await events_of(api, "req-1")] == ["command.delivered", "command.cancelled"]


async def test_acks_after_a_cancel_are_409_with_the_cancelled_state(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "req-1", "phone-1")
    _, cancelled = await cancel(api, "req-1")
    for late in ("executed", "failed", "delivered"):
        status, body = await ack(api, token, "req-1", status=late)
        assert status == 409, (late, body)
        assert body["error"]["code"] == "status_conflict"
        assert body["command"] == device_view(cancelled["command"])
    assert [t for t, _ in await events_of(api, "req-1")] == ["command.cancelled"]


async def test_repeated_cancel_is_200_unchanged_and_a_finished_command_is_409(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "twice", "phone-1")
    _, first = await cancel(api, "twice")
    status, again = await cancel(api, "twice")
    assert status == 200 and again == {"changed": False, "command": first["command"]}
    await dispatch(api, "done", "phone-1")
    _, done = await ack(api, token, "done", status="executed", result={"ok": True})
    status, body = await cancel(api, "done")
    assert status == 409 and body["error"]["code"] == "status_conflict"
    assert body["error"]["field"] == "request_id" and device_view(body["command"]) == done["command"]
    assert [t for t, _ in await events_of(api, "twice")] == ["command.cancelled"]


async def test_cancel_of_an_unknown_command_is_404_and_a_viewer_gets_403(api: Api) -> None:
    await api.enroll("phone-1")
    status, body = await cancel(api, "never-sent")
    assert status == 404 and body["error"]["field"] == "request_id"
    await dispatch(api, "req-1", "phone-1")
    viewer = await new_operator(api, "val", role="viewer")
    status, body = await cancel(api, "req-1", headers=bearer(viewer))
    assert status == 403 and body["error"]["code"] == "forbidden"
    r = await api.client.get("/v1/commands/req-1", headers=api.op())
    assert (await r.json())["status"] == "pending"


async def test_cancel_racing_an_executed_ack_leaves_exactly_one_winner(api: Api) -> None:
    token = await api.enroll("phone-1")
    ids = [f"race-{i}" for i in range(40)]
    for rid in ids:
        await dispatch(api, rid, "phone-1")
    # Both at once, in alternating order of submission so neither side always goes first.
    pairs = await asyncio.gather(
        *(
            asyncio.gather(cancel(api, rid), ack(api, token, rid, status="executed"))
            if i % 2
            else asyncio.gather(ack(api, token, rid, status="executed"), cancel(api, rid))
            for i, rid in enumerate(ids)
        )
    )
    winners = {"cancelled": 0, "executed": 0}
    for i, (rid, pair) in enumerate(zip(ids, pairs, strict=True)):
        (c_status, c_body), (a_status, a_body) = pair if i % 2 else pair[::-1]
        assert sorted((c_status, a_status)) == [200, 409], (rid, c_body, a_body)
        final = (c_body if c_status == 200 else a_body)["command"]["status"]
        loser = a_body if c_status == 200 else c_body
        assert loser["command"]["status"] == final
        winners[final] += 1
        r = await api.client.get(f"/v1/commands/{rid}", headers=api.op())
        assert (await r.json())["status"] == final
        # One terminal event, the winner's (an executed ack first marks delivery too: one event).
        assert [t for t, _ in await events_of(api, rid)] == [f"command.{final}"]
    assert sum(winners.values()) == len(ids)


async def test_a_cancel_waiting_on_an_uncommitted_ack_sees_it_and_the_reverse(api: Api) -> None:
    """The two orders made certain: one side holds the row lock in an open transaction while
    the other runs on its own connection and must wait for it, then see its outcome."""
    await api.enroll("phone-1")
    await dispatch(api, "ack-first", "phone-1")
    await dispatch(api, "cancel-first", "phone-1")
    first = await asyncpg.connect(api.db_url)
    second = await asyncpg.connect(api.db_url)
    try:
        for conn in (first, second):
            await prepare_connection(conn, [STAGE])
        async with first.transaction():
            (held,) = await merge_acks(first, [AckRow("ack-first", "phone-1", "executed", None, None, None)])
            assert held.result is AckResult.CHANGED

            async def cancel_on_second() -> AckResult:
                async with second.transaction():
                    return (await cancel_command(second, "ack-first", by="alice")).result

            waiting = asyncio.create_task(cancel_on_second())
            await asyncio.sleep(0.5)
            assert not waiting.done()  # blocked on the row lock the ack holds
        assert await waiting is AckResult.CONFLICT

        async with first.transaction():
            assert (await cancel_command(first, "cancel-first", by="alice")).result is AckResult.CHANGED

            async def ack_on_second() -> AckResult:
                async with second.transaction():
                    row = AckRow("cancel-first", "phone-1", "executed", None, None, None)
                    return (await merge_acks(second, [row]))[0].result

            waiting = asyncio.create_task(ack_on_second())
            await asyncio.sleep(0.5)
            assert not waiting.done()
        assert await waiting is AckResult.CONFLICT
    finally:
        await first.close()
        await second.close()
    statuses = {
        rid: await api.count(
            "SELECT count(*) FROM commands WHERE request_id = $1 AND status = $2", rid, final
        )
        for rid, final in (("ack-first", "executed"), ("cancel-first", "cancelled"))
    }
    assert statuses == {"ack-first": 1, "cancel-first": 1}
