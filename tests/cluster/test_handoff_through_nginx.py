"""A callback customer's handoff through nginx, its calls spread over both replicas.

What works across replicas before any cross-instance change to the connector:
the switchboard is in Redis, trackers in PostgreSQL, agent files in one
directory, and a callback customer can be reached from any replica. (A
socket.io customer cannot yet: an agent message whose hookpoint call reaches
the other replica is lost. That is the connector's work, not this launcher's.)
"""

from typing import Any

import aiohttp
import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.people import CallbackCustomer, Desk, RasaApi, apoll
from tests.e2e.test_journey import CLOSED_BY_AGENT, CONNECTED, GREETING, escalate, png

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


async def test_a_callback_handoff_runs_over_both_replicas(
    cluster: Cluster,
    callback_customer: CallbackCustomer,
    desk: Desk,
    http: aiohttp.ClientSession,
) -> None:
    customer = callback_customer
    await escalate(customer, f"cluster.{customer.id[-8:]}@example.com")
    await customer.wait_for_text(CONNECTED)
    # Either replica reads the tracker from PostgreSQL.
    trackers = [RasaApi(replica.url, http) for replica in cluster.replicas]
    chat_id = await trackers[1].slot(customer.id, "omnidesk_chat_session_id")
    assert chat_id == await trackers[0].slot(customer.id, "omnidesk_chat_session_id")
    assert isinstance(chat_id, str) and chat_id

    hooks_before = len(cluster.proxy.upstreams_used("/webhooks/omnidesk/hook/"))
    turns_before = len(cluster.proxy.upstreams_used("/webhooks/callback/"))

    # Agent replies: hookpoint calls from the sandbox, through nginx, round-robin.
    replies = [f"Agent line {n}" for n in range(1, 5)]
    for reply in replies:
        answer = await desk.reply(chat_id, reply, name="Anna")
        assert answer["hookpoint_status"] == 200, answer
    await customer.wait(
        lambda: [m["text"] for m in customer.agent_messages()] == replies, "every agent reply"
    )

    # Customer turns, round-robin too, reach the desk numbered in order.
    turns = ["first question", "second question", "third question", "fourth question"]
    for turn in turns:
        await customer.say(turn)

    async def relayed() -> Any:
        messages = (await desk.chat(chat_id))["messages"]
        return len(messages) >= 1 + len(turns) and messages

    messages = await apoll(relayed, "the customer's turns at the desk")
    assert [(m["number"], m["text"]) for m in messages[1:]] == list(enumerate(turns, start=2))
    assert (await desk.chat(chat_id))["numbering_problems"] == []

    # An agent file is written by one replica and served by both (one files_dir).
    agent_file = png(7)
    sent = await desk.upload(chat_id, "label.png", agent_file, "image/png")
    assert sent["hookpoint_status"] == 200, sent
    file_message = await customer.wait(customer.agent_file, "the agent's file")
    assert file_message["url"].startswith(cluster.proxy_url + "/webhooks/omnidesk/files/")
    path = file_message["url"][len(cluster.proxy_url) :]
    for replica in cluster.replicas:
        async with http.get(replica.url + path) as download:
            assert download.status == 200, replica.name
            assert await download.read() == agent_file

    # The chat ends from whichever replica gets endSession; the bot is back.
    before_end = len(customer.texts())
    assert (await desk.end(chat_id))["hookpoint_status"] == 200
    await customer.wait_for_text(CLOSED_BY_AGENT, after=before_end)
    after_end = len(customer.texts())
    await customer.say("hello")
    await customer.wait_for_text(GREETING, after=after_end)

    hooks = cluster.proxy.upstreams_used("/webhooks/omnidesk/hook/")[hooks_before:]
    turns_seen = cluster.proxy.upstreams_used("/webhooks/callback/")[turns_before:]
    replicas = {replica.upstream for replica in cluster.replicas}
    assert set(hooks) == replicas, hooks
    assert set(turns_seen) == replicas, turns_seen
