"""What the emulator's collaborators share: the calls, the bot's sessions, SSRCs, hooks.

The emulated guild has voice channels, each with a :class:`Call` (its DAVE group and the
bot's session in it); :class:`BotSessions` is the registry of the bot's voice sessions on
the server side. Both are plain records: :mod:`.sessions` changes them as the bot joins,
moves and leaves, the others read them. :class:`Ssrcs` hands out the SSRCs nobody uses
yet, and :class:`Hooks` is the emulator's lifecycle as its collaborators see it: is it
running, wake those waiting for a state change, run a background task.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .dave_server import DaveGroupServer
from .gateway import VoiceSession
from .sfu import SERVER_SSRC

__all__ = ("BotSessions", "Call", "EmulatorError", "Hooks", "Ssrcs", "check_snowflake")

_log = logging.getLogger(__name__)


class EmulatorError(RuntimeError):
    """The emulator was used in a way that cannot work (the message says what to do instead)."""


def check_snowflake(name: str, value: Any) -> int:
    """``value`` if it is a Discord id (a positive 64-bit int); ``ValueError`` naming ``name`` if not."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 64:
        raise ValueError(f"{name} must be a positive 64-bit integer id, got {value!r}")
    return value


@dataclass
class Call:
    """One voice channel's call: who is in it and its DAVE group."""

    channel_id: int
    dave: DaveGroupServer | None = None  # created when the first DAVE participant arrives
    session: VoiceSession | None = None  # the bot's session in this call
    armed_transitions: set[int] = field(default_factory=set)  # transition ids with a timeout task


@dataclass
class BotSessions:
    """The bot's voice sessions, as the server knows them."""

    #: Every session ever created, oldest first (tests inspect them).
    all: list[VoiceSession] = field(default_factory=list)
    #: The session the bot is in now (``None`` when it is not in voice).
    current: VoiceSession | None = None
    #: The channel the bot is in now.
    channel_id: int | None = None
    #: The bot's main gateway session id (the same for all its voice sessions).
    main_session_id: str = field(default_factory=lambda: secrets.token_hex(16))


class Ssrcs:
    """The SSRCs in use in the guild (members', the bot's sessions', the SFU's own).

    Parameters
    ----------
    rng: :class:`random.Random`
        Draws new ones (the emulator's seeded generator).
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[int] = {SERVER_SSRC}

    def new(self) -> int:
        """A random SSRC nobody uses yet, now taken."""
        while True:
            ssrc = self._rng.randrange(1, 1 << 32)
            if ssrc not in self._used:
                self._used.add(ssrc)
                return ssrc

    def claim(self, ssrc: int) -> int:
        """Take ``ssrc`` as asked for (``ValueError`` out of range, :class:`EmulatorError` if taken)."""
        if not 0 < ssrc < 1 << 32:
            raise ValueError(f"ssrc must be 1..2**32-1, got {ssrc!r}")
        if ssrc in self._used:
            raise EmulatorError(f"ssrc {ssrc} is already in use")
        self._used.add(ssrc)
        return ssrc


class Hooks:
    """The emulator's lifecycle, as its collaborators need it.

    :attr:`running` is true between the end of ``start()`` and ``close()``;
    :attr:`closed` from the start of ``close()`` on. :attr:`tasks` are the background
    tasks :meth:`spawn` started that have not finished; ``close()`` cancels them.
    """

    def __init__(self) -> None:
        self.running = False
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self._state_changed = asyncio.Event()

    def check_running(self) -> None:
        """Raise :class:`EmulatorError` unless the emulator runs."""
        if not self.running:
            raise EmulatorError("the emulator is not running: use `async with VoiceServerEmulator() as server:`")

    def notify(self) -> None:
        """Wake everyone waiting for a state change (:meth:`wait_until`)."""
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a background task of the emulator; a failure is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=f"voice-emulator-{name}")
        self.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                _log.error("emulator task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def stop(self) -> None:
        """Stop running: cancel the background tasks and wait (5 s at most) for them to end."""
        self.running = False
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)

    async def wait_until(self, predicate: Callable[[], object], *, timeout: float, what: str) -> None:
        """:meth:`.VoiceServerEmulator.wait_until`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            event = self._state_changed
            try:
                await asyncio.wait_for(event.wait(), min(remaining, 0.02))
            except TimeoutError:
                pass
