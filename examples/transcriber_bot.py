"""Live captions: a bot that posts what each member says to a text channel. /captions, /stop.

Run it::

    pip install "discord-ext-listening[speech]"    # or [whisper] for much better text
    DISCORD_TOKEN=... python examples/transcriber_bot.py

Invite the bot with the ``bot`` and ``applications.commands`` scopes and the Connect and Send
Messages permissions. ``DISCORD_GUILD=<guild id>`` syncs the commands to one guild instantly.
``WHISPER_MODEL=small.en`` uses faster-whisper (downloaded on first use) instead of the
offline PocketSphinx.

The part to copy is :func:`post_captions`: it turns the voice client's audio into lines with
``listening.transcribe`` and posts each one; recognition runs in worker processes, so a slow
recogniser makes captions late (or, far behind, skips lines), never the bot. Run it without
Discord (members of the local voice server say the bundled clips)::

    python examples/transcriber_bot.py --local
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import discord
from discord import app_commands
from discord.ext import listening

log = logging.getLogger("transcriber_bot")


def recognizer_from_env() -> listening.Recognizer:
    """faster-whisper when ``WHISPER_MODEL`` names a model, else PocketSphinx (offline)."""
    model = os.environ.get("WHISPER_MODEL")
    if model:
        return listening.WhisperRecognizer(model)
    return listening.PocketSphinxRecognizer()


def caption(line: listening.Transcript) -> str:
    """One message: who, when (minutes:seconds into the call) and what."""
    who = getattr(line.user, "display_name", None) or f"<@{line.user_id}>"
    minutes, seconds = divmod(int(line.start), 60)
    return f"`{minutes:02d}:{seconds:02d}` **{discord.utils.escape_markdown(str(who))}**: {line.text}"[:2000]


async def post_captions(
    vc: listening.VoiceClient, channel: discord.abc.Messageable, recognizer: listening.Recognizer
) -> int:
    """Post a caption for every utterance until listening stops; returns how many were posted.

    ``vc`` must be listening with ``decode=True`` (any sink: a recording can run beside).
    """
    posted = 0
    transcriber = listening.transcribe(vc, recognizer, workers=2)
    async for line in transcriber:
        try:
            await channel.send(caption(line), allowed_mentions=discord.AllowedMentions.none())
            posted += 1
        except discord.HTTPException as exc:  # rate limits, a deleted channel: skip this line
            log.warning("could not post a caption: %s", exc)
    if transcriber.dropped:
        log.warning("%d utterances skipped: the recogniser fell behind", transcriber.dropped)
    return posted


class TranscriberBot(discord.Client):
    def __init__(self, recognizer: listening.Recognizer) -> None:
        intents = discord.Intents.default()
        intents.voice_states = True
        super().__init__(intents=intents)
        self.tree = app_commands.CommandTree(self)
        self.recognizer = recognizer
        self.captions: dict[int, asyncio.Task[int]] = {}
        _add_commands(self)

    async def setup_hook(self) -> None:
        guild = os.environ.get("DISCORD_GUILD")
        if guild:
            self.tree.copy_global_to(guild=discord.Object(int(guild)))
            await self.tree.sync(guild=discord.Object(int(guild)))
        else:
            await self.tree.sync()


def _add_commands(bot: TranscriberBot) -> None:
    @bot.tree.command(description="Post live captions of your voice channel here")
    @app_commands.guild_only()
    async def captions(interaction: discord.Interaction) -> None:
        member = interaction.user
        voice = getattr(member, "voice", None)
        if voice is None or voice.channel is None or interaction.guild is None:
            await interaction.response.send_message("Join a voice channel first.", ephemeral=True)
            return
        if interaction.guild.id in bot.captions:
            await interaction.response.send_message("Captions are already on.", ephemeral=True)
            return
        vc: Any = interaction.guild.voice_client or await voice.channel.connect(cls=listening.VoiceClient)
        vc.listen(listening.AudioSink(), decode=True)  # nothing recorded: only captions
        channel: Any = interaction.channel
        await interaction.response.send_message(f"Captions of {voice.channel.mention} on: what is said is transcribed.")
        task = asyncio.create_task(post_captions(vc, channel, bot.recognizer))
        bot.captions[interaction.guild.id] = task
        task.add_done_callback(lambda _: bot.captions.pop(interaction.guild_id or 0, None))

    @bot.tree.command(description="Stop the captions and leave")
    @app_commands.guild_only()
    async def stop(interaction: discord.Interaction) -> None:
        guild = interaction.guild
        vc: Any = guild.voice_client if guild else None
        if vc is None:
            await interaction.response.send_message("I am not in a voice channel.", ephemeral=True)
            return
        vc.stop_listening()
        task = bot.captions.get(guild.id) if guild else None
        posted = await task if task is not None else 0  # the last lines are still posted
        await vc.disconnect()
        await interaction.response.send_message(f"Captions off ({posted} lines).")


# ---------------------------------------------------------------------------------------
# A runnable demonstration on the local voice server (no Discord account needed)
# ---------------------------------------------------------------------------------------


class PrintChannel:
    """Stands in for a text channel in the local demonstration: prints what is sent."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    async def send(self, content: str, **_: Any) -> None:
        self.messages.append(content)
        print(content)


async def local() -> None:
    from discord.ext.listening.demo import load_clip
    from discord.ext.listening.testing import VoiceServerEmulator

    with listening.AudioProcessPool(2) as pool:
        async with VoiceServerEmulator(dave=True, seed=5) as server:
            alice = await server.add_member(1001, "alice")
            bob = await server.add_member(1002, "bob")
            vc = await server.connect(cls=listening.VoiceClient)
            vc.listen(listening.AudioSink(), pool, decode=True)
            posting = asyncio.create_task(post_captions(vc, PrintChannel(), listening.PocketSphinxRecognizer()))
            await alice.speak(load_clip("alice"))
            await bob.speak(load_clip("bob"))
            await asyncio.sleep(1.0)
            vc.stop_listening()
            await posting
            await vc.disconnect()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if "--local" in sys.argv:
        asyncio.run(local())
    else:
        TranscriberBot(recognizer_from_env()).run(os.environ["DISCORD_TOKEN"])
