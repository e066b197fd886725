"""Transcripts to files: :class:`TranscriptWriter` writes WebVTT captions and JSON lines.

Both are written line by line as transcripts come and flushed each time, so a recording that
is killed keeps every line said before (a WebVTT file needs no closing part).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from .files import sanitize_filename
from .transcribe import Transcript

__all__ = ("TranscriptWriter", "vtt_time")


def vtt_time(seconds: float) -> str:
    """``seconds`` as a WebVTT timestamp, ``HH:MM:SS.mmm``."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    return f"{hours:02d}:{minutes:02d}:{ms // 1000:02d}.{ms % 1000:03d}"


def _speaker(t: Transcript) -> str:
    name = getattr(t.user, "display_name", None) or getattr(t.user, "name", None)
    return str(name) if name else str(t.user_id) if t.user_id is not None else "unknown"


class TranscriptWriter:
    """Writes :class:`Transcript` lines to ``<name>.vtt`` (WebVTT, a voice tag per speaker)
    and ``<name>.jsonl`` (one JSON object per line: user id, speaker, start, end, text, words).

    Parameters
    ----------
    output_dir: Union[:class:`str`, :class:`os.PathLike`]
        Where the two files go (made if missing).
    name: :class:`str`
        Their name without extension. Defaults to ``"transcript"``.
    """

    def __init__(self, output_dir: str | os.PathLike[str], name: str = "transcript") -> None:
        directory = Path(output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        base = sanitize_filename(name)
        self.vtt_path = directory / f"{base}.vtt"
        self.jsonl_path = directory / f"{base}.jsonl"
        self._vtt: IO[str] = open(self.vtt_path, "w", encoding="utf-8")
        self._jsonl: IO[str] = open(self.jsonl_path, "w", encoding="utf-8")
        self._vtt.write("WEBVTT\n\n")
        self._vtt.flush()
        self.lines = 0

    def write(self, t: Transcript) -> None:
        """Add one line to both files."""
        if not isinstance(t, Transcript):
            raise TypeError(f"expected a Transcript, got {type(t).__name__}")
        speaker = _speaker(t)
        # WebVTT: no blank line or "-->" inside a cue; the voice tag's name has no ">"
        text = " ".join(t.text.split()).replace("-->", "->")
        voice = speaker.replace(">", "").replace("\n", " ")
        self.lines += 1
        self._vtt.write(f"{self.lines}\n{vtt_time(t.start)} --> {vtt_time(t.end)}\n<v {voice}>{text}\n\n")
        record = {
            "user_id": t.user_id,
            "speaker": speaker,
            "start": round(t.start, 3),
            "end": round(t.end, 3),
            "text": t.text,
            "words": [[w.text, round(w.start, 3), round(w.end, 3)] for w in t.words],
        }
        self._jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._vtt.flush()
        self._jsonl.flush()

    def close(self) -> None:
        """Close both files (idempotent)."""
        self._vtt.close()
        self._jsonl.close()

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
