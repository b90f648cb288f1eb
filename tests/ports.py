"""Loopback ports for the servers the tests start by port number (gateways, nginx, PostgreSQL).

Not ``bind(("127.0.0.1", 0))``: the kernel hands out such a port from its ephemeral range
(``ip_local_port_range``, 32768-60999 by default), and once the probe socket is closed it may
hand the same port to any outgoing connection (a database connection of this or another test
process) before the server binds it, which then fails with "Address already in use". Ports
below that range are never used for outgoing connections. Each pytest-xdist worker takes its
own block of them, and walks through it from a random start (so that two test runs on one
machine seldom meet), skipping any port that cannot be bound right now.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

FIRST = 20000  # well below the ephemeral range
BLOCK = 1000  # ports per worker
BLOCKS = 12  # 20000-31999


def _block_start() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1" ... under xdist
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    return FIRST + (index % BLOCKS) * BLOCK


_START = _block_start()
_offsets = itertools.count(random.randrange(BLOCK))


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port nothing listens on right now, and that no other worker hands out."""
    for _ in range(BLOCK):
        port = _START + next(_offsets) % BLOCK
        if _bindable(port):
            return port
    raise AssertionError(f"no free port in {_START}-{_START + BLOCK - 1}")
