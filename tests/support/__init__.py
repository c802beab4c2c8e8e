"""Test support: throwaway servers (PostgreSQL, Mosquitto), free ports, the one way to wait."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nothing listens on right now (the OS picks it).

    Another process may take it before the caller binds it: servers started on such a
    port retry with a new one when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
