"""What the lines share: the event name of the handoff's details, the agent's identity,
how an agent's name and file read as text, and blocking clients kept off the event loop."""

import asyncio
import functools
from typing import Any, Awaitable, Callable, Dict, Optional, TypeVar

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.sides import FileLink, Undeliverable

# What the customer's own channel hears when a handoff starts (docs/channel.md).
CUSTOMER_EVENT_NAME = "omnidesk_customer"

# Seconds a line's call to a channel's API may take: less than the outbox's
# delivery_timeout (10 s), so a slow API is a refusal of ours, not a cut send.
API_TIMEOUT = 8.0

T = TypeVar("T")


def with_agent(payload: Dict[str, Any], agent: Optional[AgentIdentity]) -> Dict[str, Any]:
    """``payload`` with the agent's name and picture under "agent", when there are any."""
    if agent is not None and (agent.name is not None or agent.picture is not None):
        payload["agent"] = {"name": agent.name, "picture": agent.picture}
    return payload


def prefixed(text: str, agent: Optional[AgentIdentity], name_prefix: bool) -> str:
    """``text`` as ``Anna: text`` when the agent has a name and ``agent_name_prefix`` is on."""
    if name_prefix and agent is not None and agent.name:
        return f"{agent.name}: {text}"
    return text


def agent_caption(
    file: FileLink, agent: Optional[AgentIdentity], name_prefix: bool
) -> Optional[str]:
    """``Anna: label.png`` for a picture the agent sent, when names are shown; else None."""
    if name_prefix and agent is not None and agent.name:
        return f"{agent.name}: {file.filename}"
    return None


def file_as_text(file: FileLink, agent: Optional[AgentIdentity], name_prefix: bool) -> str:
    """A file a channel cannot show, as its name and its link (``Anna: a.pdf`` then the URL)."""
    return f"{prefixed(file.filename, agent, name_prefix)}\n{file.url}"


async def checked(refusal_of: Callable[[BaseException], Optional[str]], call: Awaitable[T]) -> T:
    """Await a send to a channel's API; an error ``refusal_of`` reads as the channel's
    refusal (it names a reason) becomes ``Undeliverable``, any other is raised as it is."""
    try:
        return await call
    except Exception as error:
        reason = refusal_of(error)
        if reason is not None:
            raise Undeliverable(reason) from error
        raise


async def off_the_loop(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking client call in the default thread pool, so the event loop goes on.

    The call cannot be cut once it runs: give it a timeout of its own (``API_TIMEOUT``).
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(call, *args, **kwargs))
