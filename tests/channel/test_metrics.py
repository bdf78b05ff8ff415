"""An operator scrapes the channel's metrics route and sees what the handoffs did.

A real Sanic server with the channel, the sandbox as Omnidesk and a socket.io
widget as the customer. The counters live in the process's registry, which
other tests move too, so each test reads them over HTTP before and after and
checks the difference.
"""

from typing import Dict, FrozenSet, Tuple

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from connectors.omnidesk import metrics
from connectors.omnidesk.action.escalation import EscalationReason
from tests.channel.conftest import SECRET, ChannelServer, RedisServer, channel_server
from tests.channel.test_socketio_relay import SOCKETIO, Widget
from tests.e2e.test_journey import png

Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


async def scrape_url(url: str) -> Samples:
    """GET a metrics page; each sample by (name, labels). Other tests use it too."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def scrape(server: ChannelServer) -> Samples:
    return await scrape_url(f"{server.url}/webhooks/omnidesk/metrics")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_a_handoff_moves_each_counter_by_what_happened() -> None:
    async with channel_server(SOCKETIO, metrics_enabled=True) as server:
        widget = Widget()
        sid = await widget.connect(server.url)
        try:
            started = await server.open_chat()  # the action's call: one notifyUserNewChatMessage
            chat = started.chat_session_id
            before = await scrape(server)
            assert value(before, "omnidesk_handoffs_open") == 0

            server.escalate_on("human please", started)
            await widget.say("human please")
            await server.wait_with_agent(sid)
            assert value(await scrape(server), "omnidesk_handoffs_open") == 1

            await widget.say("my order is late")
            await server.sandbox.wait_for(lambda: len(server.sandbox.chat(chat).messages) == 2)
            await widget.say("it was due on Monday")
            await server.sandbox.wait_for(lambda: len(server.sandbox.chat(chat).messages) == 3)

            assert (await server.sandbox.agent_reply(chat, "Let me look", name="Anna")).body == "ok"
            await widget.wait_for(lambda: "Let me look" in widget.texts())
            assert (await server.sandbox.agent_reply(chat, "Found it", name="Anna")).body == "ok"
            await widget.wait_for(lambda: "Found it" in widget.texts())
            upload = await server.sandbox.agent_upload(chat, "label.png", png(1), "image/png")
            assert upload.body == "ok"
            await widget.wait_for(lambda: any("attachment" in m for m in widget.bot))
            assert (await server.sandbox.agent_typing(chat, True)).body == "ok"
            await widget.wait_for(lambda: widget.typing == [True])

            assert (await server.sandbox.agent_end(chat)).body == "ok"
            await widget.wait_for(lambda: "Back with the bot (ended_by_agent)." in widget.texts())
            await server.relay.wait_idle(3.0)
            after = await scrape(server)
        finally:
            await widget.close()

    def count(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    assert count("omnidesk_handoffs_ended_total", outcome="ended_by_agent") == 1
    assert value(after, "omnidesk_handoffs_open") == 0
    assert count("omnidesk_customer_turns_relayed_total") == 2
    assert count("omnidesk_first_agent_reply_seconds_count") == 1
    assert count("omnidesk_agent_deliveries_total", kind="message", result="delivered") == 2
    assert count("omnidesk_agent_deliveries_total", kind="file", result="delivered") == 1
    assert count("omnidesk_agent_deliveries_total", kind="typing", result="delivered") == 1
    for kind in ("message", "file", "typing"):
        assert count("omnidesk_agent_deliveries_total", kind=kind, result="failed") == 0
    assert value(after, "omnidesk_agent_deliveries_waiting") == 0
    assert count("omnidesk_api_calls_total", call="notifyUserNewChatMessage", status="200") == 2
    assert count("omnidesk_api_call_seconds_count", call="notifyUserNewChatMessage") == 2
    assert count("omnidesk_api_retries_total", call="notifyUserNewChatMessage") == 0
    for hookpoint, calls in (
        ("messageForCustomer", 2),
        ("uploadForCustomer", 1),
        ("typingIndicatorForCustomer", 1),
        ("endSession", 1),
    ):
        assert count("omnidesk_hookpoint_answers_total", hookpoint=hookpoint, status="200") == calls
        assert count("omnidesk_hookpoint_forged_total", hookpoint=hookpoint) == 0
    # Nothing that names a conversation or a chat is a label.
    labels = {label for key in after for label in key[1]}
    assert not {v for _, v in labels} & {sid, chat}


async def test_a_forged_hookpoint_call_is_counted_apart_from_the_chat_s_own() -> None:
    async with channel_server(SOCKETIO, metrics_enabled=True) as server:
        started = await server.open_chat()
        before = await scrape(server)
        fields = {"sessionID": started.chat_session_id, "message": "not from Omnidesk"}
        async with aiohttp.ClientSession() as session:
            # Another chat's token, the secret itself, and a token of the wrong shape.
            for segment in (
                server.settings.hookpoint_token("rasa-" + "0" * 32),
                SECRET,
                "x" * 40,
            ):
                url = server.hook_url("messageForCustomer", secret=segment)
                async with session.post(url, data=fields) as resp:
                    assert resp.status == 404
            # The chat's own token, for a chat not with an agent here: a 404, not forged.
            async with session.post(
                server.hook_url("messageForCustomer", chat=started.chat_session_id), data=fields
            ) as resp:
                assert resp.status == 404
        after = await scrape(server)

    assert (
        moved(before, after, "omnidesk_hookpoint_forged_total", hookpoint="messageForCustomer") == 3
    )
    assert (
        moved(
            before,
            after,
            "omnidesk_hookpoint_answers_total",
            hookpoint="messageForCustomer",
            status="404",
        )
        == 4
    )


async def test_a_failing_omnidesk_call_is_counted_with_its_status_and_its_retry() -> None:
    async with channel_server(SOCKETIO, metrics_enabled=True) as server:
        widget = Widget()
        sid = await widget.connect(server.url)
        try:
            started = await server.open_chat()
            server.escalate_on("human please", started)
            await widget.say("human please")
            await server.wait_with_agent(sid)
            before = await scrape(server)
            server.sandbox.inject_fault("notifyUserNewChatMessage", status=503, count=2)
            await widget.say("hello?")
            await widget.wait_for(
                lambda: any("did not reach the agent" in t for t in widget.texts())
            )
            await server.relay.wait_idle(3.0)
            after = await scrape(server)
        finally:
            await widget.close()

    call = "notifyUserNewChatMessage"
    # max_attempts is 2 in these tests: one attempt, one retry, both refused.
    assert moved(before, after, "omnidesk_api_calls_total", call=call, status="503") == 2
    assert moved(before, after, "omnidesk_api_retries_total", call=call) == 1
    assert moved(before, after, "omnidesk_customer_turns_relayed_total") == 0
    # The notice that the message did not reach the agent went through the outbox.
    assert (
        moved(before, after, "omnidesk_agent_deliveries_total", kind="notice", result="delivered")
        == 1
    )


async def test_the_metrics_route_is_off_unless_enabled() -> None:
    async with channel_server(SOCKETIO) as server, aiohttp.ClientSession() as session, session.get(
        f"{server.url}/webhooks/omnidesk/metrics"
    ) as resp:
        assert resp.status == 404


def test_every_metric_of_the_contract_is_in_the_registry() -> None:
    registered = {family.name for family in metrics.CHANNEL_REGISTRY.collect()}
    # prometheus_client names a counter's family without _total.
    wanted = {
        name[: -len("_total")] if name.endswith("_total") else name for name in metrics.METRIC_NAMES
    }
    assert wanted <= registered


async def test_a_scrape_during_a_redis_outage_answers_and_counts_the_switchboard_errors(
    redis_server: RedisServer,
) -> None:
    async with channel_server(
        SOCKETIO, metrics_enabled=True, switchboard_url=redis_server.url
    ) as server:
        before = await scrape(server)
        assert value(before, "omnidesk_handoffs_open") == 0
        redis_server.stop()
        after = await scrape(server)
        redis_server.start()

    assert moved(before, after, "omnidesk_switchboard_errors_total", operation="count") >= 1
    assert moved(before, after, "omnidesk_switchboard_errors_total", operation="outbox_list") >= 1
    assert value(after, "omnidesk_handoffs_open") == 0


def test_label_values_outside_the_known_sets_are_folded_into_other() -> None:
    before = metrics.sample("omnidesk_handoffs_started_total", {"reason": "other"})
    metrics.handoff_started("customer 4711 said something new")
    assert metrics.sample("omnidesk_handoffs_started_total", {"reason": "other"}) == before + 1
    assert metrics.status_label(None) == "error" and metrics.status_label(503) == "503"
    assert metrics.fold("rasa-0123", metrics.HOOKPOINTS) == "other"


def test_the_known_reasons_are_the_escalation_reasons() -> None:
    assert {reason.value for reason in EscalationReason} == metrics.HANDOFF_REASONS
