"""Testing tools: a local Discord voice server for unmodified discord.py, with real DAVE.

The entry point is :class:`VoiceServerEmulator`::

    from discord.ext.listening.testing import VoiceServerEmulator, speechlike

    async with VoiceServerEmulator(seed=1) as server:
        alice = await server.add_member(1001, "alice")
        vc = await server.connect()           # the real channel.connect()
        await alice.speak(speechlike(2.0))    # DAVE + transport encrypted RTP to the bot

Everything binds to ``127.0.0.1``; no token and no network access are needed. By default the
emulator behaves like Discord where a receiver can tell (docs/discord-behaviours.md).
"""

from .audio import load_pcm, speechlike, tone
from .calls import EmulatorError
from .emulator import VoiceServerEmulator
from .gateway import GatewayEvent, Op, VoiceSession
from .impairment import Impairment
from .media import BotPacket
from .members import SimulatedMember
from .probing import PaddingBurst
from .speech import OutgoingFrame, SenderClock, SentRecord, SpurtRecord

__all__ = (
    "BotPacket",
    "EmulatorError",
    "GatewayEvent",
    "Impairment",
    "Op",
    "OutgoingFrame",
    "PaddingBurst",
    "SenderClock",
    "SentRecord",
    "SimulatedMember",
    "SpurtRecord",
    "VoiceServerEmulator",
    "VoiceSession",
    "load_pcm",
    "speechlike",
    "tone",
)
