"""The demo: record simulated members through the real pipeline, with no token and no network.

A local voice server (:class:`~.testing.VoiceServerEmulator`) plays Discord; four members
speak bundled speech clips over DAVE-encrypted RTP with some packet loss; a real
discord.py voice client with :meth:`VoiceClient.listen` records them into per-user files
and a mixed file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime
from importlib import resources
from pathlib import Path

import av
import numpy as np

from .pool import AudioProcessPool
from .recorder import record_channel
from .report import ProgressPrinter
from .sphinx import PocketSphinxRecognizer
from .voice_client import VoiceClient

__all__ = ("CLIPS", "load_clip", "run_demo")

_log = logging.getLogger(__name__)

#: Who says what, when: (user id, name, clip, seconds after recording starts, join late?)
CLIPS: tuple[tuple[int, str, str, float, bool], ...] = (
    (1001, "alice", "alice", 0.3, False),
    (1002, "bob", "bob", 2.0, False),
    (1003, "carol", "carol", 4.0, False),
    (1004, "dave", "dave", 5.5, True),
)


def decode_audio_file(path: str | os.PathLike[str], layout: str = "stereo") -> bytes:
    """Decode an audio file PyAV reads (Ogg Opus, WAV...) to 48 kHz s16le PCM, interleaved
    ``"stereo"`` or ``"mono"`` (FFmpeg's mono-to-stereo upmix is 3 dB down a channel)."""
    with av.open(os.fspath(path)) as container:
        resampler = av.AudioResampler(format="s16", layout=layout, rate=48000)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype("<i2").tobytes()


def load_clip(name: str) -> bytes:
    """Decode a bundled speech clip to 48 kHz stereo s16le PCM."""
    ref = resources.files(__package__).joinpath("data", f"{name}.opus")
    with resources.as_file(ref) as path:
        return decode_audio_file(path)


def clip_text(name: str) -> str:
    """What a bundled speech clip says (``data/<name>.txt``)."""
    return resources.files(__package__).joinpath("data", f"{name}.txt").read_text(encoding="utf-8").strip()


async def run_demo(
    output: Path,
    *,
    file_format: str = "wav",
    loss: float = 0.03,
    seed: int = 1,
    workers: int = 2,
    clips: int | None = None,
    progress_interval: float = 1.0,
    redis: str | None = None,
    transcribe: bool = False,
) -> int:
    """Run the demo: simulated members speak through the local voice server into files.

    Parameters
    ----------
    output: :class:`~pathlib.Path`
        The parent directory; the files go to a sub-directory named after the start time.
    file_format: :class:`str`
        A key of :data:`FORMATS` (``wav``, ``flac``, ``mp3``, ``opus``, ``mka``, ``m4a``, ``vorbis``).
    loss: :class:`float`
        Simulated packet loss, 0..0.5.
    seed: :class:`int`
        Seed of the simulated network.
    workers: :class:`int`
        Decode worker processes.
    clips: Optional[:class:`int`]
        Only the first this many members of :data:`CLIPS` (default: all).
    progress_interval: :class:`float`
        Seconds between progress lines.
    redis: Optional[:class:`str`]
        A Redis URL: the bot publishes to it and a worker beside it writes the files.
    transcribe: :class:`bool`
        Print what each member says as they say it (PocketSphinx), and write it beside the
        audio as ``transcript.vtt`` and ``transcript.jsonl``.

    Returns
    -------
    :class:`int`
        The process exit code: 0, or 1 when listening ended with an error.
    """
    start = datetime.now()
    out_dir = output / start.strftime("%Y-%m-%d_%H-%M-%S")
    plan = CLIPS[: clips or len(CLIPS)]
    pcm = {name: load_clip(clip) for _, name, clip, _, _ in plan}
    print(f"discord-ext-listening demo: {len(plan)} simulated members, DAVE on, {loss:.0%} packet loss")
    print(f"recording to {out_dir}/ as {file_format}")
    print("progress per member: '>' speaking now, seconds of speech heard, packets received, packets lost\n")
    with AudioProcessPool(workers) as pool:
        from .testing import VoiceServerEmulator  # the emulator is only needed by the demo

        async with VoiceServerEmulator(dave=True, loss=loss, jitter=0.004, seed=seed) as server:
            members = {}
            for uid, name, _, _, late in plan:
                members[uid] = await server.add_member(uid, name, join=not late)
            vc = await server.connect(cls=VoiceClient)
            print(
                f"connected: {vc.channel.name!r} in {vc.guild.name!r}, mode {vc.mode}, "
                f"DAVE v{vc.dave_protocol_version} epoch {vc.dave_epoch}"
            )
            names: dict[int | None, str] = {uid: name for uid, name, _, _, _ in plan}

            async def script(progress: ProgressPrinter) -> None:
                async def talk(uid: int, name: str, at: float, late: bool) -> None:
                    await asyncio.sleep(max(0.0, at - 0.4) if late else at)
                    if late:
                        await members[uid].join()
                        print(f"[{progress.line().split(']')[0][1:]}] {name} joined the call (new DAVE epoch)")
                        await asyncio.sleep(0.4)
                    await members[uid].speak(pcm[name])

                await asyncio.gather(*(talk(uid, name, at, late) for uid, name, _, at, late in plan))
                await server.drain()
                await asyncio.sleep(0.3)

            recording = await record_channel(
                vc,
                pool,
                out_dir,
                script,
                file_format=file_format,
                filename="{user_name}",
                names=names,
                interval=progress_interval,
                redis=redis,
                transcript=PocketSphinxRecognizer() if transcribe else None,
                print_lines=transcribe,
            )
    stats = recording.stats
    total = stats.total
    print(
        f"\n{total.received} packets, {total.lost} lost on the network and concealed "
        f"({total.concealed} frames), {sum(total.dropped.values())} dropped; {len(recording.paths)} files written."
    )
    return recording.exit_code
