"""Files an agent sends: stored on disk, served back under an unguessable URL.

Each file gets a random token (32 bytes of entropy, URL-safe); the URL is
``{public_url}{prefix}/files/{token}/{safe name}``. Content and a small JSON
description live side by side in the files directory, so a shared directory
serves every Rasa instance and survives a restart. Without a directory a
private temporary one is used and removed on shutdown.
"""

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import quote

from connectors.omnidesk import rules
from connectors.omnidesk.channel.hookpoints import UploadedFile

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{32,64}$")

T = TypeVar("T")


class FileTooLarge(rules.FieldRuleError):
    """An agent file over ``max_bytes``: ``rules.FieldRuleError`` with status 413."""


@dataclass(frozen=True)
class StoredFile:
    token: str
    filename: str
    content_type: str
    size: int
    path: str


class AgentFileStore:
    def __init__(self, directory: Optional[str], max_bytes: int, base_url: str) -> None:
        self._owned = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="omnidesk-files-")
        os.makedirs(self.directory, exist_ok=True)
        self.max_bytes = max_bytes
        self.base_url = base_url.rstrip("/")

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, partial(function, *args))

    async def store(self, upload: UploadedFile) -> StoredFile:
        try:
            rules.check_upload_size(len(upload.content), self.max_bytes)
        except rules.FieldRuleError as error:
            raise FileTooLarge(error.field, error.rule, error.status) from None
        token = secrets.token_urlsafe(32)
        stored = StoredFile(
            token=token,
            filename=rules.safe_filename(upload.filename),
            content_type=upload.content_type or "application/octet-stream",
            size=len(upload.content),
            path=os.path.join(self.directory, token),
        )
        description = json.dumps(
            {"filename": stored.filename, "content_type": stored.content_type, "size": stored.size}
        )
        await self._run(self._write, stored.path, upload.content, description)
        logger.debug("Stored an agent file of %d bytes.", stored.size)
        return stored

    @staticmethod
    def _write(path: str, content: bytes, description: str) -> None:
        with open(path, "wb") as handle:
            handle.write(content)
        with open(path + ".json", "w", encoding="utf-8") as handle:
            handle.write(description)

    def url_for(self, stored: StoredFile) -> str:
        return f"{self.base_url}/{stored.token}/{quote(stored.filename)}"

    async def lookup(self, token: str, filename: str) -> Optional[StoredFile]:
        if not _TOKEN.fullmatch(token):
            return None
        path = os.path.join(self.directory, token)
        try:
            raw = await self._run(self._read_text, path + ".json")
            described = json.loads(raw)
        except (OSError, ValueError):
            return None
        if described.get("filename") != filename:
            return None
        return StoredFile(
            token=token,
            filename=str(described["filename"]),
            content_type=str(described.get("content_type") or "application/octet-stream"),
            size=int(described.get("size") or 0),
            path=path,
        )

    async def remove_older_than(self, seconds: float, now: Optional[float] = None) -> int:
        """Remove the files stored more than ``seconds`` ago; how many were removed."""
        at = time.time() if now is None else now
        return await self._run(self._remove_older_than, at - seconds)

    def _remove_older_than(self, cutoff: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except OSError as error:
            logger.error("Could not list the files directory %s: %s", self.directory, error)
            return 0
        for entry in entries:
            # A file and its description go together; the description is the clock.
            if not entry.name.endswith(".json") or not _TOKEN.fullmatch(entry.name[:-5]):
                continue
            try:
                if entry.stat().st_mtime >= cutoff:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path[:-5])
                os.remove(entry.path)
                removed += 1
            except FileNotFoundError:
                continue  # another instance removed it first
            except OSError as error:
                logger.error("Could not remove the agent file %s: %s", entry.name[:-5], error)
        return removed

    @staticmethod
    def _read_text(path: str) -> str:
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)
