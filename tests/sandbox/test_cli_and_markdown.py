"""`python -m omnidesk_sandbox` starts, says it is ready, and stops on SIGTERM; markdown is safe."""

import asyncio
import json
import signal
import sys

import aiohttp

from omnidesk_sandbox import markdown


async def test_the_command_prints_a_ready_line_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "omnidesk_sandbox",
        "--port",
        "0",
        "--agents",
        "offline",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        ready = None
        while ready is None:
            line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
            assert line, "the sandbox exited before it was ready"
            if line.startswith("OMNIDESK_SANDBOX_READY "):
                ready = json.loads(line.split(" ", 1)[1])
        async with aiohttp.ClientSession() as http, http.get(
            ready["url"] + "/requestChatConfig",
            params={
                "chatAccountToken": "sandboxAccountToken1",
                "chatServerToken": "sandboxServerToken1",
            },
        ) as response:
            config = await response.json()
        assert {"type": "hide_reason_no_agents_available"} in config["instructions"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_bad_token_stops_the_command_naming_the_setting() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "omnidesk_sandbox",
        "--chat-account-token",
        "bad_token",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"chat_account_token" in stderr


def test_markdown_escapes_html_before_rendering() -> None:
    html = markdown.render("<script>alert(1)</script> **bold** [x](javascript:alert(1))")
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "<strong>bold</strong>" in html
    assert 'href="javascript' not in html


def test_markdown_renders_a_transcript() -> None:
    html = markdown.render(
        "## Chat\n- **customer**: hi\n- **bot**: see [help](https://example.com/a?b=1&c=2)"
    )
    assert html == (
        "<h2>Chat</h2><ul><li><strong>customer</strong>: hi</li>"
        '<li><strong>bot</strong>: see <a href="https://example.com/a?b=1&amp;c=2" '
        'rel="noopener noreferrer" target="_blank">help</a></li></ul>'
    )


def test_the_agent_sees_what_the_customer_typed_without_markdown_backslashes() -> None:
    # The transcript backslash-escapes markdown characters (as Omnidesk's markdown
    # reads them); the agent page must show the text itself, not "Hi\!".
    from connectors.omnidesk.action.transcript import escape_markdown

    typed = "Hi! my_order_id is *42* (see [1]) <b>#tag</b> - 3.5"
    assert markdown.render(escape_markdown(typed)) == (
        "<p>Hi! my_order_id is *42* (see [1]) &lt;b&gt;#tag&lt;/b&gt; - 3.5</p>"
    )
    assert markdown.render(r"\- not a list \\ and \*not italic\*") == (
        r"<p>- not a list \ and *not italic*</p>"
    )
