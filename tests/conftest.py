"""Fixtures shared by several test files."""

import socket

import pytest


@pytest.fixture
def unused_port() -> int:
    """A localhost TCP port that nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
