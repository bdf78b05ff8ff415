"""The connector's HTTP routes under /webhooks/omnidesk.

- ``POST /hook/<token>/<hookpoint>``: Omnidesk's four hookpoints; the token is
  the chat's own (``settings.hookpoint_token``), checked against the sessionID.
- ``POST /upload``, ``POST /event`` and the socket.io ``customer_event``: the
  customer's file and typing/widget events while with an agent, served by
  ``CustomerRoutes`` (customer_routes.py).
- ``GET /files/<token>/<name>``: the agent's files, as linked to the customer.
- ``GET /``: ``{"status": "ok"}`` whenever the process serves (as before the probes).
- ``GET /health/live`` and ``GET /health/ready``: the liveness and readiness
  probes, answered by ``Health`` (health.py).
- ``GET /metrics``: the Prometheus metrics, when ``metrics_enabled`` (docs/metrics.md).

Each route reads its body under its own cap, hands typed values to the relay
and answers from one table (``answer_for``, edge.py): what went wrong decides
the status, never a 500. docs/channel.md and docs/security.md describe them.
"""

import hmac
import logging
import mimetypes
import re
from typing import Any, Callable, Optional

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.omnidesk import metrics, rules
from connectors.omnidesk.channel.customer_routes import CustomerRoutes
from connectors.omnidesk.channel.edge import (
    MESSAGE_BODY_BYTES,
    MULTIPART_OVERHEAD_BYTES,
    SMALL_BODY_BYTES,
    Answers,
    ChannelStarting,
    answer_for,
    at_the_edge,
    error_response,
    read_fields,
)
from connectors.omnidesk.channel.health import Health
from connectors.omnidesk.channel.hookpoints import (
    HookpointInputError,
    UploadedFile,
    parse_end,
    parse_message,
    parse_typing,
    parse_upload,
    session_id_of,
)
from connectors.omnidesk.channel.relay import Relay
from connectors.omnidesk.channel.switchboard import NotInRelay
from connectors.omnidesk.settings import HOOKPOINT_TOKEN_LENGTH, OmnideskSettings

logger = logging.getLogger(__name__)

_TOKEN_SHAPE = re.compile(f"[0-9a-f]{{{HOOKPOINT_TOKEN_LENGTH}}}")
# Images shown in the customer's page; any other type (SVG among them) is a download.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


# A probe's answer is about this moment: no proxy keeps it.
_NOT_CACHED = {"Cache-Control": "no-store"}

HOOKPOINT_ANSWERS = Answers(not_in_relay="sessionID: no open chat with this session id")


class _Forged:
    """Set by a hookpoint call refused for its token: the forged-call counter's case."""

    refused = False


class Routes:
    """The connector's routes; ``relay`` answers None until the channel has started."""

    def __init__(
        self,
        settings: OmnideskSettings,
        relay: Callable[[], Optional[Relay]],
        health: Optional[Health] = None,
    ) -> None:
        self.settings = settings
        self._relay = relay
        self.probes = health if health is not None else Health(settings)
        self.customer = CustomerRoutes(settings, self.relay)

    def relay(self) -> Relay:
        relay = self._relay()
        if relay is None:
            raise ChannelStarting()
        return relay

    def add_to(self, blueprint: Blueprint) -> None:
        # Sanic marks its handlers with attributes, which bound methods cannot take,
        # so each route is a plain function; its decorators are untyped, hence Any.
        routes: Any = blueprint

        async def health(request: Request) -> HTTPResponse:
            return await self.health(request)

        async def live(request: Request) -> HTTPResponse:
            return await self.live(request)

        async def ready(request: Request) -> HTTPResponse:
            return await self.ready(request)

        async def hook(request: Request, token: str, hookpoint: str) -> HTTPResponse:
            return await self.hookpoint(request, token, hookpoint)

        async def upload(request: Request) -> HTTPResponse:
            return await self.customer.customer_upload(request)

        async def event(request: Request) -> HTTPResponse:
            return await self.customer.customer_event(request)

        async def files(request: Request, token: str, filename: str) -> HTTPResponse:
            return await self.serve_file(request, token, filename)

        async def metrics_page(request: Request) -> HTTPResponse:
            return await self.metrics_page(request)

        # strict_slashes: a path is served as written, ".../endSession/" is a 404.
        routes.add_route(health, "/", methods=["GET"], name="omnidesk_health")
        for probe, path, name in (
            (live, "/health/live", "omnidesk_live"),
            (ready, "/health/ready", "omnidesk_ready"),
        ):
            routes.add_route(probe, path, methods=["GET"], name=name, strict_slashes=True)
        # The posts are streamed: each reads its body itself, under its own cap (edge.py).
        for handler, path, name in (
            (hook, "/hook/<token:str>/<hookpoint:str>", "omnidesk_hook"),
            (upload, "/upload", "omnidesk_upload"),
            (event, "/event", "omnidesk_event"),
        ):
            routes.add_route(
                handler, path, methods=["POST"], stream=True, name=name, strict_slashes=True
            )
        routes.add_route(
            files,
            "/files/<token:str>/<filename:str>",
            methods=["GET"],
            name="omnidesk_files",
            strict_slashes=True,
        )
        routes.add_route(
            metrics_page, "/metrics", methods=["GET"], name="omnidesk_metrics", strict_slashes=True
        )

    def _check_agent_file_type(self, upload: UploadedFile) -> None:
        """An agent's file goes to the customer only if its type is allowed, as a customer's is.

        Omnidesk may label a file application/octet-stream; its name then says
        what it is.
        """
        kind = upload.content_type.split(";", 1)[0].strip().lower()
        if kind in ("", "application/octet-stream"):
            kind = mimetypes.guess_type(upload.filename)[0] or kind or "application/octet-stream"
        at_the_edge(rules.check_upload_type, kind, self.settings.allowed_upload_types)

    # -- the routes --------------------------------------------------------------------

    async def health(self, _: Request) -> HTTPResponse:
        return response.json({"status": "ok"})

    async def live(self, _: Request) -> HTTPResponse:
        status, body = self.probes.liveness()
        return response.json(body, status=status, headers=_NOT_CACHED)

    async def ready(self, _: Request) -> HTTPResponse:
        status, body = await self.probes.readiness()
        return response.json(body, status=status, headers=_NOT_CACHED)

    async def hookpoint(self, request: Request, token: str, hookpoint: str) -> HTTPResponse:
        """Answer one hookpoint call; every answer is counted, forged tokens apart."""
        forged = _Forged()
        try:
            answer = await self._hookpoint(request, token, hookpoint, forged)
        except Exception:
            metrics.hookpoint_answer(hookpoint, 500)
            raise
        metrics.hookpoint_answer(hookpoint, answer.status, forged=forged.refused)
        return answer

    async def _hookpoint(
        self, request: Request, token: str, hookpoint: str, forged: "_Forged"
    ) -> HTTPResponse:
        if not _TOKEN_SHAPE.fullmatch(token):
            logger.warning("Hookpoint call with a malformed token refused (404).")
            forged.refused = True
            return error_response(404, "not found")
        if hookpoint not in rules.HOOKPOINT_NAMES:
            return error_response(404, "not found")
        try:
            relay = self.relay()
            if hookpoint == "uploadForCustomer":
                limit = self.settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
            elif hookpoint == "messageForCustomer":
                limit = MESSAGE_BODY_BYTES
            else:
                limit = SMALL_BODY_BYTES
            fields = await read_fields(request, limit)
            # The token opens one chat: the one whose id it was derived from.
            expected = self.settings.hookpoint_token(session_id_of(fields))
            if not hmac.compare_digest(token.encode("ascii"), expected.encode("ascii")):
                logger.warning(
                    "Hookpoint %s call with a token not of its chat refused (404).", hookpoint
                )
                forged.refused = True
                return error_response(404, "not found")
            # An agent event is answered ok once it is in the customer's outbox;
            # the outbox delivers it when the customer's channel can take it.
            if hookpoint == "messageForCustomer":
                await relay.delivery.message(parse_message(fields))
            elif hookpoint == "uploadForCustomer":
                upload = parse_upload(fields)
                at_the_edge(
                    rules.check_upload_size,
                    len(upload.file.content),
                    self.settings.max_upload_bytes,
                )
                self._check_agent_file_type(upload.file)
                await relay.delivery.upload(upload)
            elif hookpoint == "typingIndicatorForCustomer":
                await relay.delivery.typing(parse_typing(fields))
            else:
                await relay.agent_end(parse_end(fields))
        except Exception as error:
            answer = answer_for(error, HOOKPOINT_ANSWERS)
            if answer is None:
                raise
            status, message = answer
            if isinstance(error, NotInRelay):
                logger.info(
                    "Hookpoint %s for chat %s refused: not with an agent now (404).",
                    hookpoint,
                    error.args[0] if error.args else "?",
                )
            elif isinstance(error, HookpointInputError):
                logger.info("Hookpoint %s refused (%d): %s", hookpoint, status, message)
            return error_response(status, message)
        return response.text("ok")

    async def metrics_page(self, _: Request) -> HTTPResponse:
        """The Prometheus text format; open handoffs and waiting deliveries counted now.

        404 unless ``metrics_enabled``: the route is always there, so its path is
        refused the same way whether the metrics are off or the path is wrong.
        """
        if not self.settings.metrics_enabled:
            return error_response(404, "not found")
        relay = self._relay()
        if relay is not None:
            await metrics.ScrapeSources(
                relay.switchboard.count_open, relay.delivery.outbox.store.count_waiting
            ).refresh()
        state = self.probes.state
        metrics.set_health(state.switchboard_ok, state.omnidesk_ok)
        body, content_type = metrics.render()
        return response.raw(body, content_type=content_type)

    async def serve_file(self, _: Request, token: str, filename: str) -> HTTPResponse:
        relay = self._relay()
        if relay is None:
            return error_response(404, "not found")
        stored = await relay.delivery.files.lookup(token, filename)
        if stored is None:
            return error_response(404, "not found")
        headers = {
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
            "Content-Security-Policy": "default-src 'none'",
        }
        if stored.content_type.split(";", 1)[0].strip().lower() not in INLINE_IMAGE_TYPES:
            # SVG is an image that can carry script: it is a download, like HTML.
            headers["Content-Disposition"] = f'attachment; filename="{stored.filename}"'
        return await response.file(stored.path, mime_type=stored.content_type, headers=headers)

    def on_socketio(self, sio: Any, namespace: Optional[str], session_persistence: bool) -> None:
        """Serve the ``customer_event`` socket.io event on the wrapped socket.io server."""
        self.customer.on_socketio(sio, namespace, session_persistence)
