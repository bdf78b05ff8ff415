"""Text that is not valid Unicode (a lone surrogate, a legal JSON escape) is repaired at the edge."""

import json

import aiohttp

from tests.channel.conftest import callback_setup

LONE = "\ud800"


async def post_raw_json(url: str, text: str) -> int:
    """Post ``text`` as JSON bytes, with the surrogate as the escape a client would send."""
    async with aiohttp.ClientSession() as session, session.post(
        url, data=text.encode("ascii"), headers={"Content-Type": "application/json"}
    ) as resp:
        await resp.read()
        return resp.status


async def test_a_relayed_customer_turn_with_a_lone_surrogate_reaches_the_agent_repaired() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("sur-1")
        body = json.dumps({"sender": "sur-1", "message": f"hello {LONE} there"})
        assert "\\ud800" in body
        status = await post_raw_json(f"{setup.server.url}/webhooks/callback/webhook", body)
        assert status == 200
        assert setup.server.sandbox.chat(chat).messages[-1].text == "hello \ufffd there"


async def test_a_bot_turn_with_a_lone_surrogate_reaches_the_bot_repaired() -> None:
    async with callback_setup() as setup:
        body = json.dumps({"sender": "sur-2", "message": f"hi {LONE}"})
        status = await post_raw_json(f"{setup.server.url}/webhooks/callback/webhook", body)
        assert status == 200
        assert setup.server.bot.seen[-1].text == "hi \ufffd"


async def test_an_agent_message_and_name_with_a_lone_surrogate_reach_the_customer_repaired() -> (
    None
):
    async with callback_setup() as setup:
        chat = await setup.hand_over("sur-3")
        body = json.dumps({"sessionID": chat, "message": f"agent {LONE}", "name": f"Ann{LONE}"})
        status = await post_raw_json(setup.server.hook_url("messageForCustomer", chat), body)
        assert status == 200
        posted = await setup.customer.wait_for(
            lambda r: [m for m in r if m.get("text") == "agent \ufffd"]
        )
        assert posted[0]["agent"]["name"] == "Ann\ufffd"
        await setup.server.record.flush("sur-3")
        store = setup.server.app.ctx.agent.tracker_store
        tracker = await store.retrieve("sur-3")
        texts = [getattr(e, "text", None) or "" for e in tracker.events]
        assert "agent \ufffd" in texts
        for text in texts:
            text.encode("utf-8")  # raises on a lone surrogate
