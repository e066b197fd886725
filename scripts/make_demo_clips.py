"""Regenerate the demo's speech clips (run once by a maintainer; the outputs are committed).

Needs ``espeak-ng`` (a system speech synthesizer) on PATH; users never run this. Each clip is
a different voice and text, encoded to Ogg Opus with PyAV so the package stays small.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import av

OUT = Path(__file__).resolve().parents[1] / "src" / "discord" / "ext" / "listening" / "data"

CLIPS = {
    "alice": (
        "en-us+f3",
        165,
        60,
        "Good morning everyone. Let's start with the release status. "
        "The voice receiver decodes every speaker in order, even when packets are lost.",
    ),
    "bob": (
        "en-gb+m3",
        150,
        40,
        "Thanks Alice. The recordings line up sample for sample, "
        "so you can lay every track on top of the others in an editor.",
    ),
    "carol": (
        "en-gb-scotland+f4",
        175,
        70,
        "One more thing: end to end encryption is on by default now, "
        "and the bot only hears what it can decrypt as a member of the call.",
    ),
    "dave": ("en-us+m7", 140, 30, "Sounds good to me. Let's ship it on Friday and write the release notes tomorrow."),
}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (voice, speed, pitch, text) in CLIPS.items():
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / f"{name}.wav"
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text], check=True
            )
            dst = OUT / f"{name}.opus"
            with av.open(str(wav)) as src, av.open(str(dst), "w", format="ogg") as out:
                stream = out.add_stream("libopus", rate=48000, layout="mono")
                stream.bit_rate = 24000
                resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
                for frame in src.decode(audio=0):
                    for f in resampler.resample(frame):
                        for packet in stream.encode(f):
                            out.mux(packet)
                for f in resampler.resample(None):
                    for packet in stream.encode(f):
                        out.mux(packet)
                for packet in stream.encode(None):
                    out.mux(packet)
            print(f"{dst.name}: {dst.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
