"""The smaller points of the hardening: agent file types, SVG, plain http, metadata identity."""

import logging

import aiohttp
import pytest

from connectors.omnidesk.action.escalation import build_escalation
from connectors.omnidesk.channel.startup import warn_if_plain_http
from tests.channel.conftest import callback_setup


async def test_an_agent_file_of_a_type_not_allowed_is_refused_with_415() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("type-1")
        result = await setup.server.sandbox.agent_upload(
            chat, "setup.exe", b"MZ...", "application/x-msdownload"
        )
        assert result.status == 415
        # Labelled octet-stream, the name says what it is.
        result = await setup.server.sandbox.agent_upload(chat, "invoice.pdf", b"%PDF-1.4")
        assert result.status == 200
        await setup.server.relay.wait_idle()
        files = [m for m in setup.customer.received if "attachment" in m or "image" in m]
        assert [m["filename"] for m in files] == ["invoice.pdf"]


async def test_an_svg_from_the_agent_is_served_as_a_download() -> None:
    async with callback_setup(allowed_upload_types="image/*,application/pdf") as setup:
        chat = await setup.hand_over("svg-1")
        svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
        result = await setup.server.sandbox.agent_upload(chat, "logo.svg", svg, "image/svg+xml")
        assert result.status == 200
        posted = await setup.customer.wait_for(
            lambda r: [m for m in r if m.get("filename") == "logo.svg"]
        )
        url = posted[0].get("image") or posted[0].get("attachment")
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Disposition"].startswith("attachment")


def test_a_plain_http_public_url_on_a_public_host_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        warn_if_plain_http("http://127.0.0.1:5005")
        warn_if_plain_http("http://10.1.2.3")
        warn_if_plain_http("https://bot.example.com")
        assert not caplog.records
        warn_if_plain_http("http://bot.example.com")
    assert "https" in caplog.records[0].getMessage()


def test_identity_from_client_metadata_is_labelled_unverified_in_the_ticket() -> None:
    events = [
        {
            "event": "user",
            "text": "I need a person",
            "metadata": {"customer": {"email": "ceo@example.com", "name": "The CEO"}},
            "parse_data": {"intent": {"name": "request_human"}},
        }
    ]
    escalation = build_escalation(events, {})
    assert escalation.customer.email == "ceo@example.com"
    assert "Not verified" in escalation.transcript
    assert "email, name" in escalation.transcript
    assert "Not verified" in escalation.chat_history
    # The email the bot's slot holds is the conversation's own: only the name is flagged.
    trusted = build_escalation(events, {"customer_email": "ceo@example.com"})
    assert "the customer's name came from their own app" in trusted.transcript
