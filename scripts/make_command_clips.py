"""Regenerate the spoken commands the voice-command tests play (run by a maintainer; the
outputs in ``tests/data/voice_commands`` are committed, so the tests hear the same audio on
every run: espeak-ng's output differs by a few samples from one call to the next).

Needs ``pip install espeakng-loader`` (a wheel of libespeak-ng and its voices; no system
package). Each simulated member gets a US English espeak-ng voice, PocketSphinx's model being
US English, and says four commands and five distractors in a shuffled order: short phrases
sharing the commands' words, and sentences with the commands inside.
"""

from __future__ import annotations

import ctypes
import json
import random
import sys
from pathlib import Path

import av
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "voice_commands"

COMMANDS = ["start recording", "stop recording", "skip this song", "pause the music", "volume up", "volume down"]
DISTRACTORS = [
    "stop it", "start over", "next one", "turn it up", "the music", "skip it", "recording now", "pause",
    "volume", "sounds good", "play that again", "what song is this", "let's stop the recording after this song",
    "can you turn the volume up a little", "I will skip the music tonight", "we start at noon tomorrow",
    "the recording sounds good to me", "pause for a second and listen", "this song is too loud",
    "I stopped recording last week", "can we start recording now please", "who wants to pick the music",
    "turn the volume down a bit", "hello everyone", "stop", "start", "music please", "skip", "volume is fine",
    "recording", "stop talking", "the song", "start the game", "up and down", "this is fun",
    "I'm recording a video", "please stop the music", "skip the next part", "turn down the music please",
    "the volume is too high for me", "I love this song so much", "start with the first one",
    "did you stop the recording", "who paused the video", "we should skip this meeting",
    "good morning everyone", "can you hear me",
]  # fmt: skip
#: The members' voices: espeak-ng's US English variants that PocketSphinx transcribes best
#: (two of the twelve, +f3 and +f4, it mishears far more: see BENCHMARKS.md).
VOICES = ["en-us", "en-us+klatt4", "en-us+m6", "en-us+klatt", "en-us+m1", "en-us+f2", "en-us+klatt3", "en-us+m7"]
RATE, PITCH = 165, 45  # words a minute, 0..99: not among the settings the defaults were chosen on
GAP = 0.3  # seconds of silence between two items in a member's file
COMMANDS_EACH, DISTRACTORS_EACH = 4, 5


class Espeak:
    """libespeak-ng from the ``espeakng-loader`` wheel, synchronous, through ctypes."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._chunks: list[np.ndarray] = []
        self._callback = callback(self._collect)  # kept: the library holds only a pointer
        self.rate = self._lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0x8000)
        if self.rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes.Array[ctypes.c_short], count: int, events: int) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def say(self, text: str, voice: str) -> np.ndarray:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self._lib.espeak_SetParameter(1, RATE, 0)
        self._lib.espeak_SetParameter(3, PITCH, 0)
        self._chunks.clear()
        data = text.encode()
        self._lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)  # UTF-8, from the start
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks)


def _encode(pcm: np.ndarray, rate: int, path: Path) -> int:
    """Ogg Opus, mono 48 kHz; returns the samples written at 48 kHz."""
    written = 0
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        stream.bit_rate = 24000
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            written += chunk.samples
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return written


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    espeak = Espeak()
    script: dict[str, object] = {"commands": COMMANDS, "rate": RATE, "pitch": PITCH, "members": []}
    members: list[dict[str, object]] = []
    for i, voice in enumerate(VOICES):
        texts = [COMMANDS[(i + k) % len(COMMANDS)] for k in range(COMMANDS_EACH)]
        texts += [DISTRACTORS[(DISTRACTORS_EACH * i + k) % len(DISTRACTORS)] for k in range(DISTRACTORS_EACH)]
        random.Random(i).shuffle(texts)
        gap = np.zeros(int(GAP * espeak.rate), np.int16)
        parts, items, at = [], [], 0
        for text in texts:
            audio = espeak.say(text, voice)
            start = at + len(gap)
            parts += [gap, audio]
            at = start + len(audio)
            items.append({"text": text, "start": start * 48000 // espeak.rate, "end": at * 48000 // espeak.rate})
        parts.append(gap)
        name = voice.replace("+", "_") + ".opus"
        samples = _encode(np.concatenate(parts), espeak.rate, OUT / name)
        members.append({"voice": voice, "file": name, "samples": samples, "items": items})
        print(f"{name}: {(OUT / name).stat().st_size} bytes, {len(items)} items")
    script["members"] = members
    (OUT / "script.json").write_text(json.dumps(script, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
