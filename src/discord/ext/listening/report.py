"""Live progress and the closing summary of a recording, for the command line."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from .frames import AudioFrame
from .sink import AudioSink
from .stats import ListenStats

__all__ = ("ProgressPrinter", "SpeechMeter", "summary_table")

#: Frames quieter than this RMS (of 16-bit samples, about -50 dBFS) do not count as speech.
SPEECH_RMS = 100.0


@dataclass
class _UserMeter:
    name: str
    speech_frames: int = 0
    last_speech: float = 0.0
    level_db: float = -120.0


class SpeechMeter(AudioSink):
    """Counts seconds of speech per user and their current level (a sink that only measures)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.users: dict[int | None, _UserMeter] = {}

    def on_audio(self, frame: AudioFrame) -> None:
        if frame.kind.value == "opus":
            return
        samples = np.frombuffer(frame.audio, dtype="<i2").astype(np.float32)
        rms = float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0
        with self._lock:
            meter = self.users.get(frame.user_id)
            if meter is None:
                name = getattr(frame.user, "display_name", None) or str(frame.user_id)
                meter = self.users[frame.user_id] = _UserMeter(name)
            meter.level_db = 20 * np.log10(max(rms, 1.0) / 32768)
            if rms >= SPEECH_RMS:
                meter.speech_frames += 1
                meter.last_speech = time.monotonic()

    def speech_seconds(self, user_id: int | None) -> float:
        meter = self.users.get(user_id)
        return 0.0 if meter is None else meter.speech_frames * 0.02

    def speaking(self, user_id: int | None, within: float = 0.3) -> bool:
        meter = self.users.get(user_id)
        return meter is not None and time.monotonic() - meter.last_speech < within


@dataclass
class ProgressPrinter:
    """Prints one status line per interval: who speaks, seconds heard, packets, losses."""

    stats: ListenStats
    meter: SpeechMeter
    names: dict[int | None, str] = field(default_factory=dict)
    out: TextIO = field(default_factory=lambda: sys.stdout)  # the stdout of when it is made, not of import
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        parts = []
        for uid, s in sorted(self.stats.users.items(), key=lambda kv: str(self.names.get(kv[0], kv[0]))):
            name = self.names.get(uid) or (self.meter.users[uid].name if uid in self.meter.users else str(uid))
            mark = ">" if self.meter.speaking(uid) else " "
            parts.append(f"{mark}{name:<8} {self.meter.speech_seconds(uid):5.1f}s {s.received:5d} pkt {s.lost:3d} lost")
        elapsed = time.monotonic() - self.started
        return f"[{elapsed:5.1f}s] " + (" | ".join(parts) if parts else "waiting for audio...")

    def print(self) -> None:
        print(self.line(), file=self.out, flush=True)


def summary_table(
    stats: ListenStats,
    meter: SpeechMeter,
    files: dict[int | None, Path],
    names: dict[int | None, str],
    mixed: Path | None = None,
) -> str:
    """The closing table: user, speech seconds, packets, lost, concealed, file."""
    rows = [("user", "speech s", "packets", "lost", "concealed", "file")]
    for uid, s in sorted(stats.users.items(), key=lambda kv: str(names.get(kv[0], kv[0]))):
        path = files.get(uid)
        rows.append(
            (
                names.get(uid, str(uid)),
                f"{meter.speech_seconds(uid):.1f}",
                str(s.received),
                str(s.lost),
                str(s.concealed),
                str(path) if path else "-",
            )
        )
    if mixed is not None:
        rows.append(("(everyone)", "", "", "", "", str(mixed)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
