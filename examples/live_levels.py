"""Live audio: a level meter per member, and their speech as utterances for a transcriber.

Two sinks side by side on one ``listen()``:

* :class:`Levels`, a small sink: how loud each member is right now (a peak meter), for a
  "who is speaking" display or auto-ducking music;
* :class:`listening.AudioStream`: each member's speech cut where they pause, handed to your
  code on the event loop as :class:`listening.Utterance` (who, when on the recording's
  timeline, and the audio as 16 kHz mono float32, what speech-to-text models take).

Run it without Discord (members of the local voice server speak the bundled clips)::

    python examples/live_levels.py

With a real bot it is the same code::

    vc = await channel.connect(cls=listening.VoiceClient)
    await follow(vc, on_utterance=transcribe)
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from discord.ext import listening

log = logging.getLogger("live_levels")

SPEECH = listening.PCMFormat(16000, 1, "float32")


class Levels(listening.AudioSink):
    """Each member's level in dBFS: the newest frame's RMS, and a peak meter that falls
    20 dB a second (what an eye can follow). :meth:`levels` may be read from any thread."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._heard: dict[int | None, tuple[float, float, float]] = {}  # user -> (db, peak, when)

    def on_audio(self, frame: listening.AudioFrame) -> None:
        pcm = np.frombuffer(frame.audio, "<i2").astype(np.float32)
        rms = float(np.sqrt(np.mean(pcm * pcm))) if pcm.size else 0.0
        db = 20.0 * math.log10(rms / 32768.0) if rms >= 1.0 else -math.inf
        now = time.monotonic()
        with self._lock:
            _, peak, when = self._heard.get(frame.user_id, (-math.inf, -math.inf, now))
            self._heard[frame.user_id] = (db, max(db, peak - 20.0 * (now - when)), now)

    def levels(self) -> dict[int | None, tuple[float, float]]:
        """``{user_id: (db, peak_db)}``; ``-inf`` dB for a member who stopped sending."""
        now = time.monotonic()
        with self._lock:
            heard = dict(self._heard)
        return {
            uid: (-math.inf if now - when > 0.1 else db, peak - 20.0 * (now - when))
            for uid, (db, peak, when) in heard.items()
        }

    def meter(self, names: dict[int, str], width: int = 30) -> str:
        """The levels as text bars (-60..0 dBFS), one line per member."""
        lines = []
        for uid, (_, peak) in sorted(self.levels().items(), key=lambda kv: kv[0] or 0):
            fill = 0 if peak == -math.inf else int(width * min(1.0, max(0.0, (peak + 60) / 60)))
            lines.append(f"{names.get(uid or 0, str(uid)):>10} {'#' * fill}{'.' * (width - fill)} {peak:6.1f} dB")
        return "\n".join(lines)


async def follow(
    vc: listening.VoiceClient,
    on_utterance: Callable[[listening.Utterance], Awaitable[Any]],
    pool: listening.AudioProcessPool | None = None,
    *,
    levels: Levels | None = None,
) -> None:
    """Listen on ``vc`` until it stops, awaiting ``on_utterance`` for each utterance, in order.

    A slow ``on_utterance`` (a transcriber taking seconds) only makes utterances wait in the
    stream's bounded queue; the receiver never waits for it.
    """
    stream = listening.AudioStream(format=SPEECH)
    vc.listen(listening.FanOutSink(stream, levels or Levels()), pool)
    async for utterance in stream.utterances(end=listening.AfterSilence(0.5), max_length=5.0):
        try:
            await on_utterance(utterance)
        except Exception:
            log.exception("on_utterance raised for %s at %.2fs", utterance.user_id, utterance.start)


# ---------------------------------------------------------------------------------------
# A runnable demonstration on the local voice server (no Discord account needed)
# ---------------------------------------------------------------------------------------


async def demo() -> None:
    from discord.ext.listening.demo import load_clip
    from discord.ext.listening.testing import VoiceServerEmulator

    async def transcribe(u: listening.Utterance) -> None:
        # Stand-in for a real transcriber: await your speech-to-text service with u.audio.
        name = getattr(u.user, "name", u.user_id)
        print(f"  -> {name}: {u.start:5.2f}s + {u.duration:.2f}s ({len(u.audio)} samples at 16 kHz)")

    names = {1001: "alice", 1002: "bob"}
    with listening.AudioProcessPool(2) as pool:
        async with VoiceServerEmulator(dave=True, seed=3) as server:
            alice = await server.add_member(1001, "alice")
            bob = await server.add_member(1002, "bob")
            vc = await server.connect(cls=listening.VoiceClient)
            levels = Levels()
            following = asyncio.create_task(follow(vc, transcribe, pool, levels=levels))

            async def show() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    if levels.levels():
                        print(levels.meter(names), "\n")

            meter = asyncio.create_task(show())
            second = 48000 * 4  # bytes of one second of 48 kHz stereo s16le
            await asyncio.gather(
                alice.speak(load_clip("alice")[: 6 * second]), bob.speak(load_clip("bob")[: 4 * second])
            )
            await asyncio.sleep(1.0)
            meter.cancel()
            vc.stop_listening()
            await following  # ends once the last utterance was handled
            await vc.disconnect()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(demo())
