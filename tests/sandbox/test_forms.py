"""The sandbox reads multipart/form-data bodies exactly, and refuses malformed ones by name.

Raw bodies, as a client with a bug (or another library) could send them, posted
to a running sandbox.
"""

from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import aiohttp
import pytest

from omnidesk_sandbox.testing import Sandbox, running_sandbox

from .support import ACCOUNT_TOKEN, SERVER_TOKEN, SESSION_ID, message_form

NEW_MESSAGE = "/api/v2/chat/notifyUserNewChatMessage"
ATTACHMENT = "/api/v2/chat/addAttachment"
BOUNDARY = "b0und4ry"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"

Part = Tuple[List[str], bytes]  # header lines, content


def text_part(name: str, value: str, *headers: str) -> Part:
    return ([f'Content-Disposition: form-data; name="{name}"', *headers], value.encode())


def multipart(parts: List[Part], *, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    body = preamble
    for headers, content in parts:
        body += f"--{BOUNDARY}\r\n".encode()
        body += "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode() + epilogue


def message_parts(**overrides: Optional[str]) -> List[Part]:
    return [text_part(name, value) for name, value in message_form(**overrides).items()]


async def post_raw(
    http: aiohttp.ClientSession, url: str, body: Any, content_type: str = MULTIPART
) -> Tuple[int, Dict[str, Any]]:
    async with http.post(url, data=body, headers={"Content-Type": content_type}) as response:
        return response.status, await response.json(content_type=None)


async def test_a_hand_written_body_with_preamble_and_epilogue_is_read(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    parts = message_parts(message=None)
    parts.append(
        (['content-disposition: form-data; name="message"'], 'Grüße, "ok"\r\nline 2'.encode())
    )
    body = multipart(parts, preamble=b"ignored preamble\r\n", epilogue=b"ignored epilogue")

    status, answer = await post_raw(http, sandbox.url + NEW_MESSAGE, body)

    assert status == 200, answer
    assert sandbox.chat(SESSION_ID).messages[-1].text == 'Grüße, "ok"\r\nline 2'
    assert sandbox.calls[-1].content_type == "multipart/form-data"


async def test_the_first_part_of_a_name_wins(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    parts = [*message_parts(message="first"), text_part("message", "second")]
    status, _ = await post_raw(http, sandbox.url + NEW_MESSAGE, multipart(parts))
    assert status == 200
    assert sandbox.chat(SESSION_ID).messages[-1].text == "first"


async def test_a_latin1_part_and_a_base64_part_are_decoded(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    parts = message_parts(message=None, customerName=None)
    parts.append(
        (
            [
                'Content-Disposition: form-data; name="message"',
                "Content-Type: text/plain; charset=latin-1",
            ],
            "Zoë".encode("latin-1"),
        )
    )
    parts.append(
        (
            [
                'Content-Disposition: form-data; name="customerName"',
                "Content-Transfer-Encoding: base64",
            ],
            b"SmFuZQ==",
        )
    )
    status, answer = await post_raw(
        http, sandbox.url + NEW_MESSAGE, multipart(parts), MULTIPART + ";"
    )
    assert status == 200, answer
    chat = sandbox.chat(SESSION_ID)
    assert (chat.customer_name, chat.messages[-1].text) == ("Jane", "Zoë")


async def test_a_file_part_keeps_its_name_type_and_bytes(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await post_raw(http, sandbox.url + NEW_MESSAGE, multipart(message_parts()))
    data = bytes(range(256)) * 4 + b"\r\n--b0und4r"  # almost a delimiter, inside the file
    parts = [
        text_part("sessionID", SESSION_ID),
        text_part("chatServer", "http://127.0.0.1:9/hook"),
        text_part("chatAccountToken", ACCOUNT_TOKEN),
        (
            [
                "Content-Disposition: form-data; name=file; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
            ],
            data,
        ),
    ]
    status, answer = await post_raw(http, sandbox.url + ATTACHMENT, multipart(parts))
    assert status == 200, answer
    [recorded] = sandbox.calls[-1].files
    assert (recorded.field, recorded.filename, recorded.size, recorded.content_type) == (
        "file",
        "résumé.pdf",
        len(data),
        "application/octet-stream",
    )


def _no_name() -> bytes:
    return multipart([*message_parts(), (["Content-Disposition: form-data"], b"x")])


def _truncated() -> bytes:
    return multipart(message_parts()).rsplit(f"--{BOUNDARY}--".encode(), 1)[0]


@pytest.mark.parametrize(
    ("content_type", "body", "starts"),
    [
        ("multipart/form-data", multipart(message_parts()), "Content-Type: "),
        ('multipart/form-data; boundary=""', multipart(message_parts()), "Content-Type: "),
        ("multipart/form-data; boundary=b0und4ry; junk", b"", "Content-Type: malformed"),
        (MULTIPART, b"", "body: no multipart delimiter"),
        (MULTIPART, b"message=hello&channelID=8", "body: no multipart delimiter"),
        (MULTIPART, _truncated(), "body: the closing delimiter --b0und4ry-- is missing"),
        (MULTIPART, _no_name(), "body: part 7 has no name"),
        (MULTIPART, multipart([([], b"x")]), "body: part 1 has no Content-Disposition"),
        (
            MULTIPART,
            multipart([(["Content-Disposition: attachment; name=x"], b"x")]),
            "body: part 1 Content-Disposition must be form-data",
        ),
        (
            MULTIPART,
            multipart([(["Content-Disposition: form-data; name=x", "no colon"], b"x")]),
            "body: part 1 has a malformed header line",
        ),
        (
            MULTIPART,
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=x\r\n--{BOUNDARY}--".encode(),
            "body: part 1 has no blank line",
        ),
        (
            MULTIPART,
            multipart([(["Content-Disposition: form-data; name=message"], b"\xff\xfe")]),
            "message: not valid utf-8",
        ),
        (
            MULTIPART,
            multipart(
                [
                    (
                        [
                            "Content-Disposition: form-data; name=message",
                            "Content-Transfer-Encoding: uuencode",
                        ],
                        b"x",
                    )
                ]
            ),
            "message: unknown Content-Transfer-Encoding",
        ),
    ],
    ids=[
        "no boundary",
        "empty boundary",
        "bad content-type parameters",
        "empty body",
        "urlencoded body",
        "no closing delimiter",
        "part without a name",
        "part without content-disposition",
        "not form-data",
        "header line without colon",
        "headers never end",
        "not utf-8",
        "unknown transfer encoding",
    ],
)
async def test_a_malformed_body_is_refused_naming_what_is_wrong(
    sandbox: Sandbox, http: aiohttp.ClientSession, content_type: str, body: bytes, starts: str
) -> None:
    status, answer = await post_raw(http, sandbox.url + NEW_MESSAGE, body, content_type)

    assert status == 400
    assert answer["message"].startswith(starts), answer
    assert sandbox.chats == []
    assert sandbox.calls[-1].status == 400  # the refused call is recorded too


@pytest.fixture
async def small_sandbox() -> AsyncIterator[Sandbox]:
    """client_max_size is max_file_bytes plus 1 MiB of room for the rest of the form."""
    async with running_sandbox(ACCOUNT_TOKEN, SERVER_TOKEN, max_file_bytes=1024) as running:
        yield running


async def test_a_body_over_the_limit_is_refused_with_413(
    small_sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    big = multipart([*message_parts(), text_part("additionalData", "x" * (1024 * 1024 + 2048))])
    status, answer = await post_raw(http, small_sandbox.url + NEW_MESSAGE, big)
    assert status == 413
    assert answer["message"] == "body: larger than this sandbox accepts"
    assert small_sandbox.chats == []


async def test_a_chunked_body_over_the_limit_is_refused_with_413(
    small_sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    """Without a Content-Length the limit holds while reading."""
    big = multipart([*message_parts(), text_part("additionalData", "x" * (1024 * 1024 + 2048))])

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    status, answer = await post_raw(http, small_sandbox.url + NEW_MESSAGE, chunks())
    assert status == 413
    assert answer["message"] == "body: larger than this sandbox accepts"
    assert small_sandbox.chats == []
