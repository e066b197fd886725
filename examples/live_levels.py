"""Live audio: a level meter per member, and their speech in chunks for a transcriber.

:class:`LiveSpeech` is a sink that looks at each member's audio as it arrives:

* a **level meter**: :meth:`LiveSpeech.levels` tells, any time, how loud each member is and
  whether they are talking (for a "who is speaking" display, or auto-ducking music);
* a **voice-activity chunker**: each member's speech is cut into utterances of at most
  ``chunk_seconds``, which are handed to your callback with their place on the recording's
  timeline: ``SpeechChunk(user, position, pcm)``. Send them to a speech-to-text service,
  a keyword spotter, a moderation model...

The callback runs on the event loop, never on the sink thread: sink callbacks must return
quickly (a slow sink loses audio, counted as ``DropReason.sink_overflow``), while a
transcriber can take seconds. The sink only cuts chunks and passes them to the loop with
``loop.call_soon_threadsafe``; a task there awaits your callback, one chunk at a time.

Run it without Discord (members of the local voice server speak the bundled clips)::

    python examples/live_levels.py

With a real bot it is the same sink::

    vc = await channel.connect(cls=listening.VoiceClient)
    live = LiveSpeech(on_chunk=transcribe)        # create it on the event loop
    vc.listen(live)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from discord.ext import listening

log = logging.getLogger("live_levels")

SAMPLE_RATE = 48000  # every PCM frame: 20 ms of 48 kHz stereo signed 16-bit
FRAME = 960  # samples per channel in one frame


@dataclass
class SpeechChunk:
    """A piece of one member's speech.

    Attributes
    ----------
    user: Union[:class:`discord.Member`, :class:`discord.Object`, None]
        Who spoke.
    position: :class:`int`
        The chunk's first sample on the recording timeline (48 kHz; 0 = when listening
        started). Chunks of different members line up on it.
    pcm: :class:`bytes`
        48 kHz stereo s16le, contiguous from ``position`` (short gaps inside are silence).
    final: :class:`bool`
        ``True`` if the member paused after it (an utterance ended); ``False`` if it was cut
        at ``chunk_seconds`` and the next chunk continues it.
    index: :class:`int`
        Counts this member's chunks from 0.
    """

    user: Any
    position: int
    pcm: bytes
    final: bool
    index: int

    @property
    def user_id(self) -> int | None:
        return None if self.user is None else self.user.id

    @property
    def start(self) -> float:
        """Seconds from the start of listening."""
        return self.position / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.pcm) / 4 / SAMPLE_RATE

    def samples(self) -> np.ndarray:
        """The audio as an ``(n, 2)`` int16 array."""
        return np.frombuffer(self.pcm, dtype="<i2").reshape(-1, 2)

    def mono_16k(self) -> np.ndarray:
        """Mono float32 at 16 kHz in -1..1: what most speech-to-text models take (Whisper...)."""
        import av  # PyAV comes with discord-ext-listening

        frame = av.AudioFrame.from_ndarray(self.samples().reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


@dataclass
class Level:
    """One member's loudness, from :meth:`LiveSpeech.levels`."""

    db: float  # the newest frame's RMS level in dBFS (-inf: silent or not sending)
    peak_db: float  # a peak meter: jumps up, falls 20 dB per second
    speaking: bool  # inside an utterance, by the voice activity detector


class _UserState:
    """Per-member state. The sink thread owns it; levels() reads db/peak_db/heard_at under
    the sink's lock (so the three agree) and ``active`` (a bool: reading it is atomic)."""

    def __init__(self, pre_roll: int) -> None:
        self.user: Any = None
        self.db = float("-inf")
        self.peak_db = float("-inf")
        self.heard_at = 0.0  # time.monotonic() of the newest frame
        self.next_position: int | None = None  # where this member's next frame starts
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=max(1, pre_roll))  # newest frames
        self.active = False  # inside an utterance
        self.continuing = False  # the last chunk sent was cut at chunk_seconds
        self.chunk: list[bytes] = []  # the chunk being collected, contiguous from chunk_start
        self.chunk_len = 0  # samples in it
        self.chunk_start = 0
        self.voiced_end = 0  # timeline position just after the newest loud frame
        self.voiced = 0  # loud samples in the chunk
        self.count = 0  # chunks sent

    def append(self, position: int, audio: bytes) -> None:
        gap = position - (self.chunk_start + self.chunk_len)
        if gap > 0:  # a short hole in the member's audio: silence keeps the chunk on the timeline
            self.chunk.append(bytes(gap * 4))
            self.chunk_len += gap
        self.chunk.append(audio)
        self.chunk_len += len(audio) // 4


class LiveSpeech(listening.AudioSink):
    """A per-member level meter and voice-activity chunker (see the module's docs).

    Create it on the event loop (inside ``async def``); it delivers chunks there.

    Parameters
    ----------
    on_chunk: Callable[[SpeechChunk], Any]
        Called with every chunk, on the event loop, one at a time, in order. May be
        ``async``. A blocking, CPU-heavy transcriber belongs in a thread:
        ``on_chunk=lambda c: asyncio.to_thread(model.transcribe, c.mono_16k())``.
    chunk_seconds: :class:`float`
        Longest chunk; longer speech is cut into several (all ``final=False`` but the last).
    threshold_db: :class:`float`
        A frame louder than this (RMS, dBFS) is speech. Discord's noise suppression leaves
        near-digital silence between words, so -45 dBFS suits most microphones.
    hangover: :class:`float`
        Seconds of quiet (or of no packets: Discord clients stop sending while their user is
        silent) that end an utterance.
    pre_roll: :class:`float`
        Seconds of audio kept from before the first loud frame, so soft word starts are kept.
    min_speech: :class:`float`
        Utterances with less loud audio than this are dropped (clicks, coughs, a key press).
    max_pending: :class:`int`
        Chunks waiting for the callback beyond this are dropped and counted in
        :attr:`dropped_chunks`: a transcriber that cannot keep up must not eat all memory.
    """

    def __init__(
        self,
        on_chunk: Callable[[SpeechChunk], Awaitable[Any] | Any],
        *,
        chunk_seconds: float = 5.0,
        threshold_db: float = -45.0,
        hangover: float = 0.5,
        pre_roll: float = 0.2,
        min_speech: float = 0.25,
        max_pending: int = 200,
    ) -> None:
        super().__init__()
        if chunk_seconds <= hangover:
            raise ValueError("chunk_seconds must be longer than hangover")
        self.on_chunk = on_chunk
        self.chunk_samples = int(chunk_seconds * SAMPLE_RATE)
        self.threshold_db = threshold_db
        self.hangover = int(hangover * SAMPLE_RATE)
        self.pre_roll = int(pre_roll * SAMPLE_RATE)
        self.min_speech = int(min_speech * SAMPLE_RATE)
        self.max_pending = max_pending
        #: Chunks dropped because the callback fell more than ``max_pending`` behind.
        self.dropped_chunks = 0
        self._users: dict[int | None, _UserState] = {}
        self._lock = threading.Lock()  # the sink thread writes what levels() reads on the loop
        self._warned = False
        self._loop = asyncio.get_running_loop()  # raises outside the event loop: create it there
        self._queue: asyncio.Queue[SpeechChunk | None] = asyncio.Queue()
        self._consumer = self._loop.create_task(self._consume(), name="LiveSpeech consumer")

    # -- the sink side: runs on the listening session's sink thread ---------------------

    def on_audio(self, frame: listening.AudioFrame) -> None:
        if frame.kind is listening.FrameKind.opus:
            if not self._warned:  # say it once, not 50 times a second
                log.error("LiveSpeech needs PCM audio: listen(..., decode=True), the default")
                self._warned = True
            return
        st = self._users.get(frame.user_id)
        if st is None:
            with self._lock:  # levels() iterates the dict from another thread
                st = self._users[frame.user_id] = _UserState(-(-self.pre_roll // FRAME))
        if frame.user is not None:
            st.user = frame.user
        pcm = np.frombuffer(frame.audio, dtype="<i2").astype(np.float32)
        rms = float(np.sqrt(np.mean(pcm * pcm))) if len(pcm) else 0.0
        db = 20.0 * float(np.log10(rms / 32768.0)) if rms >= 1.0 else float("-inf")
        now = time.monotonic()
        with self._lock:
            # a peak meter: rises at once, falls 20 dB/s (what an eye can follow)
            st.peak_db = max(db, st.peak_db - 20.0 * (now - st.heard_at))
            st.db = db
            st.heard_at = now

        position = frame.position
        if st.next_position is not None and position < st.next_position:
            return  # within audio already taken (a concealed frame, then the late original)
        st.next_position = position + frame.samples
        if st.active and position - st.voiced_end >= self.hangover:
            self._emit(st, final=True)  # quiet, or no packets at all, for long enough
        loud = db > self.threshold_db
        if st.active:
            st.append(position, frame.audio)
            if loud:
                st.voiced_end = position + frame.samples
                st.voiced += frame.samples
            if st.chunk_len >= self.chunk_samples:
                self._emit(st, final=False)  # long speech: cut here, the next chunk goes on
        elif loud:
            # An utterance starts, with the pre-roll: the frames just before this one.
            pre = [(p, a) for p, a in st.recent if position - p <= self.pre_roll]
            st.active, st.chunk, st.chunk_len = True, [], 0
            st.chunk_start = pre[0][0] if pre else position
            for p, a in pre:
                st.append(p, a)
            st.append(position, frame.audio)
            st.voiced_end = position + frame.samples
            st.voiced = frame.samples
        st.recent.append((position, frame.audio))

    def on_tick(self, position: int) -> None:
        # Every half second, with the timeline's "now": close the utterances of members who
        # stopped sending. Frames trail "now" by the jitter buffer and decoding (~0.1 s).
        for st in self._users.values():
            if st.active and position - st.voiced_end >= self.hangover + SAMPLE_RATE // 8:
                self._emit(st, final=True)

    def on_stop(self, position: int) -> None:
        for st in self._users.values():
            if st.active:
                self._emit(st, final=True)

    def cleanup(self) -> None:
        # The last call on the sink thread: tell the consumer task that nothing more comes.
        self._to_loop(None)

    def _emit(self, st: _UserState, *, final: bool) -> None:
        pcm = b"".join(st.chunk)
        if final:  # end a little (100 ms) after the last loud frame, not after the whole hangover
            keep = max(0, st.voiced_end - st.chunk_start) + 5 * FRAME
            pcm = pcm[: min(st.chunk_len, keep) * 4]
        # An utterance with too little speech is noise, unless it finishes a cut one.
        send = not final or st.continuing or st.voiced >= self.min_speech
        chunk = SpeechChunk(st.user, st.chunk_start, pcm, final, st.count)
        if final:
            st.active = st.continuing = False
            st.recent.clear()
        else:
            st.continuing = True
        st.chunk_start += st.chunk_len  # a continuation starts where this chunk ends
        st.chunk, st.chunk_len, st.voiced = [], 0, 0
        if send:
            st.count += 1
            self._to_loop(chunk)

    def _to_loop(self, item: SpeechChunk | None) -> None:
        # The hand-off between threads: asyncio objects may only be touched on their loop.
        try:
            self._loop.call_soon_threadsafe(self._enqueue, item)
        except RuntimeError:  # the event loop is closed: nobody is left to receive it
            log.debug("event loop closed; chunk dropped")

    # -- the event loop side -------------------------------------------------------------

    def _enqueue(self, item: SpeechChunk | None) -> None:
        if item is not None and self._queue.qsize() >= self.max_pending:
            self.dropped_chunks += 1
            log.warning("the chunk callback is falling behind: %d chunks dropped", self.dropped_chunks)
            return
        self._queue.put_nowait(item)

    async def _consume(self) -> None:
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            try:
                result = self.on_chunk(chunk)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("the chunk callback raised (chunk of user %s at %.2fs)", chunk.user_id, chunk.start)

    async def drain(self) -> None:
        """Wait until the callback has seen every chunk (after listening ended)."""
        await asyncio.shield(self._consumer)

    def levels(self) -> dict[int | None, Level]:
        """Every member's level now. Safe to call from any thread (e.g. the event loop)."""
        now = time.monotonic()
        out = {}
        with self._lock:
            for uid, st in self._users.items():
                quiet = now - st.heard_at > 0.1  # no packet for 100 ms: they stopped sending
                peak = st.peak_db - 20.0 * (now - st.heard_at)
                out[uid] = Level(float("-inf") if quiet else st.db, peak, st.active)
        return out

    def meter(self, names: dict[int, str] | None = None, width: int = 30) -> str:
        """The levels as text bars, one line per member (-60..0 dBFS)."""
        lines = []
        for uid, level in sorted(self.levels().items(), key=lambda kv: kv[0] or 0):
            name = (names or {}).get(uid or 0) or str(uid)
            fill = 0 if level.peak_db == float("-inf") else int(width * min(1.0, max(0.0, (level.peak_db + 60) / 60)))
            db = "  -inf" if level.peak_db == float("-inf") else f"{level.peak_db:6.1f}"
            lines.append(
                f"{name:>10} {'#' * fill}{'.' * (width - fill)} {db} dB {'speaking' if level.speaking else ''}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# A runnable demonstration on the local voice server (no Discord account needed)
# ---------------------------------------------------------------------------------------


async def demo() -> None:
    from discord.ext.listening.demo import load_clip
    from discord.ext.listening.testing import VoiceServerEmulator

    async def transcribe(chunk: SpeechChunk) -> None:
        # Stand-in for a real transcriber: await your speech-to-text service here.
        audio = chunk.mono_16k()
        name = getattr(chunk.user, "name", chunk.user_id)
        kind = "end of utterance" if chunk.final else "continues"
        print(
            f"  -> chunk #{chunk.index} of {name}: {chunk.start:5.2f}s + {chunk.duration:.2f}s "
            f"({len(audio)} samples at 16 kHz, {kind})"
        )

    with listening.AudioProcessPool(2) as pool:
        async with VoiceServerEmulator(dave=True, seed=3) as server:
            alice = await server.add_member(1001, "alice")
            bob = await server.add_member(1002, "bob")
            vc = await server.connect(cls=listening.VoiceClient)
            live = LiveSpeech(transcribe, chunk_seconds=3.0)
            vc.listen(live, pool)
            names = {1001: "alice", 1002: "bob"}

            async def show() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    if live.levels():  # nobody heard yet: nothing to show
                        print(live.meter(names), "\n")

            meter = asyncio.create_task(show())
            await asyncio.gather(
                alice.speak(load_clip("alice")[: 4 * SAMPLE_RATE * 6]),
                bob.speak(load_clip("bob")[: 4 * SAMPLE_RATE * 4]),
            )
            await asyncio.sleep(1.0)
            meter.cancel()
            vc.stop_listening()
            await vc.wait_for_listen_ready(timeout=10)
            await live.drain()
            await vc.disconnect()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(demo())
