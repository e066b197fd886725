"""Shared fixtures: one decode pool per test session (worker start-up is the slow part)."""

from __future__ import annotations

from typing import Iterator

import pytest

from discord.ext import listening


@pytest.fixture(scope="session")
def pool() -> Iterator[listening.AudioProcessPool]:
    with listening.AudioProcessPool(2) as p:
        yield p
