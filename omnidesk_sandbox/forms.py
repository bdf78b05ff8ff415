"""Read an Omnidesk API form body: multipart/form-data or application/x-www-form-urlencoded.

The body is read whole (its size capped by the application's client_max_size,
checked against Content-Length before reading) and split in one pass. aiohttp's
own `request.post()` did the same job at several times the CPU per request (it
parses every part's headers through the email package and rebuilds an escaped
character table for every Content-Disposition), which made the sandbox the slow
end of every relayed turn.

Strict on purpose: a body the sandbox cannot read exactly is answered 400 with
what is wrong, never guessed at. The first part (or query pair) of a name wins,
as it always did here.
"""

import base64
import binascii
import functools
import quopri
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from omnidesk_sandbox.validation import UploadedFile

MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"

DEFAULT_FILE_TYPE = "application/octet-stream"
# Content-Transfer-Encoding values whose bytes are the part's bytes.
_IDENTITY_ENCODINGS = frozenset({"", "binary", "7bit", "8bit"})

_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM = re.compile(rf";\s*({_TCHARS})\s*=\s*({_QUOTED}|{_TCHARS})\s*")
_MEDIA_TYPE = re.compile(rf"\s*({_TCHARS}/{_TCHARS})\s*")
_DISPOSITION_TYPE = re.compile(rf"\s*({_TCHARS})\s*")
_UNESCAPE = re.compile(r"\\(.)")
_RFC5987 = re.compile(r"^([A-Za-z0-9!#$%&+\-^_`{}~]+)'[A-Za-z0-9\-]*'(.*)$")


class FormError(Exception):
    """The body cannot be read as a form; `status` is the HTTP answer (400 or 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class MediaType:
    """A parsed Content-Type: the lower-cased type and its parameters (names lower-cased)."""

    type: str
    params: Mapping[str, str]


@dataclass(frozen=True)
class FormBody:
    fields: Dict[str, str]
    files: Dict[str, UploadedFile]


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return _UNESCAPE.sub(r"\1", value[1:-1])
    return value


def _params(header: str, start: int, what: str) -> Dict[str, str]:
    """The `; name=value` parameters of a header from `start`; ValueError if malformed."""
    params: Dict[str, str] = {}
    pos = start
    while pos < len(header):
        if not header[pos:].strip(" \t;"):
            break  # a trailing ";" some clients add
        match = _PARAM.match(header, pos)
        if match is None:
            raise ValueError(f"{what}: malformed parameters in {header!r}")
        name = match.group(1).lower()
        if name in params:
            raise ValueError(f"{what}: parameter {name!r} given twice in {header!r}")
        params[name] = _unquote(match.group(2))
        pos = match.end()
    return params


@functools.lru_cache(maxsize=256)
def parse_media_type(header: str) -> Optional[MediaType]:
    """A Content-Type header as type and parameters, or None when it is not one.

    Cached: a client sends the same few part types over and over. Callers only read.
    """
    match = _MEDIA_TYPE.match(header)
    if match is None:
        return None
    try:
        params = _params(header, match.end(), "Content-Type")
    except ValueError:
        return None
    return MediaType(match.group(1).lower(), params)


def _part_headers(block: bytes, number: int) -> Dict[str, str]:
    headers: Dict[str, str] = {}
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(400, f"body: part {number} has headers that are not UTF-8") from None
    for line in text.split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise FormError(400, f"body: part {number} has a malformed header line {line!r}")
        key = name.lower()
        if key not in headers:
            headers[key] = value.strip()
    return headers


def _disposition(headers: Dict[str, str], number: int) -> Tuple[str, Optional[str]]:
    """The part's name and filename (None for a text field)."""
    header = headers.get("content-disposition")
    if header is None:
        raise FormError(400, f"body: part {number} has no Content-Disposition header")
    match = _DISPOSITION_TYPE.match(header)
    try:
        if match is None or match.group(1).lower() != "form-data":
            raise ValueError(f"must be form-data, got {header!r}")
        params = _params(header, match.end(), "Content-Disposition")
    except ValueError as exc:
        raise FormError(400, f"body: part {number} Content-Disposition {exc}") from None
    name = params.get("name")
    if not name:
        raise FormError(400, f"body: part {number} has no name in its Content-Disposition")
    filename = params.get("filename")
    extended = params.get("filename*")
    if extended is not None:
        encoded = _RFC5987.match(extended)
        if encoded is None:
            raise FormError(400, f"body: part {number} has a malformed filename* {extended!r}")
        try:
            filename = unquote(encoded.group(2), encoding=encoded.group(1), errors="strict")
        except (LookupError, UnicodeDecodeError):
            raise FormError(
                400, f"body: part {number} has a filename* in an unknown or wrong charset"
            ) from None
    # An empty filename is a text field, as a browser sends an empty file input.
    return name, filename or None


def _content(data: bytes, headers: Dict[str, str], name: str) -> bytes:
    encoding = headers.get("content-transfer-encoding", "").lower()
    if encoding in _IDENTITY_ENCODINGS:
        content = data
    elif encoding == "base64":
        try:
            content = base64.b64decode(data)
        except binascii.Error:
            raise FormError(400, f"{name}: the part is not valid base64") from None
    elif encoding == "quoted-printable":
        content = quopri.decodestring(data)
    else:
        raise FormError(400, f"{name}: unknown Content-Transfer-Encoding {encoding!r}")
    if headers.get("content-encoding", "identity").lower() != "identity":
        raise FormError(400, f"{name}: a compressed part (Content-Encoding) is not supported")
    return content


def _text(data: bytes, charset: str, name: str) -> str:
    try:
        return data.decode(charset)
    except LookupError:
        raise FormError(400, f"{name}: unknown charset {charset!r}") from None
    except UnicodeDecodeError:
        raise FormError(400, f"{name}: not valid {charset} text") from None


def parse_multipart(body: bytes, boundary: str) -> FormBody:
    """Split a multipart/form-data body into its text fields and file parts."""
    if not boundary or not boundary.isascii():
        raise FormError(400, "Content-Type: multipart/form-data needs an ASCII boundary parameter")
    delimiter = b"--" + boundary.encode("ascii")
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        found = body.find(b"\r\n" + delimiter)
        if found < 0:
            raise FormError(400, f"body: no multipart delimiter --{boundary} in it")
        pos = found + 2 + len(delimiter)
    fields: Dict[str, str] = {}
    files: Dict[str, UploadedFile] = {}
    number = 0
    separator = b"\r\n" + delimiter
    while True:
        if body.startswith(b"--", pos):
            return FormBody(fields, files)
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise FormError(400, f"body: no line break after the multipart delimiter --{boundary}")
        start = line_end + 2
        end = body.find(separator, start)
        if end < 0:
            raise FormError(400, f"body: the closing delimiter --{boundary}-- is missing")
        number += 1
        if body.startswith(b"\r\n", start):
            headers_end, content_start = start, start + 2
        else:
            headers_end = body.find(b"\r\n\r\n", start, end)
            if headers_end < 0:
                raise FormError(400, f"body: part {number} has no blank line after its headers")
            content_start = headers_end + 4
        headers = _part_headers(body[start:headers_end], number) if headers_end > start else {}
        name, filename = _disposition(headers, number)
        content = _content(body[content_start:end], headers, name)
        content_type = headers.get("content-type")
        if filename is not None:
            if name not in files:
                files[name] = UploadedFile(filename, content_type or DEFAULT_FILE_TYPE, content)
        elif name not in fields:
            media = parse_media_type(content_type) if content_type is not None else None
            if media is not None and media.type.startswith("multipart/"):
                raise FormError(400, f"{name}: a nested multipart part is not supported")
            charset = media.params.get("charset", "utf-8") if media is not None else "utf-8"
            fields[name] = _text(content, charset, name)
        pos = end + len(separator)


def parse_urlencoded(body: bytes, charset: str) -> FormBody:
    """An application/x-www-form-urlencoded body; blank values kept, the first of a name wins."""
    try:
        pairs: List[Tuple[str, str]] = parse_qsl(
            body.rstrip().decode(charset), keep_blank_values=True, encoding=charset
        )
    except LookupError:
        raise FormError(400, f"Content-Type: unknown charset {charset!r}") from None
    except UnicodeDecodeError:
        raise FormError(400, f"body: not valid {charset} text") from None
    fields: Dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return FormBody(fields, {})


async def read_form(request: web.Request, media: MediaType) -> FormBody:
    """Read the request's body as the form `media` (multipart or urlencoded) says.

    Raises FormError: 413 when the body is larger than the application accepts
    (before reading, when Content-Length says so), 400 when it is malformed.
    """
    boundary = media.params.get("boundary", "")
    if media.type == MULTIPART and not (boundary and boundary.isascii()):
        raise FormError(400, "Content-Type: multipart/form-data needs an ASCII boundary parameter")
    limit = request.client_max_size
    length = request.content_length
    if limit and length is not None and length >= limit:
        raise FormError(413, "body: larger than this sandbox accepts")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise FormError(413, "body: larger than this sandbox accepts") from None
    if media.type == MULTIPART:
        return parse_multipart(body, boundary)
    return parse_urlencoded(body, media.params.get("charset", "utf-8"))
