"""``python -m discord.ext.listening record``: record a real Discord voice channel to files."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import discord

from .captions import TranscriptWriter
from .file_sink import AudioFileSink
from .files import FORMATS, RecordingError
from .filters import UserFilter
from .pool import AudioProcessPool
from .redis_sink import RedisStreamSink
from .redis_stream import StreamRecorder
from .report import ProgressPrinter, SpeechMeter, summary_table
from .sink import AudioSink, FanOutSink
from .sphinx import PocketSphinxRecognizer
from .stats import ListenStats
from .transcribe import Recognizer, transcribe
from .voice_client import VoiceClient

__all__ = ("RecordError", "Recording", "record_channel", "run_record")

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
        kind = (
            "a stage channel (not supported)"
            if isinstance(channel, discord.StageChannel)
            else f"a {channel.type} channel"
        )
        raise RecordError(f"channel {channel.name!r} is {kind}, not a voice channel")
    perms = channel.permissions_for(guild.me)
    missing = [name for name in ("view_channel", "connect") if not getattr(perms, name)]
    if missing:
        raise RecordError(f"the bot lacks the {', '.join(missing)} permission(s) in {channel.name!r}")
    return channel


@dataclass
class Recording:
    """What :func:`record_channel` recorded.

    Attributes
    ----------
    exit_code: :class:`int`
        The command's exit code: 0, or 1 when listening ended with an error.
    error: Optional[:class:`BaseException`]
        The error listening ended with (``after``'s), or ``None``.
    paths: list[:class:`~pathlib.Path`]
        The finished files: per-user files, then the mixed track.
    files: :class:`AudioFileSink`
        The sink that wrote them.
    meter: :class:`SpeechMeter`
        Seconds of speech per user.
    stats: :class:`ListenStats`
        The listening statistics (packets, losses, drops).
    """

    exit_code: int
    error: BaseException | None
    paths: list[Path]
    files: AudioFileSink
    meter: SpeechMeter
    stats: ListenStats


async def record_channel(
    vc: VoiceClient,
    pool: AudioProcessPool,
    out_dir: Path,
    until: Callable[[ProgressPrinter], Awaitable[object]],
    *,
    file_format: str = "wav",
    mixed: bool = True,
    filename: str = "{user_id}-{user_name}",
    decode: bool = True,
    names: dict[int | None, str] | None = None,
    interval: float = 2.0,
    keep_going: Callable[[], bool] | None = None,
    users: Iterable[int] | None = None,
    max_file_seconds: float | None = None,
    max_file_bytes: int | None = None,
    redis: str | None = None,
    transcript: Recognizer | None = None,
    print_lines: bool = False,
) -> Recording:
    """Record a connected voice client to files, printing progress and a closing summary.

    The recording core of the ``demo`` and ``record`` commands: listens into per-user files
    (and a mixed track) plus a :class:`SpeechMeter`, prints a progress line every
    ``interval`` seconds until told to finish, stops listening, waits for ``after``,
    finishes the files, disconnects ``vc`` and prints the summary table (and the error, on
    stderr, if listening ended with one).

    Parameters
    ----------
    vc: :class:`VoiceClient`
        A connected voice client; it is disconnected at the end.
    pool: :class:`AudioProcessPool`
        The decode pool.
    out_dir: :class:`~pathlib.Path`
        Where the files go (created if missing).
    until: Callable[[:class:`ProgressPrinter`], Awaitable]
        Called once listening has started, with the progress printer; the recording
        finishes when the awaitable it returns completes (an exception it raises is
        raised here). It is cancelled if the recording finishes first.
    file_format: :class:`str`
        A key of :data:`FORMATS` (``wav``, ``flac``, ``mp3``, ``opus``, ``mka``, ``m4a``, ``vorbis``).
    mixed: :class:`bool`
        Also write the mixed track.
    filename: :class:`str`
        The per-user file name template (see :class:`AudioFileSink`).
    decode: :class:`bool`
        Passed to :meth:`VoiceClient.listen` (``False`` stores Opus undecoded).
    names: Optional[dict]
        User id to display name for the progress lines and the summary; by default the
        progress shows what the meter knows and the summary the members' display names.
    interval: :class:`float`
        Seconds between progress lines.
    keep_going: Optional[Callable[[], :class:`bool`]]
        Checked after each progress line; returning ``False`` finishes the recording.
    users: Optional[Iterable[:class:`int`]]
        Record only these members (user ids): nobody else is in any file, the mix included.
    max_file_seconds, max_file_bytes: Optional[:class:`float`], Optional[:class:`int`]
        Write numbered parts (see :class:`AudioFileSink`).
    redis: Optional[:class:`str`]
        A Redis URL: the bot publishes Opus to the guild's stream (``decode`` off) and a
        :class:`StreamRecorder` beside it writes the same files from the stream.
    transcript: Optional[:class:`Recognizer`]
        Also transcribe what members say, into ``transcript.vtt`` and ``transcript.jsonl``
        beside the audio (not with ``redis``: the bot then decodes nothing).
    print_lines: :class:`bool`
        Print each transcript line as it comes.

    Returns
    -------
    :class:`Recording`
        The exit code, the error, the files and the statistics.

    Raises
    ------
    RecordingError
        The output directory cannot be created or written to.
    asyncio.TimeoutError
        Listening did not end within 30 s of being stopped.
    """
    options: dict[str, Any] = {
        "mixed": mixed,
        "filename": filename,
        "max_file_seconds": max_file_seconds,
        "max_file_bytes": max_file_bytes,
    }
    worker: StreamRecorder | None = None
    working: asyncio.Future[Any] | None = None
    if redis is None:
        files = AudioFileSink(FORMATS[file_format], out_dir, **options)
        output: AudioSink = files
    else:  # the bot publishes, a worker beside it writes: the thin-bot shape, on one machine
        output = RedisStreamSink(redis, guild_id=vc.guild.id)
        worker = StreamRecorder(redis, output.stream, out_dir, file_type=FORMATS[file_format], **options)
        files = worker.sink
        working = asyncio.ensure_future(asyncio.to_thread(worker.run))
        decode = False
    meter = SpeechMeter()
    finished = asyncio.Event()
    result: dict[str, BaseException | None] = {}

    async def after(sink: Any, error: BaseException | None) -> None:
        result["error"] = error
        finished.set()

    sink: AudioSink = FanOutSink(output, meter)
    if users is not None:
        sink = UserFilter(sink, users)
    if transcript is not None and redis is not None:
        raise ValueError("a transcript needs the bot to decode: not with redis (run `worker stream` beside it)")
    vc.listen(sink, pool, after=after, decode=decode or transcript is not None)
    lines = None if transcript is None else asyncio.ensure_future(_write_lines(vc, transcript, out_dir, print_lines))
    stats = vc.listen_stats
    assert stats is not None
    progress = ProgressPrinter(stats, meter, dict(names or {}))
    stopper = asyncio.ensure_future(until(progress))
    ended = asyncio.ensure_future(finished.wait())
    try:
        while not stopper.done() and not finished.is_set():
            await asyncio.wait([stopper, ended], timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            progress.print()
            if keep_going is not None and not keep_going():
                break
        if stopper.done():
            stopper.result()
    finally:
        stopper.cancel()
        ended.cancel()
    vc.stop_listening()
    await asyncio.wait_for(finished.wait(), 30)
    if lines is not None:  # the last utterances are being recognised
        await asyncio.wait_for(lines, 120)
    if working is not None and worker is not None:  # the worker ends at the stream's stop record
        try:
            await asyncio.wait_for(asyncio.shield(working), 60)
        except TimeoutError:
            worker.abandon()  # its thread returns within a poll; the files stay as far as written
            raise
    paths = await files.convert_files()
    await vc.disconnect()
    if names is None:  # whoever was heard, also those whose file could not be written
        names = {uid: m.name for uid, m in meter.users.items()}
        names.update({uid: getattr(f.user, "display_name", str(uid)) for uid, f in files.output_files.items()})
    print()
    print(
        summary_table(
            stats,
            meter,
            {u: f.path for u, f in files.output_files.items()},
            names,
            files.mixed_file.path if files.mixed_file else None,
        )
    )
    error = result.get("error")
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
    return Recording(1 if error is not None else 0, error, paths, files, meter, stats)


async def _write_lines(vc: VoiceClient, recognizer: Recognizer, out_dir: Path, print_lines: bool) -> None:
    with TranscriptWriter(out_dir) as writer:
        async for line in transcribe(vc, recognizer, workers=2):  # one core each: lines keep up with 2-4 speakers
            writer.write(line)
            if print_lines:
                who = getattr(line.user, "display_name", None) or line.user_id
                print(f"  [{line.start:6.1f} s] {who}: {line.text}", flush=True)


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

            async def until(progress: ProgressPrinter) -> None:
                print(f"recording {channel.name!r} in {channel.guild.name!r} to {out_dir}/ (Ctrl-C to finish)")
                try:
                    await asyncio.wait_for(stop.wait(), args.duration)  # --duration to the second
                except TimeoutError:
                    pass

            def keep_going() -> bool:
                if args.until_empty and not [m for m in channel.members if m.id != client.user.id]:  # type: ignore[union-attr]
                    print("the channel is empty; finishing")
                    return False
                return True

            recording = await record_channel(
                vc,
                pool,
                out_dir,
                until,
                file_format=args.format,
                mixed=not args.no_mixed,
                decode=args.format != "opus",
                keep_going=keep_going,
                users=args.users,
                max_file_seconds=args.split,
                max_file_bytes=None if args.max_size is None else round(args.max_size * 1_000_000),
                redis=args.redis,
                transcript=PocketSphinxRecognizer() if args.transcript else None,
            )
        return recording.exit_code
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
    if args.split is not None and not args.split >= 1:
        print("--split must be at least 1 second", file=sys.stderr)
        return 2
    if args.max_size is not None and not args.max_size >= 0.0655:
        print("--max-size must be at least 0.0655 MB (64 KiB)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_record(args, token))
    except (RecordError, RecordingError) as exc:  # RecordingError: e.g. an unwritable --output
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except discord.ClientException as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
