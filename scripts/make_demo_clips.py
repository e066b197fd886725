"""Regenerate the demo's speech clips (run once by a maintainer; the outputs are committed).

Needs ``espeak-ng`` (a system speech synthesizer) on PATH; users never run this. Each clip is
a different voice and text (``<name>.txt``), encoded to Ogg Opus with PyAV so the package stays small.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import av

OUT = Path(__file__).resolve().parents[1] / "src" / "discord" / "ext" / "listening" / "data"

#: Voice, speed and pitch of each clip; its text is in ``<name>.txt`` beside it (tests measure
#: word error rate against it).
VOICES = {
    "alice": ("en-us+f3", 165, 60),
    "bob": ("en-gb+m3", 150, 40),
    "carol": ("en-gb-scotland+f4", 175, 70),
    "dave": ("en-us+m7", 140, 30),
}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (voice, speed, pitch) in VOICES.items():
        text = (OUT / f"{name}.txt").read_text().strip()
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
