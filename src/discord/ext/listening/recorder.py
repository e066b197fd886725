"""``python -m discord.ext.listening record``: record a real Discord voice channel to files."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import datetime
from typing import Any, Optional

import discord

from .file_sink import AudioFileSink
from .files import FORMATS
from .pool import AudioProcessPool
from .report import ProgressPrinter, SpeechMeter, summary_table
from .sink import FanOutSink
from .voice_client import VoiceClient

__all__ = ("run_record", "RecordError")

_log = logging.getLogger(__name__)


class RecordError(Exception):
    """A problem the user can fix (bad token, unknown channel, missing permission...)."""


def _check_channel(client: discord.Client, guild_id: int, channel_id: int) -> discord.VoiceChannel:
    guild = client.get_guild(guild_id)
    if guild is None:
        raise RecordError(f"the bot is not in a guild with id {guild_id} (invite it first, or check the id)")
    channel = guild.get_channel(channel_id)
    if channel is None:
        raise RecordError(f"guild {guild.name!r} has no channel with id {channel_id}")
    if not isinstance(channel, discord.VoiceChannel):
        kind = "a stage channel (not supported)" if isinstance(channel, discord.StageChannel) else f"a {channel.type} channel"
        raise RecordError(f"channel {channel.name!r} is {kind}, not a voice channel")
    perms = channel.permissions_for(guild.me)
    missing = [name for name in ("view_channel", "connect") if not getattr(perms, name)]
    if missing:
        raise RecordError(f"the bot lacks the {', '.join(missing)} permission(s) in {channel.name!r}")
    return channel


async def _record(args: argparse.Namespace, token: str) -> int:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    client = discord.Client(intents=intents)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises KeyboardInterrupt instead
            pass
    ready = asyncio.Event()
    client.event(_named("on_ready", ready.set))
    runner = asyncio.create_task(client.start(token))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        waiter.cancel()
        exc = runner.exception()
        if isinstance(exc, discord.LoginFailure):
            raise RecordError("Discord rejected the token in DISCORD_TOKEN (improper token)")
        if isinstance(exc, discord.PrivilegedIntentsRequired):
            raise RecordError("the bot needs intents that are not enabled in the developer portal")
        raise RecordError(f"could not connect to Discord: {exc!r}")
    try:
        channel = _check_channel(client, args.guild, args.channel)
        start = datetime.now()
        out_dir = args.output / start.strftime("%Y-%m-%d_%H-%M-%S")
        with AudioProcessPool(args.workers) as pool:
            vc = await channel.connect(cls=VoiceClient)
            files = AudioFileSink(FORMATS[args.format], out_dir, mixed=not args.no_mixed)
            meter = SpeechMeter()
            finished = asyncio.Event()
            result: dict[str, Any] = {}

            async def after(sink: Any, error: Optional[BaseException]) -> None:
                result["error"] = error
                finished.set()

            vc.listen(FanOutSink(files, meter), pool, after=after, decode=args.format != "opus")
            print(f"recording {channel.name!r} in {channel.guild.name!r} to {out_dir}/ (Ctrl-C to finish)")
            progress = ProgressPrinter(vc.listen_stats, meter)  # type: ignore[arg-type]
            deadline = None if args.duration is None else loop.time() + args.duration
            while not stop.is_set() and not finished.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 2.0)
                except asyncio.TimeoutError:
                    pass
                progress.print()
                if deadline is not None and loop.time() >= deadline:
                    break
                if args.until_empty and not [m for m in channel.members if m.id != client.user.id]:  # type: ignore[union-attr]
                    print("the channel is empty; finishing")
                    break
            vc.stop_listening()
            await asyncio.wait_for(finished.wait(), 30)
            await files.convert_files()
            await vc.disconnect()
        names = {uid: getattr(f.user, "display_name", str(uid)) for uid, f in files.output_files.items()}
        stats = vc.listen_stats
        assert stats is not None
        print(summary_table(stats, meter, {u: f.path for u, f in files.output_files.items()}, names,
                            files.mixed_file.path if files.mixed_file else None))
        if result.get("error") is not None:
            print(f"error: {result['error']}", file=sys.stderr)
            return 1
        return 0
    finally:
        await client.close()
        runner.cancel()


def _named(name: str, fn: Any) -> Any:
    async def handler() -> None:
        fn()

    handler.__name__ = name
    return handler


def run_record(args: argparse.Namespace) -> int:
    """Entry point of the ``record`` command; returns the exit code."""
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not token:
        print("set DISCORD_TOKEN to the bot's token (it is never taken from the command line)", file=sys.stderr)
        return 2
    if args.duration is not None and args.duration <= 0:
        print("--duration must be positive", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_record(args, token))
    except RecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except discord.ClientException as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
