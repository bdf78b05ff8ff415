"""What the lines share: the event name of the handoff's details, the agent's identity."""

from typing import Any, Dict, Optional

from connectors.omnidesk.channel.hookpoints import AgentIdentity

# What the customer's own channel hears when a handoff starts (docs/channel.md).
CUSTOMER_EVENT_NAME = "omnidesk_customer"


def with_agent(payload: Dict[str, Any], agent: Optional[AgentIdentity]) -> Dict[str, Any]:
    """``payload`` with the agent's name and picture under "agent", when there are any."""
    if agent is not None and (agent.name is not None or agent.picture is not None):
        payload["agent"] = {"name": agent.name, "picture": agent.picture}
    return payload
