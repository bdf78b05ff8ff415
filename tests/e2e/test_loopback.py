"""Every server the product starts for a developer listens on loopback only."""

from pathlib import Path
from typing import List, Tuple

import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

LISTEN = "0A"
LOOPBACK = "0100007F"  # 127.0.0.1, little-endian hex as the kernel writes it


def listening_addresses(port: int) -> List[Tuple[str, int]]:
    """(address in /proc/net/tcp's hex, port) of every IPv4/IPv6 socket listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == LISTEN and int(hex_port, 16) == port:
                found.append((address, port))
    return found


def test_rasa_the_action_server_and_the_sandbox_listen_on_127_0_0_1_only(stack: Stack) -> None:
    for name, port in (
        ("rasa", stack.rasa_port),
        ("action server", stack.actions_port),
        ("sandbox", stack.sandbox_port),
    ):
        addresses = listening_addresses(port)
        assert addresses, f"{name}: nothing listens on {port}"
        assert all(address == LOOPBACK for address, _ in addresses), (name, addresses)
