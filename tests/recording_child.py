"""Helpers for tests/test_recording.py, and the process its SIGKILL test kills.

As a script (``python tests/recording_child.py OUT_DIR``): the local voice server, a real
discord.py voice connection over DAVE, ``VoiceClient.listen(decode=False)`` into one
``AudioFileSink`` per format (WAV, FLAC, MP3, Ogg Opus, each with a mixed track) while two
members talk until the parent kills the process. ``decode=False`` keeps the decode pool's
worker processes out of it (nothing is left behind by the kill); the PCM files then decode
the Opus themselves, with the same libopus the pool uses. One JSON object per line on
stdout: first ``{"origin": ...}`` (the recording's t = 0, ``time.monotonic()``, a clock
shared by every process on the machine), then one ``{"member", "start", "clip"}`` per spurt
as it starts (``start`` on the same clock), and every 0.1 s ``{"t", "sink"}``: the timeline
position up to which the sinks had been handed audio at time ``t`` (how far the recording
process had got: on a starved machine it falls behind the clock).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

RATE = 48000
FRAME = 960

_CLIPS: dict[str, np.ndarray] = {}


def clip(name: str, start: float, seconds: float) -> bytes:
    """``seconds`` of a bundled espeak-ng clip from ``start`` s (48 kHz stereo s16le)."""
    from discord.ext.listening.demo import load_clip

    if name not in _CLIPS:
        _CLIPS[name] = np.frombuffer(load_clip(name), "<i2").reshape(-1, 2)
    a, b = round(start * RATE), round((start + seconds) * RATE)
    return _CLIPS[name][a:b].tobytes()


class PreEncoded:
    """Stands in for a simulated member's Opus encoder, with the packets encoded in advance.

    ``speak()`` encodes a whole spurt on the event loop before its first packet leaves
    (~25 ms for 0.7 s of audio on an idle core, much more on a busy one), which makes that
    packet late and stalls every other member's packets meanwhile. A real client's encoder
    keeps pace in its own process. Same encoder, same input order: the same bytes.
    """

    def __init__(self, member: Any, audio: list[bytes]) -> None:
        self.real = member.sender._encoder
        chunks = []
        for data in audio:
            data += bytes(-len(data) % (FRAME * 4))
            chunks += [data[i : i + FRAME * 4] for i in range(0, len(data), FRAME * 4)]
        self.queue = deque((c, self.real.encode(c)) for c in chunks)
        self.misses = 0
        member.sender._encoder = self

    def encode(self, pcm: bytes) -> bytes:
        if self.queue and self.queue[0][0] == pcm:
            return self.queue.popleft()[1]
        self.misses += 1
        return self.real.encode(pcm)


#: What each member says in the killed recording: (pause before, clip, from, seconds).
CRASH_PLAN = {
    "alice": [
        (0.2, "alice", 0.0, 1.0),
        (0.1, "alice", 1.5, 1.0),
        (0.1, "alice", 3.0, 1.0),
        (0.1, "alice", 4.5, 1.0),
        (0.1, "alice", 6.0, 1.0),
    ],
    "bob": [
        (0.6, "bob", 1.3, 0.8),
        (0.4, "bob", 2.4, 1.0),
        (0.1, "bob", 4.0, 1.0),
        (0.3, "bob", 5.2, 1.0),
        (0.1, "bob", 6.3, 1.0),
    ],
}


async def _main(out: Path) -> None:
    from discord.ext import listening
    from discord.ext.listening.testing import VoiceServerEmulator

    def say(**obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async with VoiceServerEmulator(seed=31) as server:
        members = {
            "alice": await server.add_member(2001, "alice", clock="webrtc"),
            "bob": await server.add_member(2002, "bob", clock="discordpy"),
        }
        vc = await server.connect(cls=listening.VoiceClient)
        for name, member in members.items():  # before the recording starts: it takes a while
            PreEncoded(member, [clip(c, a, d) for _, c, a, d in CRASH_PLAN[name]])

        class Progress(listening.AudioSink):
            def __init__(self) -> None:
                super().__init__()
                self.newest = 0
                self.said = 0.0
                self.lock = threading.Lock()

            def on_audio(self, frame: listening.AudioFrame) -> None:
                self.newest = max(self.newest, frame.position + frame.samples)
                now = time.monotonic()
                if now - self.said >= 0.1:
                    self.said = now
                    say(t=now, sink=self.newest)

        sinks = [
            listening.AudioFileSink(cls, out / cls.__name__, mixed=True, filename="{user_name}")
            for cls in (
                listening.WaveAudioFile,
                listening.FLACAudioFile,
                listening.MP3AudioFile,
                listening.OggOpusAudioFile,
            )
        ]
        vc.listen(listening.FanOutSink(*sinks, Progress()), decode=False)
        say(origin=vc._last_session.origin)

        async def talk(name: str) -> None:
            member = members[name]
            for pause, c, a, d in CRASH_PLAN[name]:
                await asyncio.sleep(pause)
                before = len(member.sent.spurts)
                task = asyncio.create_task(member.speak(clip(c, a, d)))
                while len(member.sent.spurts) == before and not task.done():
                    await asyncio.sleep(0)
                start = server._to_loop_time(member.sent.spurts[-1].start)
                say(member=name, start=start, clip=[c, a, d])
                await task

        await asyncio.gather(*(talk(n) for n in CRASH_PLAN))
        await asyncio.sleep(30)  # the parent kills us long before


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1])))
