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
from discord.ext.listening.testing.redis_server import LocalRedisServer

settings.register_profile("gate", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile("explore" if os.environ.get("LISTENING_SOAK") else "gate")


@pytest.fixture(scope="session")
def pool() -> Iterator[listening.AudioProcessPool]:
    with listening.AudioProcessPool(2) as p:
        yield p


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisServer]:
    server = LocalRedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedisServer) -> str:
    return redis_server.url
