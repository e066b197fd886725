"""A recorder you talk to: say "start recording", "stop recording" or "leave the channel".

Run it::

    pip install "discord-ext-listening[speech]"
    DISCORD_TOKEN=... python examples/voice_commands.py

Invite the bot with the ``bot`` and ``applications.commands`` scopes and the Connect and Send
Messages permissions, then use ``/listen`` from a voice channel. ``DISCORD_GUILD=<guild id>``
syncs the command to one guild instantly.

The part to copy is :class:`VoiceRecorder`: ``listening.VoiceCommands`` hears the phrases (each
said on its own, between pauses) and a ``ConditionalFilter`` lets audio into the files only
while recording is on, so the WAV files stay aligned with silence where nothing was kept.
Run it without Discord (a member of the local voice server says commands and other things)::

    python examples/voice_commands.py --local
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import listening

log = logging.getLogger("voice_commands")

PHRASES = ["start recording", "stop recording", "leave the channel"]


class VoiceRecorder:
    """Listens to ``vc`` and records to ``directory`` while members ask it to.

    ``announce`` is awaited with a line of text for each command it obeys.
    """

    def __init__(self, vc: Any, directory: str | os.PathLike[str], announce: Any) -> None:
        self.vc = vc
        self.announce = announce
        self.recording = False
        files = listening.AudioFileSink(listening.WaveAudioFile, directory)
        self.sink = listening.ConditionalFilter(files, lambda frame: self.recording)
        self.commands = listening.VoiceCommands(PHRASES, self.on_command)

    async def on_command(self, command: listening.VoiceCommand) -> None:
        who = getattr(command.user, "display_name", None) or f"user {command.user_id}"
        if command.phrase == "start recording" and not self.recording:
            self.recording = True
            await self.announce(f"Recording, as {who} asked.")
        elif command.phrase == "stop recording" and self.recording:
            self.recording = False
            await self.announce(f"Recording stopped by {who}.")
        elif command.phrase == "leave the channel":
            await self.announce(f"Leaving, as {who} asked.")
            self.vc.stop_listening()  # ends run()

    async def run(self, pool: listening.AudioProcessPool | None = None) -> None:
        """Listen until asked to leave (or until listening stops)."""
        self.vc.listen(self.sink, pool, decode=True)
        await self.commands.run(self.vc)


class CommandBot(discord.Client):
    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.voice_states = True
        super().__init__(intents=intents)
        self.tree = app_commands.CommandTree(self)
        self.sessions: set[asyncio.Task[None]] = set()
        _add_commands(self)

    async def setup_hook(self) -> None:
        guild = os.environ.get("DISCORD_GUILD")
        if guild:
            self.tree.copy_global_to(guild=discord.Object(int(guild)))
            await self.tree.sync(guild=discord.Object(int(guild)))
        else:
            await self.tree.sync()


def _add_commands(bot: CommandBot) -> None:
    @bot.tree.command(description="Join your voice channel and take voice commands")
    @app_commands.guild_only()
    async def listen(interaction: discord.Interaction) -> None:
        voice = getattr(interaction.user, "voice", None)
        if voice is None or voice.channel is None or interaction.guild is None:
            await interaction.response.send_message("Join a voice channel first.", ephemeral=True)
            return
        if interaction.guild.voice_client is not None:
            await interaction.response.send_message("I am already in a voice channel.", ephemeral=True)
            return
        vc: Any = await voice.channel.connect(cls=listening.VoiceClient)
        channel: Any = interaction.channel
        await interaction.response.send_message(f"Listening in {voice.channel.mention}: say one of {PHRASES}.")

        async def announce(text: str) -> None:
            await channel.send(text, allowed_mentions=discord.AllowedMentions.none())

        recorder = VoiceRecorder(vc, Path("recordings") / str(interaction.guild.id), announce)

        async def session() -> None:
            try:
                await recorder.run()
            except Exception:
                log.exception("the voice session failed")
            finally:
                await vc.disconnect()
                bot.sessions.discard(task)

        task = asyncio.create_task(session())
        bot.sessions.add(task)  # a reference, so the task is not collected while it runs


# ---------------------------------------------------------------------------------------
# A runnable demonstration on the local voice server (no Discord account needed)
# ---------------------------------------------------------------------------------------

#: What the simulated member says: commands among other talk (espeak-ng speech, made by
#: scripts/make_command_clips.py for the tests).
SAYS = ["hello everyone", "start recording", "sounds good", "can we start recording now please", "stop recording"]


def spoken_clips(texts: list[str]) -> list[Any]:
    """48 kHz mono int16 clips of ``texts`` from the tests' spoken commands."""
    import json

    import numpy as np

    from discord.ext.listening.demo import decode_audio_file

    data = Path(__file__).resolve().parents[1] / "tests" / "data" / "voice_commands"
    script = json.loads((data / "script.json").read_text())
    clips: dict[str, Any] = {}
    for member in script["members"]:
        audio = np.frombuffer(decode_audio_file(data / member["file"], "mono"), "<i2")
        for item in member["items"]:
            clips.setdefault(item["text"], audio[item["start"] : item["end"]])
    return [clips[t] for t in texts]


async def local(directory: str = "voice-commands-demo") -> list[str]:
    """A member says :data:`SAYS`; returns the announcements. The WAV file in ``directory``
    holds what was said between the two commands."""
    from discord.ext.listening.testing import VoiceServerEmulator

    said: list[str] = []

    async def announce(text: str) -> None:
        said.append(text)
        print(text)

    with listening.AudioProcessPool(2) as pool:
        async with VoiceServerEmulator(dave=True, seed=7) as server:
            alice = await server.add_member(1001, "alice")
            vc = await server.connect(cls=listening.VoiceClient)
            recorder = VoiceRecorder(vc, directory, announce)
            running = asyncio.create_task(recorder.run(pool))
            for clip in spoken_clips(SAYS):
                await alice.speak(clip)
                await asyncio.sleep(1.0)
            await server.drain()
            await asyncio.sleep(1.0)
            vc.stop_listening()
            await asyncio.wait_for(running, 60)
            await vc.disconnect()
    return said


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if "--local" in sys.argv:
        asyncio.run(local())
    else:
        CommandBot().run(os.environ["DISCORD_TOKEN"])
