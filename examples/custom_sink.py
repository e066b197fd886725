"""A sink of your own: "clip that!" keeps the last 30 seconds of everyone.

:class:`ClipSink` is a minimal :class:`listening.AudioSink` subclass. It keeps each member's
most recent ``seconds`` of audio in a ring buffer (fixed memory, however long the bot
listens) and writes a WAV of any member's last N seconds on demand: the classic
"clip that!" command.

What a sink subclass needs to know, all shown below:

* ``on_audio(frame)`` receives every 20 ms frame of every member, in order per member,
  on the listening session's own thread (never on the event loop). Return quickly: the
  frames of a slow sink queue up and are then dropped (``DropReason.sink_overflow``).
* ``on_rtcp(packet)`` receives the RTCP packets of the call (sender reports, goodbyes...).
* ``on_tick(position)`` is called about every half second with the timeline's "now".
* ``cleanup()`` is called once at the end: release what the sink holds.
* Anything your bot calls from the event loop (here :meth:`ClipSink.clip`) runs on another
  thread than ``on_audio``: guard shared state with a lock, and keep the locked part short
  (copy, then work on the copy).

Run it (``/clip`` posts the last seconds of a member as a WAV)::

    DISCORD_TOKEN=... python examples/custom_sink.py
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import time
import wave
from typing import Any

import numpy as np

import discord
from discord import app_commands
from discord.ext import listening

log = logging.getLogger("custom_sink")

SAMPLE_RATE = 48000


class _Ring:
    """One member's last ``size`` samples, indexed by timeline position (position % size)."""

    def __init__(self, size: int) -> None:
        self.buf = np.zeros((size, 2), dtype=np.int16)  # 30 s of stereo: 5.8 MB per member
        self.end = 0  # timeline position just after the newest sample written

    def write(self, position: int, samples: np.ndarray) -> None:
        size = len(self.buf)
        if position < self.end:  # overlaps what we have (a concealed frame, then the original)
            samples = samples[self.end - position :]
            position = self.end
        if not len(samples):
            return
        if position > self.end:  # the member was silent (sent nothing): zeros, at most a ring's worth
            self._zero(max(self.end, position - size), position)
        position_end = position + len(samples)
        samples = samples[-size:]  # only the newest ring's worth can be kept
        i = (position_end - len(samples)) % size
        first = min(len(samples), size - i)
        self.buf[i : i + first] = samples[:first]
        self.buf[: len(samples) - first] = samples[first:]
        self.end = position_end

    def _zero(self, start: int, stop: int) -> None:
        size = len(self.buf)
        i, n = start % size, stop - start
        first = min(n, size - i)
        self.buf[i : i + first] = 0
        self.buf[: n - first] = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples for timeline positions [start, stop); silence where nothing was kept."""
        size = len(self.buf)
        out = np.zeros((stop - start, 2), dtype=np.int16)
        lo, hi = max(start, self.end - size), min(stop, self.end)
        if lo < hi:
            i, n = lo % size, hi - lo
            first = min(n, size - i)
            out[lo - start : lo - start + first] = self.buf[i : i + first]
            out[lo - start + first : hi - start] = self.buf[: n - first]
        return out


class ClipSink(listening.AudioSink):
    """Keeps the last ``seconds`` of every member; :meth:`clip` / :meth:`save_clip` on demand.

    Needs PCM: ``vc.listen(ClipSink())`` (``decode=True``, the default).

    Parameters
    ----------
    seconds: :class:`float`
        How much of each member to keep (memory: 192 kB per second per member).
    """

    def __init__(self, seconds: float = 30.0) -> None:
        super().__init__()
        self.seconds = seconds
        self._size = int(seconds * SAMPLE_RATE)
        self._rings: dict[int, _Ring] = {}
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()  # on_audio (sink thread) vs clip() (event loop)
        self._now = (0, time.monotonic())  # newest on_tick: (timeline position, when)
        self._closed = False
        self._warned = False
        #: Newest RTCP sender report per SSRC: maps the sender's RTP clock to wall-clock time.
        self.sender_reports: dict[int, listening.SenderReport] = {}
        #: SSRCs that said goodbye (RTCP BYE): their stream ended.
        self.goodbyes: set[int] = set()

    # -- called by the listening session, on its sink thread ------------------------------

    def on_audio(self, frame: listening.AudioFrame) -> None:
        if frame.user_id is None:
            return  # audio whose owner the voice gateway never named: nobody to clip
        if frame.kind is listening.FrameKind.opus:
            if not self._warned:  # say it once, not 50 times a second
                log.error("ClipSink needs PCM audio: listen(..., decode=True), the default")
                self._warned = True
            return
        samples = np.frombuffer(frame.audio, dtype="<i2").reshape(-1, 2)  # no copy
        with self._lock:
            if self._closed:
                return
            ring = self._rings.get(frame.user_id)
            if ring is None:
                ring = self._rings[frame.user_id] = _Ring(self._size)
                self._names[frame.user_id] = getattr(frame.user, "display_name", None) or str(frame.user_id)
            ring.write(frame.position, samples)

    def on_rtcp(self, packet: listening.RTCPPacket) -> None:
        # Most sinks can ignore RTCP. Sender reports pair a member's RTP timestamp with the
        # wall-clock time it was sent at (for lining audio up with other recordings of the
        # same call); a goodbye says a stream ended (its member left or reconnected).
        if isinstance(packet, listening.SenderReport):
            self.sender_reports[packet.ssrc] = packet
        elif isinstance(packet, listening.Goodbye):
            self.goodbyes.update(packet.ssrcs)

    def on_tick(self, position: int) -> None:
        # The timeline's "now", so that a clip of someone who went quiet ends now, with the
        # silence since their last word, not at their last word.
        self._now = (position, time.monotonic())  # one tuple assignment: atomic

    def cleanup(self) -> None:
        with self._lock:
            self._closed = True
            self._rings.clear()  # free the buffers (5.8 MB per member at 30 s)

    # -- called by your bot, on the event loop (or any thread) ----------------------------

    def now(self) -> int:
        """The timeline position now (a guess between ticks, from the wall clock)."""
        position, at = self._now
        return position + int((time.monotonic() - at) * SAMPLE_RATE)

    def members(self) -> dict[int, str]:
        """The members heard so far: user id -> display name."""
        with self._lock:
            return {uid: self._names[uid] for uid in self._rings}

    def clip(self, user_id: int, seconds: float | None = None, *, end: int | None = None) -> np.ndarray | None:
        """The member's last ``seconds`` (default: all kept) up to ``end`` (default: now).

        Returns an ``(n, 2)`` int16 array of 48 kHz stereo audio, or ``None`` if the member
        was never heard. Silence where they said nothing.
        """
        n = self._size if seconds is None else min(self._size, int(seconds * SAMPLE_RATE))
        with self._lock:  # only the copy is done under the lock
            ring = self._rings.get(user_id)
            if ring is None:
                return None
            stop = max(ring.end, self.now() if end is None else end)
            return ring.read(stop - n, stop)

    def save_clip(
        self, user_id: int, path: str | os.PathLike[str] | io.BufferedIOBase, seconds: float | None = None
    ) -> Any | None:
        """Write :meth:`clip` as a WAV file (a path or a binary file object); blocking I/O,
        so from the event loop run it with ``await asyncio.to_thread(...)``."""
        audio = self.clip(user_id, seconds)
        if audio is None:
            return None
        with wave.open(path if isinstance(path, io.IOBase) else str(path), "wb") as w:  # type: ignore[arg-type]
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(audio.astype("<i2").tobytes())
        return path


# ---------------------------------------------------------------------------------------
# A small bot around it: /listen starts keeping clips, /clip posts one
# ---------------------------------------------------------------------------------------


class ClipBot(discord.Client):
    """``/listen`` joins your voice channel and keeps clips; ``/clip member seconds`` posts one.

    Parameters
    ----------
    seconds: :class:`float`
        How much of each member is kept.
    pool: Optional[:class:`listening.AudioProcessPool`]
        Decoding workers; ``None`` uses the process-wide pool.
    """

    def __init__(self, *, seconds: float = 30.0, pool: listening.AudioProcessPool | None = None) -> None:
        super().__init__(intents=discord.Intents(guilds=True, voice_states=True))
        self.seconds = seconds
        self.pool = pool
        self.sinks: dict[int, ClipSink] = {}
        self.tree = app_commands.CommandTree(self)

        async def ended(sink: ClipSink, error: BaseException | None = None, *, guild_id: int) -> None:
            # listen()'s after: awaited on the event loop once listening ends for any reason
            # (the bot left or was disconnected); extra keywords given to listen() come back.
            if self.sinks.get(guild_id) is sink:
                del self.sinks[guild_id]

        @self.tree.command(name="listen", description="Join your voice channel and keep the last seconds of everyone")
        @app_commands.guild_only()
        async def listen_(interaction: discord.Interaction) -> None:
            voice = getattr(interaction.user, "voice", None)
            if voice is None or voice.channel is None:
                await interaction.response.send_message("Join a voice channel first.", ephemeral=True)
                return
            await interaction.response.defer(thinking=True)
            vc = interaction.guild.voice_client  # type: ignore[union-attr]
            if vc is None:
                vc = await voice.channel.connect(cls=listening.VoiceClient, self_deaf=False)
            if not vc.is_listening():
                sink = ClipSink(self.seconds)
                vc.listen(sink, self.pool, after=ended, guild_id=interaction.guild.id)  # type: ignore[union-attr]
                self.sinks[interaction.guild.id] = sink  # type: ignore[union-attr]
            await interaction.followup.send(
                f"\N{LARGE RED CIRCLE} Listening in {vc.channel.mention}: the last {self.seconds:.0f} s of everyone "
                f"are kept in memory (nothing is saved unless someone uses `/clip`)."
            )

        @self.tree.command(description="Clip that! Post the last seconds of a member")
        @app_commands.guild_only()
        @app_commands.describe(member="Whose audio", seconds="How many seconds (default: all kept)")
        async def clip(
            interaction: discord.Interaction,
            member: discord.Member,
            seconds: app_commands.Range[float, 1, 300] | None = None,
        ) -> None:
            sink = self.sinks.get(interaction.guild.id)  # type: ignore[union-attr]
            if sink is None:
                await interaction.response.send_message("Not listening; `/listen` first.", ephemeral=True)
                return
            data = io.BytesIO()
            # Encoding the WAV touches no Discord state: do it off the event loop.
            if await asyncio.to_thread(sink.save_clip, member.id, data, seconds) is None:
                await interaction.response.send_message(f"I have not heard {member.display_name}.", ephemeral=True)
                return
            data.seek(0)
            name = f"{member.display_name}-clip.wav"
            await interaction.response.send_message(
                f"\N{CLAPPER BOARD} {member.mention}", file=discord.File(data, name)
            )

    async def setup_hook(self) -> None:
        await self.tree.sync()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not token:
        raise SystemExit("set DISCORD_TOKEN to the bot's token")
    listening.init_audio_processing_pool(2)  # decoding workers: under the __main__ guard
    ClipBot().run(token, log_handler=None)
