"""What each file format costs to write: CPU per second of speech and per second of silence,
and the bit rate, through the package's own :class:`AudioFile` classes.

Prints ``RESULT {json}``. The four bundled clips (29.3 s of speech, 48 kHz stereo) are written
20 ms at a time with ``write_pcm``, as a sink's writer thread does; the best of three runs
(``time.process_time``, encoder threads included). Then ten minutes of silence are padded in
one call (``pad_to``), as when a member speaks again after a long pause.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def measure(file_type: Any, options: dict[str, Any], pcm: bytes, directory: Path) -> dict[str, float]:
    seconds = len(pcm) / 4 / 48000
    path = directory / f"speech{file_type.extension}"
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        f = file_type(path, **options)
        for i in range(0, len(pcm), 3840):
            f.write_pcm(pcm[i : i + 3840], i // 4)
        f.close()
        best = min(best, time.process_time() - t0)
    quiet = directory / f"silence{file_type.extension}"
    t0 = time.process_time()
    f = file_type(quiet, **options)
    f.pad_to(600 * 48000)
    f.close()
    return {
        "cpu_per_second": best / seconds,
        "kbit_s": path.stat().st_size * 8 / seconds / 1000,
        "silence_cpu_per_second": (time.process_time() - t0) / 600,
    }


def main() -> None:
    from discord.ext import listening
    from discord.ext.listening.demo import load_clip

    pcm = b"".join(load_clip(name) for name in ("alice", "bob", "carol", "dave"))
    cases = [
        ("wav", listening.WaveAudioFile, {}),
        ("flac", listening.FLACAudioFile, {}),
        ("mp3 128k", listening.MP3AudioFile, {}),
        ("mka opus 96k", listening.MatroskaAudioFile, {}),
        ("m4a aac 128k", listening.M4AAudioFile, {}),
        ("vorbis q0.5", listening.OggVorbisAudioFile, {}),
        ("vorbis q0.0", listening.OggVorbisAudioFile, {"quality": 0.0}),
    ]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, file_type, options in cases:
            out[name] = measure(file_type, options, pcm, Path(tmp))
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
