"""The sandbox's settings: tokens, availability and the caps that keep its memory bounded."""

import re
from dataclasses import dataclass
from typing import Optional

from connectors.omnidesk import rules

# Documented local values, not secrets: the sandbox runs with no options.
DEFAULT_CHAT_ACCOUNT_TOKEN = "sandboxAccountToken1"  # noqa: S105
DEFAULT_CHAT_SERVER_TOKEN = "sandboxServerToken1"  # noqa: S105

_SERVER_TOKEN = re.compile(r"^[a-zA-Z0-9]+$")


class SandboxConfigError(ValueError):
    """A sandbox setting is invalid; the message names it and shows a valid value."""


@dataclass(frozen=True)
class SandboxConfig:
    chat_account_token: str = DEFAULT_CHAT_ACCOUNT_TOKEN
    chat_server_token: str = DEFAULT_CHAT_SERVER_TOKEN
    api_key: Optional[str] = None
    agents_online: bool = True
    max_chats: int = 500
    max_messages_per_chat: int = 1000
    max_file_bytes: int = 10 * 1024 * 1024
    max_calls: int = 2000
    max_tickets: int = 1000
    hookpoint_timeout: float = 10.0
    default_hang_seconds: float = 30.0
    agent_name: str = "Sandbox Agent"
    agent_picture: str = ""

    def __post_init__(self) -> None:
        try:
            rules.CHAT_ACCOUNT_TOKEN.check(self.chat_account_token)
        except rules.FieldRuleError as error:
            raise SandboxConfigError(
                f"chat_account_token: {error.rule}; e.g. {DEFAULT_CHAT_ACCOUNT_TOKEN}"
            ) from error
        if not _SERVER_TOKEN.fullmatch(self.chat_server_token):
            raise SandboxConfigError(
                "chat_server_token: must be letters and digits only, "
                f"e.g. {DEFAULT_CHAT_SERVER_TOKEN}"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise SandboxConfigError("api_key: must be non-empty text, or None for no API key")
        for name in (
            "max_chats",
            "max_messages_per_chat",
            "max_file_bytes",
            "max_calls",
            "max_tickets",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SandboxConfigError(f"{name}: must be a positive integer, got {value!r}")
        if not 0 < self.hookpoint_timeout <= 300:
            raise SandboxConfigError(
                f"hookpoint_timeout: must be between 0 and 300 seconds, got {self.hookpoint_timeout}"
            )
        if not 0 < self.default_hang_seconds <= 3600:
            raise SandboxConfigError(
                "default_hang_seconds: must be between 0 and 3600 seconds, "
                f"got {self.default_hang_seconds}"
            )
