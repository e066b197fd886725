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


def children_threads_cpu(pids: Iterable[int]) -> dict[tuple[int, int], float]:
    """CPU seconds of each live thread of ``pids``, to the nanosecond rather than the 10 ms
    clock tick of :func:`process_tree_cpu` (``se.sum_exec_runtime`` from
    ``/proc/PID/task/TID/sched``), keyed by (pid, tid). Compare two readings with
    :func:`cpu_between`. For differences of a few ms of CPU a second, where ticks would be
    most of the signal.
    """
    out: dict[tuple[int, int], float] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/sched") as f:
                    for line in f:
                        if line.startswith("se.sum_exec_runtime"):
                            out[(pid, int(tid))] = float(line.split(":", 1)[1]) / 1000.0  # milliseconds
                            break
            except (OSError, ValueError):
                continue  # the thread just ended
    return out


def cpu_between(before: dict[tuple[int, int], float], after: dict[tuple[int, int], float]) -> float:
    """CPU seconds spent between two :func:`children_threads_cpu` readings: a thread that
    started meanwhile counts whole; one that ended meanwhile is not counted (its time left
    with it), so the result is never less than zero."""
    return sum(t - before.get(key, 0.0) for key, t in after.items())


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
    # Collapse per-connection names ("listening-sink:123") into kinds.
    for prefix, kind in (
        ("voice-socket-reader", "socket reader (discord.py)"),
        ("listening-engine", "receive engine"),
        ("listening-drain", "stop drain"),
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


def heap(pids: Iterable[int]) -> int:
    """Bytes of anonymous and shared memory of the given processes, each page divided among
    the processes that map it (``Pss_Anon + Pss_Shmem`` of ``/proc/PID/smaps_rollup``).

    Summed over a process tree it is what the tree allocated, counted once: unlike USS it
    does not drop when a new process maps the same libraries (a decode worker making
    libopus's pages shared), nor count a forked worker's inherited heap twice, and it
    includes shared-memory buffers between processes. Falls back to USS without the file.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                kib = [int(line.split()[1]) for line in f if line.startswith(("Pss_Anon:", "Pss_Shmem:"))]
        except OSError:
            kib = []
        total += 1024 * sum(kib) if len(kib) == 2 else uss([pid])
    return total


def trim_heap() -> None:
    """Hand the C heap's free pages of this process back to the system (glibc ``malloc_trim``),
    so that memory freed long before a reading is not counted in it, nor read later as a drop."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def rss(pids: Iterable[int]) -> int:
    """Resident set size in bytes of the given processes (shared pages counted in each)."""
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def default_jitter_depth() -> float | None:
    """The jitter depth (seconds) ``listening.VoiceClient.listen`` uses when not given one,
    read from its signature; ``None`` if it no longer has such a parameter."""
    import inspect

    from discord.ext import listening

    param = inspect.signature(listening.VoiceClient.listen).parameters.get("jitter_depth")
    if param is None or isinstance(param.default, bool) or not isinstance(param.default, int | float):
        return None
    return float(param.default)


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
