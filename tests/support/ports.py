"""Ports for tests of a dependency that is down."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A port nothing listens on, kept bound (not listening) while in use: released, it could be handed to the
    next server the test starts on port 0, which would then answer for the dependency that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
