"""The floor: a bare two-hop relay with no logic in it.

hop1 takes a customer turn as JSON and posts it on as a multipart form with
aiohttp; hop2 answers like Omnidesk. Both are plain Sanic handlers, each in its
own process, as Rasa's server and Omnidesk would be. Whatever the connector adds
on top of this is the cost of its own logic.

With ``--redis URL`` hop1 also makes one Redis round trip per turn before it
posts on (a SET of the turn's number under the sender's key, with redis.asyncio
as the connector uses it): the floor of a relay that keeps its state in Redis,
so the Redis switchboard's rows can be read against "the floor plus one round
trip" measured in the same run.

    python bench/floor_servers.py hop2 --port 0
    python bench/floor_servers.py hop1 --port 0 --next http://127.0.0.1:PORT [--redis URL]
"""

import argparse
import logging
import socket
from typing import Any, Optional

import aiohttp
from sanic import Sanic, response
from sanic.request import Request

TEXT_PART = "text/plain; charset=utf-8"
# As long as the connector's chatServer: {public_url}/webhooks/omnidesk/hook/{40-char secret}.
CHAT_SERVER = "http://127.0.0.1:5005/webhooks/omnidesk/hook/" + "s" * 40


def build_hop1(next_url: str, redis_url: Optional[str] = None) -> Sanic:
    app = Sanic("floor_hop1_redis" if redis_url else "floor_hop1")

    async def open_session(app: Sanic, _: Any) -> None:
        app.ctx.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10, connect=3),
            connector=aiohttp.TCPConnector(limit=0),
        )
        app.ctx.redis = None
        if redis_url:
            import redis.asyncio as aioredis

            # As the connector opens its own: a pool, no limit, bounded waits.
            app.ctx.redis = aioredis.from_url(
                redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
            )

    async def close_session(app: Sanic, _: Any) -> None:
        await app.ctx.session.close()
        if app.ctx.redis is not None:
            await app.ctx.redis.close()

    app.register_listener(open_session, "before_server_start")
    app.register_listener(close_session, "after_server_stop")

    @app.post("/turn")
    async def turn(request: Request) -> response.HTTPResponse:
        body = request.json
        if app.ctx.redis is not None:
            await app.ctx.redis.set(f"floor:{body['sender']}", body.get("number", 1))
        # The same six fields the connector sends, as multipart/form-data: aiohttp sends
        # a form without files urlencoded unless its parts carry a content type.
        form = aiohttp.FormData()
        for name, value in (
            ("messageNumber", str(body.get("number", 1))),
            ("message", body["message"]),
            ("channelID", "8"),
            ("chatAccountToken", "sandboxAccountToken1"),
            ("chatSessionID", body["sender"]),
            ("chatServer", CHAT_SERVER),
        ):
            form.add_field(name, value, content_type=TEXT_PART)
        async with app.ctx.session.post(
            next_url + "/api/v2/chat/notifyUserNewChatMessage", data=form
        ) as answer:
            await answer.read()
            if answer.status != 200:
                return response.text("failed", status=502)
        return response.text("success")

    return app


def build_hop2() -> Sanic:
    app = Sanic("floor_hop2")

    @app.post("/api/v2/chat/notifyUserNewChatMessage")
    async def message(request: Request) -> response.HTTPResponse:
        if request.content_type.split(";")[0] != "multipart/form-data":
            return response.json({"status": "error", "message": "Content-Type"}, status=400)
        if not request.form.get("message"):
            return response.json({"status": "error", "message": "message: required"}, status=400)
        return response.json({"type": "result", "message": "Message sent.", "ticketID": 1})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("hop", choices=["hop1", "hop2"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--next", default="")
    parser.add_argument("--redis", default="", help="hop1: one Redis round trip per turn here")
    args = parser.parse_args()
    logging.getLogger("sanic").setLevel(logging.WARNING)
    app = build_hop1(args.next, args.redis or None) if args.hop == "hop1" else build_hop2()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]

    async def announce(_: Sanic, __: Any) -> None:
        print(f"ready port={port}", flush=True)

    app.register_listener(announce, "after_server_start")

    app.run(sock=sock, access_log=False, debug=False, workers=1)


if __name__ == "__main__":
    main()
