"""The control API under /_sandbox/: JSON for tests, scripts and the agent page."""

import base64
import binascii
import json
import re
from typing import Any, Dict

from aiohttp import web

from omnidesk_sandbox.agent import AgentActionError
from omnidesk_sandbox.faults import FaultSpecError, parse_fault
from omnidesk_sandbox.keys import agent_of, state_of
from omnidesk_sandbox.state import HookpointResult, UnknownChat

_PICTURE = re.compile(r"^(https?://\S+)?$")


def _http_error(status: int, message: str) -> web.HTTPException:
    kinds = {
        400: web.HTTPBadRequest,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
    }
    kind = kinds.get(status, web.HTTPBadRequest)
    body = json.dumps({"error": message})
    return kind(text=body, content_type="application/json")


async def _json_body(request: web.Request) -> Dict[str, Any]:
    if not request.body_exists:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise _http_error(400, f"body: must be a JSON object ({exc})") from None
    if not isinstance(body, dict):
        raise _http_error(400, "body: must be a JSON object")
    return body


def _text(body: Dict[str, Any], name: str, required: bool = True) -> Any:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _http_error(400, f"{name}: must be text")
    return value


def _hookpoint_answer(result: HookpointResult) -> web.Response:
    return web.json_response(result.to_json())


async def calls(request: web.Request) -> web.Response:
    state = state_of(request.app)
    endpoint = request.query.get("endpoint")
    found = [c.to_json() for c in state.calls if endpoint in (None, c.endpoint)]
    return web.json_response({"calls": found})


async def status(request: web.Request) -> web.Response:
    state = state_of(request.app)
    return web.json_response(
        {
            "agents_online": state.agents_online,
            "agent_name": state.agent_name,
            "agent_picture": state.agent_picture,
            "faults": [f.to_json() for f in state.faults.faults],
            "chats": len(state.chats),
            "chats_dropped": state.chats_dropped,
            "tickets": len(state.tickets),
            "calls": len(state.calls),
        }
    )


async def chats(request: web.Request) -> web.Response:
    state = state_of(request.app)
    return web.json_response({"chats": [state.chat_json(c) for c in state.chats.values()]})


async def chat(request: web.Request) -> web.Response:
    state = state_of(request.app)
    try:
        found = state.chat(request.match_info["chat_id"])
    except UnknownChat:
        raise _http_error(404, f"no chat {request.match_info['chat_id']!r}") from None
    return web.json_response(state.chat_json(found))


async def tickets(request: web.Request) -> web.Response:
    state = state_of(request.app)
    return web.json_response({"tickets": [t.to_json() for t in state.tickets.values()]})


async def attachment(request: web.Request) -> web.Response:
    state = state_of(request.app)
    try:
        found = state.attachment(int(request.match_info["attachment_id"]))
    except (LookupError, ValueError):
        raise _http_error(404, "no such attachment") from None
    safe_name = re.sub(r"[^A-Za-z0-9._ -]", "_", found.name) or "attachment"
    return web.Response(
        body=found.data,
        content_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{safe_name}"'},
    )


async def reply(request: web.Request) -> web.Response:
    body = await _json_body(request)
    try:
        result = await agent_of(request.app).reply(
            request.match_info["chat_id"],
            _text(body, "message"),
            name=_text(body, "name", required=False),
            picture=_text(body, "picture", required=False),
        )
    except AgentActionError as exc:
        raise _http_error(exc.status, str(exc)) from None
    return _hookpoint_answer(result)


async def typing(request: web.Request) -> web.Response:
    body = await _json_body(request)
    value = body.get("typing")
    if not isinstance(value, bool):
        raise _http_error(400, "typing: must be true or false")
    try:
        result = await agent_of(request.app).typing(request.match_info["chat_id"], value)
    except AgentActionError as exc:
        raise _http_error(exc.status, str(exc)) from None
    return _hookpoint_answer(result)


async def upload(request: web.Request) -> web.Response:
    if request.content_type == "multipart/form-data":
        form = await request.post()
        part = form.get("file")
        if not isinstance(part, web.FileField):
            raise _http_error(400, "file: a multipart file part named 'file' is required")
        filename, data = part.filename, part.file.read()
        content_type = part.content_type or "application/octet-stream"
    else:
        body = await _json_body(request)
        filename = _text(body, "filename")
        content_type = _text(body, "content_type", required=False) or "application/octet-stream"
        try:
            data = base64.b64decode(_text(body, "content_base64"), validate=True)
        except (binascii.Error, ValueError):
            raise _http_error(400, "content_base64: must be base64") from None
    try:
        result = await agent_of(request.app).upload(
            request.match_info["chat_id"], filename, data, content_type
        )
    except AgentActionError as exc:
        raise _http_error(exc.status, str(exc)) from None
    return _hookpoint_answer(result)


async def end(request: web.Request) -> web.Response:
    try:
        result = await agent_of(request.app).end(request.match_info["chat_id"])
    except AgentActionError as exc:
        raise _http_error(exc.status, str(exc)) from None
    return _hookpoint_answer(result)


async def agents(request: web.Request) -> web.Response:
    body = await _json_body(request)
    online = body.get("online")
    if not isinstance(online, bool):
        raise _http_error(400, "online: must be true or false")
    state_of(request.app).set_agents_online(online)
    return web.json_response({"agents_online": online})


async def agent_profile(request: web.Request) -> web.Response:
    body = await _json_body(request)
    name = _text(body, "name")
    picture = _text(body, "picture", required=False) or ""
    if not name.strip() or len(name) > 100:
        raise _http_error(400, "name: must be 1 to 100 characters")
    if not _PICTURE.fullmatch(picture):
        raise _http_error(400, "picture: must be empty or an http(s) URL")
    state_of(request.app).set_agent_profile(name, picture)
    return web.json_response({"name": name, "picture": picture})


async def reset(request: web.Request) -> web.Response:
    state_of(request.app).reset()
    return web.json_response({"reset": True})


async def add_fault(request: web.Request) -> web.Response:
    state = state_of(request.app)
    body = await _json_body(request)
    try:
        fault = parse_fault(body, state.config.default_hang_seconds)
    except FaultSpecError as exc:
        raise _http_error(400, str(exc)) from None
    state.faults.add(fault)
    return web.json_response({"faults": [f.to_json() for f in state.faults.faults]})


async def clear_faults(request: web.Request) -> web.Response:
    state_of(request.app).faults.clear()
    return web.json_response({"faults": []})


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": [f.to_json() for f in state_of(request.app).faults.faults]})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_sandbox/calls", calls)
    r.add_get("/_sandbox/status", status)
    r.add_get("/_sandbox/chats", chats)
    r.add_get("/_sandbox/chats/{chat_id}", chat)
    r.add_post("/_sandbox/chats/{chat_id}/reply", reply)
    r.add_post("/_sandbox/chats/{chat_id}/typing", typing)
    r.add_post("/_sandbox/chats/{chat_id}/upload", upload)
    r.add_post("/_sandbox/chats/{chat_id}/end", end)
    r.add_get("/_sandbox/tickets", tickets)
    r.add_get("/_sandbox/attachments/{attachment_id}", attachment)
    r.add_post("/_sandbox/agents", agents)
    r.add_post("/_sandbox/agent-profile", agent_profile)
    r.add_post("/_sandbox/reset", reset)
    r.add_post("/_sandbox/faults", add_fault)
    r.add_delete("/_sandbox/faults", clear_faults)
    r.add_get("/_sandbox/faults", list_faults)
