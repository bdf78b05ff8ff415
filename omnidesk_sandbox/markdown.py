"""A tiny, safe markdown renderer for chatbot transcripts shown on the agent page.

Everything is HTML-escaped first; only then are a few markdown forms turned into
tags (headings, bold, italics, inline code, lists, links to http/https/mailto).
No raw HTML from the input ever reaches the page. A backslash before ASCII
punctuation shows that character literally, as in CommonMark: the connector's
transcript escapes what the customer typed that way.
"""

import html
import re
from typing import List

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])[*_](?![\s*_])(.+?)(?<![\s*_])[*_](?![\w*])")
_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(((?:https?://|mailto:)[^\s()]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_LIST_ITEM = re.compile(r"^\s*[-*+]\s+(.*)$")
_BACKSLASH_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_LITERAL = re.compile("\x01(\\d+)\x01")


def _inline(escaped: str) -> str:
    """Inline forms on text that is already HTML-escaped."""
    codes: List[str] = []

    def keep_code(match: "re.Match[str]") -> str:
        codes.append(f"<code>{match.group(1)}</code>")
        return f"\x00{len(codes) - 1}\x00"

    text = _CODE.sub(keep_code, escaped)
    text = _LINK.sub(
        lambda m: (
            f'<a href="{m.group(2)}" rel="noopener noreferrer" target="_blank">{m.group(1)}</a>'
        ),
        text,
    )
    text = _BOLD.sub(r"<strong>\1</strong>", text)
    text = _ITALIC.sub(r"<em>\1</em>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], text)


def render(markdown: str) -> str:
    """Render markdown to safe HTML: escape first, then a small set of forms."""
    literals: List[str] = []

    def keep_literal(match: "re.Match[str]") -> str:
        literals.append(html.escape(match.group(1), quote=True))
        return f"\x01{len(literals) - 1}\x01"

    source = _BACKSLASH_ESCAPE.sub(keep_literal, markdown.replace("\x00", "").replace("\x01", ""))
    escaped = html.escape(source, quote=True)
    out: List[str] = []
    paragraph: List[str] = []
    items: List[str] = []

    def flush() -> None:
        if paragraph:
            out.append("<p>" + "<br>".join(_inline(line) for line in paragraph) + "</p>")
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in escaped.splitlines():
        heading = _HEADING.match(line)
        item = _LIST_ITEM.match(line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif item:
            if paragraph:
                flush()
            items.append(item.group(1))
        else:
            if items:
                flush()
            paragraph.append(line)
    flush()
    return _LITERAL.sub(lambda m: literals[int(m.group(1))], "".join(out))
