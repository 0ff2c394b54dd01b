"""server._HeldHeads: one per event loop, and it does not keep an ended loop alive."""

from __future__ import annotations

import asyncio
import gc
import weakref

from cangku.server import _HeldHeads


def test_an_ended_loop_is_let_go() -> None:
    loop = asyncio.new_event_loop()
    held = _HeldHeads.of(loop)
    assert _HeldHeads.of(loop) is held  # One per loop.
    ended = weakref.ref(loop)
    loop.close()
    del loop, held
    gc.collect()
    assert ended() is None
