"""What the event-loop path costs per frame: AudioStream's frames, utterances, the live mix,
with and without resampling, against the libopus decode of the same frames.

Run in a fresh process by run.py (prints ``RESULT {json}``). The corpus of common.py decoded
once (10 speakers, 10 s each, their frames interleaved as the dispatcher hands them over), then
fed to one ``AudioStream`` per case by a thread, as the dispatcher would, while the event loop
drains its consumer. CPU of the whole process (``time.process_time``: both threads) per frame,
best of ``--repeat`` passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

SPEAKERS = 10
SECONDS = 10.0


def decoded_frames() -> tuple[list[Any], float]:
    """The frames the sink would get, and the libopus decode cost of each (us)."""
    import discord
    from discord.ext import listening
    from discord.ext.listening.opus import OpusDecoder

    n = int(SECONDS * 50)
    opus = [common.speaker_frames(i, n) for i in range(SPEAKERS)]
    per_speaker = []
    t0 = time.process_time()
    for packets in opus:
        dec = OpusDecoder()
        per_speaker.append([dec.decode(p) for p in packets])
    decode_us = (time.process_time() - t0) / (n * SPEAKERS) * 1e6
    frames = []
    for k in range(n):
        for i in range(SPEAKERS):
            user = discord.Object(id=1000 + i)
            frames.append(
                listening.AudioFrame(user, i, k, 960 * k, per_speaker[i][k], listening.FrameKind.decoded, 960 * k, 0.0)
            )
    return frames, decode_us


async def one_pass(frames: list[Any], case: str) -> float:
    from discord.ext import listening

    fmt = listening.PCMFormat(16000, 1, "float32") if case.endswith("16k") else None
    stream = listening.AudioStream(format=fmt, max_queue=len(frames) + 10)
    if case.startswith("frames"):
        consumer = stream.__aiter__()
    elif case.startswith("utterances"):
        consumer = stream.utterances(max_length=5.0)
    else:
        consumer = stream.mixed()

    def feed() -> None:
        for f in frames:
            stream.on_audio(f)
        stream.on_stop(frames[-1].position + 960)

    t0 = time.process_time()
    feeder = threading.Thread(target=feed)
    feeder.start()
    async for _ in consumer:
        pass
    feeder.join()
    return (time.process_time() - t0) / len(frames) * 1e6


CASES = ("frames", "frames 16k", "utterances", "utterances 16k", "mixed", "mixed 16k")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    frames, decode_us = decoded_frames()
    result: dict[str, Any] = {"frame_count": len(frames), "speakers": SPEAKERS, "opus_decode_us": decode_us}
    for case in CASES:
        result[case] = min(asyncio.run(one_pass(frames, case)) for _ in range(args.repeat))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
