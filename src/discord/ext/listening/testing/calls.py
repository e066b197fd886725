"""What the emulator's collaborators share: the calls, the bot's sessions, its error type.

The emulated guild has voice channels, each with a :class:`Call` (its DAVE group and the
bot's session in it); :class:`BotSessions` is the registry of the bot's voice sessions on
the server side. Both are plain records: :mod:`.sessions` changes them as the bot joins,
moves and leaves, the others read them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from .dave_server import DaveGroupServer
from .gateway import VoiceSession

__all__ = ("BotSessions", "Call", "EmulatorError", "check_snowflake")


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
