"""A local Omnidesk: the chat API checked as strictly as the real one, an agent page, faults.

Start it with `python -m omnidesk_sandbox`; in Python tests use
`omnidesk_sandbox.testing.running_sandbox`. See docs/sandbox.md.
"""

# Started from a bot's folder, the bot's own connectors/ package would hide
# connectors.omnidesk; rasa_omnidesk joins it (it imports nothing else).
import rasa_omnidesk  # noqa: F401
from omnidesk_sandbox.config import SandboxConfig, SandboxConfigError
from omnidesk_sandbox.state import HookpointResult

__all__ = ["HookpointResult", "SandboxConfig", "SandboxConfigError"]
