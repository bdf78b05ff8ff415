"""Builds the sandbox's aiohttp application: the Omnidesk API, the control API, the agent page."""

import asyncio
import logging
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from omnidesk_sandbox import api, control, page
from omnidesk_sandbox.agent import Agent
from omnidesk_sandbox.config import SandboxConfig
from omnidesk_sandbox.hookpoints import AgentDesk
from omnidesk_sandbox.keys import AGENT_KEY, STATE_KEY, STOPPING_KEY, STREAMS_KEY, agent_of
from omnidesk_sandbox.state import SandboxState

logger = logging.getLogger(__name__)

# Room for form fields and multipart framing around the largest file allowed.
BODY_OVERHEAD_BYTES = 1024 * 1024


@web.middleware
async def close_without_answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A fault that answers nothing: close the connection and abandon the request."""
    try:
        return await handler(request)
    except api.NoAnswer:
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError() from None


def build_app(config: SandboxConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.max_file_bytes + BODY_OVERHEAD_BYTES,
        middlewares=[close_without_answer],
    )
    state = SandboxState(config)
    app[STATE_KEY] = state
    app[AGENT_KEY] = Agent(state, AgentDesk(config.hookpoint_timeout))
    app[STOPPING_KEY] = asyncio.Event()
    app[STREAMS_KEY] = set()
    api.add_routes(app)
    control.add_routes(app)
    page.add_routes(app)

    async def close_desk(app: web.Application) -> None:
        await agent_of(app).desk.close()

    cast(Any, app.on_cleanup).append(close_desk)
    return app
