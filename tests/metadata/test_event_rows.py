"""The event outbox's rows on a real database (SQLite, or PostgreSQL per tests/databases.py):
what the delivery worker's poll sees."""

from __future__ import annotations

from sqlalchemy import update

from cangku.metadata import Connection, MetadataStore
from cangku.metadata import events as rows
from cangku.metadata.schema import event_deliveries


async def test_the_poll_sees_an_event_to_fan_out_then_a_delivery_only_once_it_is_due(
    store: MetadataStore,
) -> None:
    async def waiting(now: float) -> tuple[bool, bool]:
        # On the event loop's own read, as the worker polls (SQLite: autocommit, inline).
        return await store.read(lambda c: rows.work_waiting(c, now))

    assert await waiting(0.0) == (False, False)
    event = {
        "event_id": "e1",
        "type": "push",
        "repository": "jimo/app",
        "created_at": 10.0,
        "payload": "{}",
    }
    await store.write(lambda c: rows.insert_events(c, [event]))
    assert await waiting(10.0) == (True, False)

    def fan_out(connection: Connection) -> None:
        (found,) = rows.not_fanned_out(connection, 10)
        rows.insert_deliveries(
            connection,
            [
                {
                    "event_id": found.id,
                    "endpoint": "http://127.0.0.1:1/hook",
                    "state": "pending",
                    "attempts": 0,
                    "created_at": 10.0,
                    "next_attempt_at": 100.0,
                }
            ],
        )
        rows.mark_fanned_out(connection, [found.id])

    await store.write(fan_out)
    assert await waiting(99.9) == (False, False)  # pending, not due yet
    assert await waiting(100.0) == (False, True)
    await store.write(lambda c: c.execute(update(event_deliveries).values(state="delivered")))
    assert await waiting(1000.0) == (False, False)
