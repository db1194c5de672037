"""Ports for tests."""

import socket


def free_port() -> int:
    """A port nothing listens on now (bound and released): for a server to start on, or to be refused by."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
