"""What an idle handoff costs in the in-memory switchboard, measured with tracemalloc.

Handoffs are made as the channel makes them (a conversation id like a widget's,
a fresh chatSessionID, the channel's name); the figure is the growth of traced
memory divided by the number of handoffs, so per-process overhead cancels out.
"""

import asyncio
import gc
import sys
import time
import tracemalloc
import uuid
from typing import Any, Dict

from connectors.omnidesk.channel.switchboard import InMemorySwitchboard, new_handoff
from connectors.omnidesk.handoff import new_chat_session_id


async def bytes_per_idle_handoff(count: int) -> Dict[str, Any]:
    # Ids are made before tracing starts: they belong to the caller, not the switchboard,
    # but the switchboard keeps them alive, so they are counted when its handoffs hold them.
    conversation_ids = [uuid.uuid4().hex for _ in range(count)]
    chat_ids = [new_chat_session_id() for _ in range(count)]
    now = time.time()
    gc.collect()
    tracemalloc.start()
    try:
        switchboard = InMemorySwitchboard()
        before, _ = tracemalloc.get_traced_memory()
        for conversation_id, chat_id in zip(conversation_ids, chat_ids):
            await switchboard.start(
                new_handoff(conversation_id, chat_id, "callback", next_message_number=2, now=now)
            )
        # A handoff that has seen a few turns: its record was replaced a few times.
        for conversation_id in conversation_ids:
            ticket = await switchboard.begin_turn(conversation_id, lease_seconds=5, now=now + 1)
            assert ticket is not None
            await switchboard.finish_turn(conversation_id, ticket.fence)
            await switchboard.touch(conversation_id, now=now + 1)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = after - before
    # The id strings were allocated before tracing: add them, the switchboard keeps them.
    id_bytes = sum(
        _sizeof(conversation_id) + _sizeof(chat_id)
        for conversation_id, chat_id in zip(conversation_ids, chat_ids)
    )
    assert len(await switchboard.all()) == count
    return {
        "handoffs": count,
        "traced_bytes": held,
        "id_bytes": id_bytes,
        "bytes_per_handoff": (held + id_bytes) / count,
    }


def _sizeof(value: Any) -> int:
    return sys.getsizeof(value)


if __name__ == "__main__":
    print(asyncio.run(bytes_per_idle_handoff(10_000)))
