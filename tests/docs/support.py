"""Reading the docs: their files, fenced blocks, links and inline code."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def doc_files() -> List[Path]:
    """README.md and every markdown page under docs/."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Block:
    path: Path
    language: str
    text: str

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)} ({self.language} block starting {self.text[:60]!r})"


_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str = "") -> List[Block]:
    """Every fenced block of the docs, or only those of ``language``."""
    found: List[Block] = []
    for path in doc_files():
        for match in _FENCE.finditer(read(path)):
            if not language or match.group(1) == language:
                found.append(Block(path, match.group(1), match.group(2)))
    return found


def all_text() -> str:
    return "\n".join(read(path) for path in doc_files())


def normalised(text: str) -> str:
    """Whitespace collapsed, so a message wrapped in the docs still matches."""
    return " ".join(text.split())
