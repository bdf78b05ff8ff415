"""Typed access to what the sandbox keeps on its aiohttp Application."""

import asyncio
from typing import Any, Set, cast

from aiohttp import web

from omnidesk_sandbox.agent import Agent
from omnidesk_sandbox.state import SandboxState


def _key(name: str, kind: type) -> Any:
    # web.AppKey exists from aiohttp 3.9 on; plain strings serve older versions.
    app_key = getattr(web, "AppKey", None)
    return app_key(name, kind) if app_key is not None else f"omnidesk_sandbox.{name}"


STATE_KEY: Any = _key("state", SandboxState)
AGENT_KEY: Any = _key("agent", Agent)
STOPPING_KEY: Any = _key("stopping", asyncio.Event)
STREAMS_KEY: Any = _key("streams", set)


def state_of(app: web.Application) -> SandboxState:
    return cast(SandboxState, app[STATE_KEY])


def agent_of(app: web.Application) -> Agent:
    return cast(Agent, app[AGENT_KEY])


def stopping_of(app: web.Application) -> asyncio.Event:
    return cast(asyncio.Event, app[STOPPING_KEY])


def streams_of(app: web.Application) -> "Set[asyncio.Task[Any]]":
    """The agent page's open event streams, so shutdown can let each finish."""
    return cast("Set[asyncio.Task[Any]]", app[STREAMS_KEY])
