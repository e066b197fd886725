"""Shared pieces of the benchmarks: the speech corpus, CPU and memory accounting.

The corpus is the project's four bundled speech clips (espeak-ng voices, ~29 s together),
decoded to 48 kHz stereo and re-encoded by libopus at 64 kbit/s, Discord's default channel
bitrate, with in-band FEC as Discord clients send it. Every benchmark uses these same Opus
frames; speaker ``i`` starts ``37 * i`` frames into the corpus so speakers differ.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

#: Discord's default voice channel bitrate.
BITRATE = 64000
PACKETS_PER_SECOND = 50
FRAME_SECONDS = 0.02
CLIPS = ("alice", "bob", "carol", "dave")

_corpus: list[bytes] | None = None


def speech_pcm() -> bytes:
    """The bundled clips, end to end, as 48 kHz stereo s16le PCM."""
    from discord.ext.listening.demo import load_clip

    return b"".join(load_clip(name) for name in CLIPS)


def speech_frames() -> list[bytes]:
    """The corpus: 20 ms Opus frames of the bundled speech at :data:`BITRATE` (cached)."""
    global _corpus
    if _corpus is None:
        from discord.ext.listening.opus import FRAME_BYTES, OpusEncoder

        pcm = speech_pcm()
        enc = OpusEncoder(BITRATE)  # FEC on, 10% expected loss: what Discord clients send
        _corpus = [enc.encode(pcm[i : i + FRAME_BYTES]) for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
    return _corpus


def speaker_frames(index: int, count: int) -> list[bytes]:
    """``count`` consecutive corpus frames for speaker ``index`` (wrapping around)."""
    frames = speech_frames()
    start = (37 * index) % len(frames)
    return [frames[(start + k) % len(frames)] for k in range(count)]


# -- CPU accounting ------------------------------------------------------------------------


def process_tree_cpu(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the given processes (missing ones count 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def thread_cpu() -> dict[str, float]:
    """CPU seconds of every thread of this process, keyed by a short thread-kind name."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = _kind(names.get(t.id, "other"))
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def _kind(name: str) -> str:
    # Collapse per-connection names ("listening-pump:123") into kinds.
    for prefix, kind in (
        ("voice-socket-reader", "socket reader (discord.py)"),
        ("listening-pump", "pump"),
        ("listening-sink", "sink dispatcher"),
        ("listening-pool", "pool threads"),
        ("MainThread", "event loop"),
        ("packet-router", "packet router"),
        ("sink-event-router", "event router"),
        ("speaking-timer", "speaking timer"),
        ("voice-udp-keepalive", "keepalive"),
    ):
        if name.startswith(prefix):
            if kind == "pool threads":
                if name.endswith("-reader"):
                    return "pool reader"
                if name.endswith("-writer"):
                    return "pool writer"
                return "pool monitor"
            return kind
    return "other threads"


def uss(pids: Iterable[int]) -> int:
    """Unique set size in bytes of the given processes (memory only they use)."""
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100.0 * (len(values) - 1))))
    return values[k]


def machine() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info


def now() -> float:
    return time.monotonic()
