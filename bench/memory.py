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

from connectors.omnidesk.channel.switchboard import InMemorySwitchboard, LocalLine, new_handoff
from connectors.omnidesk.handoff import new_chat_session_id


async def bytes_per_idle_handoff(count: int) -> Dict[str, Any]:
    # Ids are made before tracing starts: they belong to the caller, not the switchboard,
    # but the switchboard keeps them alive, so they are counted when its handoffs hold them.
    conversation_ids = [uuid.uuid4().hex for _ in range(count)]
    chat_ids = [new_chat_session_id(conversation_id) for conversation_id in conversation_ids]
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
        line = LocalLine()
        for conversation_id in conversation_ids:
            async with line.place(conversation_id, 5.0) as first, switchboard.in_line(
                conversation_id, True, 5.0
            ) as place:
                assert first and place.message_number is not None
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
