"""Fixtures of the sandbox's tests; the helpers behind them live in support.py."""

from .support import http, receiver, sandbox

__all__ = ["http", "receiver", "sandbox"]
