"""The agent's side of a chat: what the agent page and the control API ask for.

Checks the request (chat known, not ended, text given), sends it to the bot's
hookpoint through AgentDesk and records the action with the hookpoint's answer.
"""

from typing import Optional

from omnidesk_sandbox.hookpoints import AgentDesk
from omnidesk_sandbox.state import Chat, HookpointResult, SandboxState, UnknownChat


class AgentActionError(ValueError):
    """The agent's action cannot be sent; `status` is the HTTP status the control API answers."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class Agent:
    def __init__(self, state: SandboxState, desk: AgentDesk) -> None:
        self.state = state
        self.desk = desk

    def _open_chat(self, chat_session_id: str) -> Chat:
        try:
            chat = self.state.chat(chat_session_id)
        except UnknownChat:
            raise AgentActionError(404, f"no chat with chatSessionID {chat_session_id!r}") from None
        if chat.ended:
            raise AgentActionError(
                409, f"chat {chat_session_id} has ended ({chat.ended_by}); nothing can be sent"
            )
        return chat

    async def reply(
        self,
        chat_session_id: str,
        message: str,
        name: Optional[str] = None,
        picture: Optional[str] = None,
    ) -> HookpointResult:
        chat = self._open_chat(chat_session_id)
        if not message.strip():
            raise AgentActionError(400, "message: must not be empty")
        name = self.state.agent_name if name is None else name
        picture = self.state.agent_picture if picture is None else picture
        result = await self.desk.reply(chat, message, name, picture)
        fields = {
            "picture": picture,
            "name": name,
            "message": message,
            "sessionID": chat_session_id,
        }
        self.state.agent_action(chat, "reply", fields, result)
        return result

    async def typing(self, chat_session_id: str, typing: bool) -> HookpointResult:
        chat = self._open_chat(chat_session_id)
        result = await self.desk.typing(chat, typing)
        fields = {"Typing": "true" if typing else "false", "SessionID": chat_session_id}
        self.state.agent_action(chat, "typing", fields, result)
        return result

    async def upload(
        self, chat_session_id: str, filename: str, data: bytes, content_type: str
    ) -> HookpointResult:
        chat = self._open_chat(chat_session_id)
        if not filename or "/" in filename or "\\" in filename:
            raise AgentActionError(400, "filename: must be a plain file name such as photo.png")
        if not data:
            raise AgentActionError(400, "file: must not be empty")
        if len(data) > self.state.config.max_file_bytes:
            raise AgentActionError(
                400, f"file: must be at most {self.state.config.max_file_bytes} bytes"
            )
        result = await self.desk.upload(chat, filename, data, content_type)
        fields = {
            "file": f"{filename} ({content_type}, {len(data)} bytes)",
            "sessionID": chat_session_id,
        }
        self.state.agent_action(chat, "upload", fields, result)
        return result

    async def end(self, chat_session_id: str) -> HookpointResult:
        chat = self._open_chat(chat_session_id)
        result = await self.desk.end(chat)
        # The chat ends on the desk whatever the hookpoint answered, as in Omnidesk.
        self.state.agent_action(chat, "end", {"sessionID": chat_session_id}, result)
        return result
