"""A rest customer on two replicas: the stream on replica A, the agent's hookpoint calls on B.

The customer's turns go through nginx; its stream is opened on replica A
directly; Omnidesk's calls for the chat are made to replica B directly, so
every agent message is put in Redis on B and must wake A's stream. Then a
stream through nginx gets an event while open (nginx does not buffer it), and
a long poll through nginx fetches the chat's end.
"""

from typing import Any, Dict, List

import aiohttp
import pytest

from connectors.omnidesk.settings import HOOKPOINT_TOKEN_CONTEXT, derive_chat_token
from tests.channel.rest_client import RestCustomer, texts
from tests.cluster.cluster import Cluster
from tests.e2e.people import Desk, RasaApi, new_conversation_id
from tests.e2e.test_journey import ASK_EMAIL, CLOSED_BY_AGENT, CONNECTED, GREETING

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

AGENT_LINES = [f"Anna on B, line {n}" for n in range(1, 7)]


async def hookpoint_on(
    cluster: Cluster, replica: str, http: aiohttp.ClientSession, chat_id: str, **fields: Any
) -> int:
    """What Omnidesk posts for ``chat_id``, made to one replica's own port."""
    token = derive_chat_token(cluster._hookpoint_secret, HOOKPOINT_TOKEN_CONTEXT, chat_id)
    name = "endSession" if fields.pop("end", False) else "messageForCustomer"
    url = f"{cluster.replica(replica).url}/webhooks/omnidesk/hook/{token}/{name}"
    async with http.post(url, data={"sessionID": chat_id, **fields}) as answer:
        await answer.read()
        return answer.status


async def test_a_stream_on_replica_a_gets_every_message_the_agent_sends_to_replica_b(
    cluster: Cluster, desk: Desk, http: aiohttp.ClientSession
) -> None:
    customer = RestCustomer(cluster.proxy_url, new_conversation_id("cluster-rest"), http)
    assert GREETING in " ".join(texts(await customer.say("hi")))
    assert ASK_EMAIL in " ".join(texts(await customer.say("I want to talk to a person")))
    answer = await customer.say(f"rest.{customer.sender[-8:]}@example.com")
    assert CONNECTED in " ".join(texts(answer)) and customer.token, answer
    chat_id = await RasaApi(cluster.replica("rasa-a").url, http).slot(
        customer.sender, "omnidesk_chat_session_id"
    )
    cursor = str(answer[-1]["id"])

    on_a = RestCustomer(cluster.replica("rasa-a").url, customer.sender, http, customer.details)
    status, ticket = await on_a.ticket()
    assert status == 200, ticket
    stream_on_a = ticket["url"].replace(cluster.proxy_url, cluster.replica("rasa-a").url)
    received: List[Dict[str, Any]] = []
    async with on_a.open(stream_on_a, after=cursor) as (status, events):
        assert status == 200 and events is not None
        for line in AGENT_LINES:
            assert (
                await hookpoint_on(cluster, "rasa-b", http, chat_id, message=line, name="Anna")
                == 200
            )
        received = [event.data for event in await events.until(len(AGENT_LINES), timeout=20)]
    assert [m["text"] for m in received] == AGENT_LINES
    cursor = str(received[-1]["id"])

    # Through nginx the stream is not buffered: an event arrives while it is open.
    async with customer.stream(after=cursor) as (status, events):
        assert status == 200 and events is not None
        assert (
            await hookpoint_on(cluster, "rasa-b", http, chat_id, message="Live", name="Anna") == 200
        )
        [live] = await events.until(1, timeout=10)
        assert live.data["text"] == "Live"
    cursor = str(live.id)

    # The chat ends on B; a poll through nginx, on whichever replica, gets the end.
    assert await hookpoint_on(cluster, "rasa-b", http, chat_id, end=True) == 200
    tail: List[Dict[str, Any]] = []
    while not any("omnidesk_ended" in (m.get("custom") or {}) for m in tail):
        status, tail, _ = await customer.poll(after=cursor, wait=10)
        assert status == 200, tail
    assert any(CLOSED_BY_AGENT in text for text in texts(tail)), tail
    assert (await customer.poll(after=str(tail[-1]["id"])))[0] == 204
