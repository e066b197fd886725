"""A slash-command recording bot: /join, /record, /pause, /resume, /stop, /leave.

Run it::

    DISCORD_TOKEN=... python examples/recording_bot.py

Invite the bot with the ``bot`` and ``applications.commands`` scopes and the Connect, Send
Messages and Attach Files permissions. Slash commands are synced globally on start-up; set
``DISCORD_GUILD=<guild id>`` while developing to sync them to one guild instantly instead.

How it is put together (copy the parts you need):

* :class:`RecordingSession` is one recording of one voice channel: start, pause, resume,
  stop, and the files it produced. It knows nothing about slash commands, so you can drive
  it from a test, a prefix command or a timer (``tests/test_examples.py`` does, against the
  local voice server).
* :func:`plan_uploads` decides what can be posted to Discord under the guild's upload limit:
  WAV files that are too large are split into parts, other files that are too large are
  reported with their path on the bot's disk, and many files are zipped together.
* :class:`RecordingBot` holds the slash commands: thin wrappers that check who asked and
  where, call the two pieces above, and reply.

Recording people is regulated in many places: the bot says in the voice channel's chat
when a recording starts, and greets anyone who joins while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import wave
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import discord
from discord import app_commands
from discord.ext import listening

log = logging.getLogger("recording_bot")

#: The ``/record format:`` choices and the file type each one writes.
FORMATS: dict[str, type[listening.AudioFile]] = {
    "wav": listening.WaveAudioFile,  # lossless, 192 kB/s per track: big
    "flac": listening.FLACAudioFile,  # lossless, about half of WAV for speech
    "mp3": listening.MP3AudioFile,  # lossy, plays everywhere
    "opus": listening.OggOpusAudioFile,  # Discord's own packets stored as they came: smallest, no decoding
}

#: Discord takes at most this many attachments in one message.
MAX_ATTACHMENTS = 10


# ---------------------------------------------------------------------------------------
# The recording itself
# ---------------------------------------------------------------------------------------


class RecordingSession:
    """One recording of the channel a :class:`listening.VoiceClient` is connected to.

    Parameters
    ----------
    voice_client: :class:`listening.VoiceClient`
        A connected voice client (``await channel.connect(cls=listening.VoiceClient)``).
    output_dir: :class:`os.PathLike`
        Where the files go: one per member who spoke, plus ``mixed.<ext>`` (everyone).
    file_format: :class:`str`
        A key of :data:`FORMATS`.
    pool: Optional[:class:`listening.AudioProcessPool`]
        The decoding worker processes; ``None`` uses the process-wide pool
        (:func:`listening.init_audio_processing_pool`).
    mixed: :class:`bool`
        Also write the mixed track.
    """

    def __init__(
        self,
        voice_client: listening.VoiceClient,
        output_dir: str | os.PathLike[str],
        file_format: str = "wav",
        *,
        pool: listening.AudioProcessPool | None = None,
        mixed: bool = True,
    ) -> None:
        if file_format not in FORMATS:
            raise ValueError(f"unknown format {file_format!r}; choose from {', '.join(FORMATS)}")
        self.voice_client = voice_client
        self.output_dir = Path(output_dir)
        self.format = file_format
        self.pool = pool
        self.mixed = mixed
        #: The file sink, once started: ``sink.output_files`` maps user ids to their files.
        self.sink: listening.AudioFileSink | None = None
        #: Set when listening ended with an error (a full disk...), or the bot was disconnected.
        self.error: BaseException | None = None
        self.started_at: datetime | None = None
        #: The finished files (per member, then the mix), once :meth:`stop` returned.
        self.files: list[Path] = []
        self._finished = asyncio.Event()
        self._stopped = False

    @property
    def channel(self) -> discord.abc.Connectable:
        return self.voice_client.channel

    @property
    def recording(self) -> bool:
        """Whether audio is being recorded right now (started, not paused, not stopped)."""
        return self.voice_client.is_listening() and not self.voice_client.is_listening_paused()

    @property
    def paused(self) -> bool:
        return self.voice_client.is_listening_paused()

    @property
    def active(self) -> bool:
        """Started and not yet stopped (paused counts as active)."""
        return self.sink is not None and not self._stopped

    async def start(self) -> None:
        """Start recording.

        Raises
        ------
        discord.ClientException
            The voice client is not connected, or already listening.
        RecordingError
            The output directory cannot be created.
        """
        if self.sink is not None:
            raise RuntimeError("a RecordingSession records once; create a new one")
        vc = self.voice_client
        # A recording stopped a moment ago may still be flushing its files: listen() refuses
        # to start until that is done.
        await vc.wait_for_listen_ready(timeout=30)
        sink = listening.AudioFileSink(
            FORMATS[self.format],
            self.output_dir,
            mixed=self.mixed,
            filename="{user_name}",  # alice.flac, bob.flac...; names are sanitized and never collide
        )
        # Ogg Opus stores the packets exactly as Discord sent them: no decoding needed at all.
        vc.listen(sink, self.pool, decode=self.format != "opus", after=self._on_finished)
        self.sink = sink
        self.started_at = datetime.now(UTC)
        log.info("recording %s to %s as %s", vc.channel, self.output_dir, self.format)

    async def _on_finished(self, sink: listening.AudioSink, error: BaseException | None = None) -> None:
        # Awaited on the event loop once listening ended for any reason: stop_listening(), the
        # bot being disconnected or kicked, or a file error (error is then set).
        if error is not None:
            log.error("recording in %s ended with an error: %s", self.voice_client.channel, error)
            self.error = error
        if not self.voice_client.is_connected() and self.error is None and not self._stopped:
            self.error = ConnectionError("the bot was disconnected from the voice channel")
        self._finished.set()

    def pause(self) -> None:
        """Stop taking audio in; the paused time becomes silence in every file, so the tracks
        stay aligned with each other and with the wall clock."""
        self.voice_client.pause_listening()

    def resume(self) -> None:
        self.voice_client.resume_listening()

    async def stop(self, *, timeout: float = 30.0) -> list[Path]:
        """Stop, finish every file (headers, encoder flush) and return their paths.

        Per-member files come first, the mixed track last. Safe to call after the bot was
        disconnected (listening has then already ended; the files are finished all the
        same) and more than once.
        """
        if self.sink is None:
            raise RuntimeError("the recording was never started")
        if self._stopped:
            return self.files
        self._stopped = True
        self.voice_client.stop_listening()
        # Frames still inside the pipeline are written first, then the sink's cleanup runs,
        # then _on_finished: only after that are the files complete.
        await asyncio.wait_for(self._finished.wait(), timeout)
        # Encoders finish off the event loop (convert_files runs them in threads).
        self.files = await self.sink.convert_files()
        if self.error is None:
            self.error = self.sink.error
        return self.files

    def user_file(self, user_id: int) -> Path | None:
        """The file of one member (``None`` if they never spoke)."""
        f = self.sink.output_files.get(user_id) if self.sink is not None else None
        return f.path if f is not None else None

    @property
    def mixed_file(self) -> Path | None:
        return self.sink.mixed_file.path if self.sink is not None and self.sink.mixed_file else None

    def notice(self) -> str:
        """What the bot posts when the recording starts: everyone in the channel is told."""
        channel = self.voice_client.channel
        where = getattr(channel, "mention", f"#{channel}")
        return (
            f"\N{LARGE RED CIRCLE} **Recording started** in {where}. Everyone in this voice channel "
            f"is being recorded ({self.format.upper()}, one file per person plus a mix). "
            f"Leave the channel if you do not want to be recorded. "
            f"`/pause`, `/resume`, `/stop` (posts the files here)."
        )


# ---------------------------------------------------------------------------------------
# Getting the files to Discord under the upload limit
# ---------------------------------------------------------------------------------------


@dataclass
class UploadPlan:
    """What to post, from :func:`plan_uploads`.

    Attributes
    ----------
    messages: List[List[:class:`Path`]]
        Attachments, one list per message (at most 10 files, together within the limit).
    too_large: List[:class:`Path`]
        Files that cannot be uploaded: tell the user where they are on the bot's disk.
    created: List[:class:`Path`]
        Parts and archives the plan wrote (in ``work_dir``); :meth:`cleanup` removes them.
    """

    messages: list[list[Path]] = field(default_factory=list)
    too_large: list[Path] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)

    @property
    def attachments(self) -> list[Path]:
        return [p for batch in self.messages for p in batch]

    def cleanup(self) -> None:
        for p in self.created:
            p.unlink(missing_ok=True)


def plan_uploads(
    paths: Sequence[Path],
    limit: int,
    *,
    work_dir: Path,
    max_attachments: int = MAX_ATTACHMENTS,
    margin: int = 16 * 1024,
) -> UploadPlan:
    """Decide how to post ``paths`` to a guild whose upload limit is ``limit`` bytes.

    Discord refuses a message whose upload is too large, and has counted the limit per file
    and per request at different times; this plan keeps every *message* within ``limit -
    margin`` bytes (the margin covers the multipart request around the files), which is
    safe either way.

    * a file within the limit is attached as it is;
    * a WAV file over it is split into WAV parts that are (every part plays on its own);
    * any other file over it (FLAC, MP3 and Opus are already compressed, and cutting them
      means re-encoding) goes to :attr:`UploadPlan.too_large`;
    * more files than fit in one message (``max_attachments``) are zipped into archives
      that each stay within the limit, so the channel gets a few attachments, not dozens.

    Blocking file I/O: call it through :func:`asyncio.to_thread` from the event loop.
    """
    budget = limit - margin
    if budget < 64 * 1024:
        raise ValueError(f"an upload limit of {limit} bytes leaves no room for audio")
    work_dir.mkdir(parents=True, exist_ok=True)
    plan = UploadPlan()
    fits: list[Path] = []
    for path in paths:
        size = path.stat().st_size
        if size <= budget:
            fits.append(path)
        elif path.suffix.lower() == ".wav":
            try:
                parts = split_wav(path, budget, work_dir)
            except (wave.Error, EOFError):  # e.g. an RF64 file past 4 GB, which `wave` cannot read
                plan.too_large.append(path)
                continue
            plan.created += parts
            fits += parts
        else:
            plan.too_large.append(path)
    if len(fits) > max_attachments:
        archives = zip_files(fits, budget, work_dir)
        plan.created += [a for a in archives if a not in fits]
        fits = archives
    # Fill messages in order: at most max_attachments files and `budget` bytes each.
    batch: list[Path] = []
    batch_size = 0
    for path in fits:
        size = path.stat().st_size
        if batch and (len(batch) == max_attachments or batch_size + size > budget):
            plan.messages.append(batch)
            batch, batch_size = [], 0
        batch.append(path)
        batch_size += size
    if batch:
        plan.messages.append(batch)
    return plan


def split_wav(path: Path, max_bytes: int, out_dir: Path) -> list[Path]:
    """Cut a PCM WAV file into consecutive parts of at most ``max_bytes`` each.

    The parts are ordinary WAV files named ``<name>.part1of3.wav``...; played one after the
    other they are the original audio, sample for sample.
    """
    with wave.open(str(path), "rb") as src:
        params = src.getparams()
        frame_bytes = params.nchannels * params.sampwidth
        per_part = (max_bytes - 44) // frame_bytes  # the stdlib writes a 44-byte header
        count = max(1, math.ceil(params.nframes / per_part))
        parts = []
        for i in range(count):
            part = out_dir / f"{path.stem}.part{i + 1}of{count}.wav"
            with wave.open(str(part), "wb") as dst:
                dst.setparams(params)
                left = min(per_part, params.nframes - i * per_part)
                while left > 0:  # in 1 MB steps: the limit can be 100 MB
                    chunk = src.readframes(min(left, (1 << 20) // frame_bytes))
                    if not chunk:
                        break
                    dst.writeframes(chunk)
                    left -= len(chunk) // frame_bytes
            parts.append(part)
    return parts


def zip_files(paths: Sequence[Path], max_bytes: int, out_dir: Path, *, name: str = "recording") -> list[Path]:
    """Pack files into ``name-1.zip``, ``name-2.zip``... of at most ``max_bytes`` each.

    WAV is deflated (silence compresses very well); already compressed formats are stored.
    A file too large to share an archive with anything stays out of the archives and is
    returned as it is.
    """

    def entry_cost(p: Path) -> int:
        # stored size + local header + central directory record (+ slack for zip64 extras)
        return p.stat().st_size + 2 * len(p.name.encode()) + 200

    groups: list[list[Path]] = []
    loads: list[int] = []
    alone: list[Path] = []
    # First-fit decreasing: few archives, each as full as it can be.
    for p in sorted(paths, key=entry_cost, reverse=True):
        cost = entry_cost(p)
        if cost + 22 > max_bytes:  # 22: the archive's end record
            alone.append(p)
            continue
        for i, load in enumerate(loads):
            if load + cost + 22 <= max_bytes:
                groups[i].append(p)
                loads[i] += cost
                break
        else:
            groups.append([p])
            loads.append(cost)
    archives = []
    for i, group in enumerate(groups, 1):
        archive = out_dir / (f"{name}.zip" if len(groups) == 1 else f"{name}-{i}.zip")
        _write_zip(archive, sorted(group), deflate=True)
        if archive.stat().st_size > max_bytes:  # deflate made something larger: store instead
            _write_zip(archive, sorted(group), deflate=False)
        archives.append(archive)
    return archives + alone


def _write_zip(archive: Path, files: Iterable[Path], *, deflate: bool) -> None:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in files:
            method = zipfile.ZIP_DEFLATED if deflate and p.suffix.lower() == ".wav" else zipfile.ZIP_STORED
            zf.write(p, arcname=p.name, compress_type=method)


def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


# ---------------------------------------------------------------------------------------
# The slash commands: thin wrappers around RecordingSession and plan_uploads
# ---------------------------------------------------------------------------------------


class RecordingBot(discord.Client):
    """The bot. ``sessions`` holds the active recording of each guild.

    Parameters
    ----------
    output_dir: :class:`os.PathLike`
        Recordings go to ``<output_dir>/<guild id>/<start time>/``.
    pool: Optional[:class:`listening.AudioProcessPool`]
        Decoding workers; ``None`` uses the process-wide pool.
    sync_guild: Optional[:class:`int`]
        Sync the slash commands to this guild only (instant) instead of globally.
    """

    def __init__(
        self,
        *,
        output_dir: str | os.PathLike[str] = "recordings",
        pool: listening.AudioProcessPool | None = None,
        sync_guild: int | None = None,
    ) -> None:
        # Guilds and voice states are all a recording bot needs: members in a voice channel
        # come with their voice state. No privileged intent.
        super().__init__(intents=discord.Intents(guilds=True, voice_states=True))
        self.output_dir = Path(output_dir)
        self.pool = pool
        self.sync_guild = sync_guild
        self.sessions: dict[int, RecordingSession] = {}
        self.tree = app_commands.CommandTree(self)
        _add_commands(self)

    async def setup_hook(self) -> None:
        if self.sync_guild is not None:
            guild = discord.Object(id=self.sync_guild)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        # Someone joined a channel that is being recorded: tell them, in the channel's chat.
        session = self.sessions.get(member.guild.id)
        if (
            session is None
            or not session.active
            or member.bot
            or after.channel is None
            or after.channel == before.channel
            or after.channel.id != session.channel.id
        ):
            return
        await _post(after.channel, f"{member.mention}, heads-up: this voice channel is being recorded.")

    async def stop_and_upload(self, interaction: discord.Interaction, session: RecordingSession) -> None:
        """Finish a recording and post its files as the follow-up of ``interaction``."""
        guild = interaction.guild
        assert guild is not None
        try:
            paths = await session.stop()
        finally:
            self.sessions.pop(guild.id, None)
        if session.error is not None:
            await interaction.followup.send(f"\N{WARNING SIGN} The recording had a problem: {session.error}")
        if not paths:
            await interaction.followup.send("Recording stopped. Nobody spoke, so there are no files.")
            return
        plan = await asyncio.to_thread(
            plan_uploads, paths, guild.filesize_limit, work_dir=session.output_dir / "upload"
        )
        try:
            total = len(plan.messages)
            names = ", ".join(p.name for p in paths)
            for i, batch in enumerate(plan.messages, 1):
                head = f"Recording of {session.channel.mention}: {names}" if i == 1 else "(continued)"
                if total > 1:
                    head += f" [{i}/{total}]"
                await interaction.followup.send(head, files=[discord.File(p) for p in batch])
            if plan.too_large:
                lines = "\n".join(f"- `{p.name}` ({_size(p.stat().st_size)}): `{p.resolve()}`" for p in plan.too_large)
                await interaction.followup.send(
                    f"Larger than this server's upload limit ({_size(guild.filesize_limit)}), "
                    f"kept on the bot's disk (`/record format:opus` makes the smallest files):\n{lines}"
                )
        finally:
            plan.cleanup()  # the split parts and zips; the recordings themselves stay
            try:
                (session.output_dir / "upload").rmdir()
            except OSError:
                pass


async def _post(channel: discord.abc.Messageable, text: str) -> None:
    # Voice channels have a text chat; the bot may lack the permission to post there.
    try:
        await channel.send(text)
    except discord.HTTPException as exc:
        log.warning("could not post in %s: %s", channel, exc)


async def _reply(interaction: discord.Interaction, text: str, *, ephemeral: bool = True) -> None:
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=ephemeral)
    else:
        await interaction.response.send_message(text, ephemeral=ephemeral)


async def _connect(interaction: discord.Interaction) -> listening.VoiceClient | None:
    """The guild's listening voice client, joining the invoker's channel if needed."""
    guild = interaction.guild
    assert guild is not None
    vc = guild.voice_client
    if isinstance(vc, listening.VoiceClient) and vc.is_connected():
        return vc
    voice = getattr(interaction.user, "voice", None)
    if voice is None or voice.channel is None:
        await _reply(interaction, "Join a voice channel first, then use `/join`.")
        return None
    try:
        # self_deaf=False: a deafened bot hears nothing.
        return await voice.channel.connect(cls=listening.VoiceClient, self_deaf=False)
    except (TimeoutError, discord.ClientException) as exc:
        await _reply(interaction, f"Could not join {voice.channel.mention}: {exc or 'timed out'}")
        return None


def _add_commands(bot: RecordingBot) -> None:
    tree = bot.tree

    @tree.command(description="Join your voice channel")
    @app_commands.guild_only()
    async def join(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)  # connecting (and DAVE) can take a few seconds
        vc = await _connect(interaction)
        if vc is not None:
            await _reply(interaction, f"Joined {vc.channel.mention}. `/record` to start recording.", ephemeral=False)

    @tree.command(description="Record everyone in the voice channel")
    @app_commands.guild_only()
    @app_commands.describe(format="File format (default FLAC; Opus: smallest files, WAV: largest)")
    @app_commands.choices(
        format=[
            app_commands.Choice(name="WAV (lossless, large)", value="wav"),
            app_commands.Choice(name="FLAC (lossless)", value="flac"),
            app_commands.Choice(name="MP3", value="mp3"),
            app_commands.Choice(name="Opus (smallest, as Discord sent it)", value="opus"),
        ]
    )
    async def record(interaction: discord.Interaction, format: app_commands.Choice[str] | None = None) -> None:
        guild = interaction.guild
        assert guild is not None
        session = bot.sessions.get(guild.id)
        if session is not None and session.active:
            await _reply(interaction, "Already recording; `/stop` first.")
            return
        await interaction.response.defer(thinking=True)
        vc = await _connect(interaction)
        if vc is None:
            return
        fmt = format.value if format is not None else "flac"
        out = bot.output_dir / str(guild.id) / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        session = RecordingSession(vc, out, fmt, pool=bot.pool)
        try:
            await session.start()
        except (TimeoutError, discord.ClientException, OSError) as exc:
            await _reply(interaction, f"Could not start recording: {exc}")
            return
        bot.sessions[guild.id] = session
        # Public, and in the voice channel's own chat where the people being recorded are.
        await _reply(interaction, session.notice(), ephemeral=False)
        if interaction.channel is None or interaction.channel.id != vc.channel.id:
            await _post(vc.channel, session.notice())

    @tree.command(description="Pause the recording")
    @app_commands.guild_only()
    async def pause(interaction: discord.Interaction) -> None:
        session = bot.sessions.get(interaction.guild.id)  # type: ignore[union-attr]
        if session is None or not session.recording:
            await _reply(interaction, "Not recording.")
            return
        session.pause()
        await _reply(interaction, "\N{DOUBLE VERTICAL BAR} Recording paused. `/resume` to go on.", ephemeral=False)

    @tree.command(description="Resume a paused recording")
    @app_commands.guild_only()
    async def resume(interaction: discord.Interaction) -> None:
        session = bot.sessions.get(interaction.guild.id)  # type: ignore[union-attr]
        if session is None or not session.paused:
            await _reply(interaction, "The recording is not paused.")
            return
        session.resume()
        await _reply(
            interaction,
            "\N{LARGE RED CIRCLE} Recording resumed: everyone here is being recorded again.",
            ephemeral=False,
        )

    @tree.command(description="Stop recording and post the files")
    @app_commands.guild_only()
    async def stop(interaction: discord.Interaction) -> None:
        session = bot.sessions.get(interaction.guild.id)  # type: ignore[union-attr]
        if session is None:
            await _reply(interaction, "Not recording.")
            return
        await interaction.response.defer(thinking=True)  # finishing and uploading takes a while
        await bot.stop_and_upload(interaction, session)

    @tree.command(description="Leave the voice channel (stops a recording first)")
    @app_commands.guild_only()
    async def leave(interaction: discord.Interaction) -> None:
        guild = interaction.guild
        assert guild is not None
        vc = guild.voice_client
        if vc is None:
            await _reply(interaction, "I am not in a voice channel.")
            return
        await interaction.response.defer(thinking=True)
        session = bot.sessions.get(guild.id)
        if session is not None:
            await bot.stop_and_upload(interaction, session)
        await vc.disconnect(force=False)
        await _reply(interaction, "Left the voice channel.", ephemeral=False)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not token:
        raise SystemExit("set DISCORD_TOKEN to the bot's token")
    guild = os.environ.get("DISCORD_GUILD")
    # Decoding runs in worker processes: start them here, under the __main__ guard.
    listening.init_audio_processing_pool(2)
    bot = RecordingBot(
        output_dir=os.environ.get("RECORDINGS_DIR", "recordings"), sync_guild=int(guild) if guild else None
    )
    bot.run(token, log_handler=None)


if __name__ == "__main__":
    main()
