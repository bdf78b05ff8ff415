"""`python -m omnidesk_sandbox` (or `omnidesk-sandbox`): run the local Omnidesk until stopped."""

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import List, Optional

from omnidesk_sandbox.config import (
    DEFAULT_CHAT_ACCOUNT_TOKEN,
    DEFAULT_CHAT_SERVER_TOKEN,
    SandboxConfig,
    SandboxConfigError,
)
from omnidesk_sandbox.testing import start

logger = logging.getLogger(__name__)

READY_PREFIX = "OMNIDESK_SANDBOX_READY "


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omnidesk-sandbox",
        description="A local Omnidesk: the chat API, an agent page and a control API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5081, help="port, 0 for any free one")
    parser.add_argument("--chat-account-token", default=DEFAULT_CHAT_ACCOUNT_TOKEN)
    parser.add_argument("--chat-server-token", default=DEFAULT_CHAT_SERVER_TOKEN)
    parser.add_argument("--api-key", default=None, help="require ?apiKey= on /api/v2 calls")
    parser.add_argument("--agents", choices=("online", "offline"), default="online")
    parser.add_argument("--max-chats", type=int, default=500)
    parser.add_argument("--max-file-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--hookpoint-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def serve(config: SandboxConfig, host: str, port: int) -> None:
    runner, url = await start(config, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"Omnidesk sandbox API base:  {url}  (OMNIDESK_API_URL, OMNIDESK_CHAT_CONFIG_URL)")
    print(f"Agent page:                 {url}/agent")
    print(f"Control API:                {url}/_sandbox/")
    ready = {"url": url, "port": int(url.rsplit(":", 1)[1])}
    print(READY_PREFIX + json.dumps(ready), flush=True)
    try:
        await stop.wait()
    finally:
        logger.info("stopping")
        await runner.cleanup()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = SandboxConfig(
            chat_account_token=args.chat_account_token,
            chat_server_token=args.chat_server_token,
            api_key=args.api_key,
            agents_online=args.agents == "online",
            max_chats=args.max_chats,
            max_file_bytes=args.max_file_bytes,
            hookpoint_timeout=args.hookpoint_timeout,
        )
    except SandboxConfigError as error:
        print(f"omnidesk-sandbox: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as error:
        print(
            f"omnidesk-sandbox: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
