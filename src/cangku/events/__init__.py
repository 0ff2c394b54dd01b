"""Events (issue 16): what changed in the registry, recorded in the transaction that changed it.

`records.py` turns a change into a CloudEvents 1.0 event and appends it to the outbox (the
`events` table, SQL in metadata/events.py) on the caller's connection, so the event commits
or rolls back with the change. docs/events.md lists the types and their payloads.
"""
