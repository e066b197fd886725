"""Test audio, sans-I/O: turn WAV files / arrays into Discord's PCM, and generate test signals.

Everything here produces what the voice pipeline speaks: 48 kHz, 2 channels, signed 16-bit
little-endian interleaved PCM (:data:`..opus.SAMPLE_RATE`, :data:`..opus.CHANNELS`).

The generators are deterministic. :func:`speechlike` is the one meant for end-to-end checks:
it is noise shaped like speech (formants, syllables, pauses), so it survives Opus well and its
autocorrelation has one sharp peak at lag 0. A test can therefore find where a received
signal sits on the timeline (:func:`best_alignment`) and tell two speakers apart (distinct
seeds give uncorrelated signals). Periodic signals like :func:`tone` cannot do either: they
correlate with themselves shifted by any whole number of periods.
"""

from __future__ import annotations

import io
import logging
import math
import os
import wave
from typing import Final, Union

import numpy as np
import numpy.typing as npt

from ..opus import CHANNELS, SAMPLE_RATE

__all__ = (
    "AudioInput",
    "array_to_pcm",
    "best_alignment",
    "chirp",
    "load_pcm",
    "pcm_to_array",
    "resample",
    "speechlike",
    "tone",
)

_log = logging.getLogger(__name__)

#: What :func:`load_pcm` accepts.
AudioInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]

_FULL_SCALE: Final = 32767.0
_BYTES_PER_SAMPLE: Final = 2 * CHANNELS  # one stereo s16le sample frame


# -- conversion ------------------------------------------------------------------------------


def pcm_to_array(pcm: bytes | bytearray | memoryview) -> npt.NDArray[np.int16]:
    """View 48 kHz stereo s16le PCM as an ``(n, 2)`` int16 array (a copy, writable).

    Raises
    ------
    ValueError
        The length is not a whole number of stereo 16-bit samples (4 bytes).
    """
    if len(pcm) % _BYTES_PER_SAMPLE:
        raise ValueError(f"PCM length {len(pcm)} is not a multiple of {_BYTES_PER_SAMPLE} (stereo s16le)")
    return np.frombuffer(bytes(pcm), dtype="<i2").reshape(-1, CHANNELS).astype(np.int16)


def array_to_pcm(samples: npt.ArrayLike) -> bytes:
    """Float samples in full-scale units (±1.0) of shape ``(n,)`` or ``(n, 2)`` -> stereo s16le bytes.

    Values beyond ±1 are clipped (the generators never produce them; resampling can overshoot
    by a hair at a full-scale step).
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = np.repeat(x[:, None], CHANNELS, axis=1)
    q = np.clip(np.rint(x * _FULL_SCALE), -32768, 32767).astype("<i2")
    return q.tobytes()


def resample(
    samples: npt.ArrayLike, rate_in: int, rate_out: int = SAMPLE_RATE, *, taps_per_side: int = 24
) -> npt.NDArray[np.float64]:
    """Resample float audio by a rational factor with a polyphase windowed-sinc filter.

    Parameters
    ----------
    samples:
        Shape ``(n,)`` or ``(n, channels)``, any float scale.
    rate_in, rate_out: :class:`int`
        Sample rates in Hz.
    taps_per_side: :class:`int`
        Filter half-length in samples of the *lower* of the two rates; 24 keeps aliasing and
        imaging below about -80 dB, which is far under what Opus adds.

    Returns
    -------
    numpy.ndarray
        ``ceil(n * rate_out / rate_in)`` samples, same channel layout, float64.

    Notes
    -----
    Linear interpolation would be simpler but leaves images of the input spectrum around the
    old sample rate (audible, and they inflate Opus' bit budget); an ideal low-pass is what a
    comparison against decoded audio wants. The output sample ``m`` sits at input time
    ``m * rate_in / rate_out``, so resampled audio stays aligned with the source (no delay).
    """
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    x = np.asarray(samples, dtype=np.float64)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    n_in = x.shape[0]
    n_out = -(-n_in * up // down)
    if up == down or n_in == 0:
        out = x.copy()
        return out[:, 0] if squeeze else out

    # Prototype low-pass at the upsampled rate (rate_in * up), cut below the lower Nyquist.
    # Index t of the filter runs over -c..c at that rate; kaiser beta 8.6 gives ~-80 dB side lobes.
    r = max(up, down)
    c = taps_per_side * r
    t = np.arange(-c, c + 1, dtype=np.float64)
    cutoff = 0.5 / r * 0.94  # cycles per upsampled sample; 6 % transition band below Nyquist
    h = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(2 * c + 1, 8.6)
    h *= up / h.sum()  # zero-stuffing by `up` divides the level by `up`: give it back

    # y[m] = sum_n x[n] * h[m*down - n*up + c] over the n where that index lies in 0..2c.
    # Outputs m = p, p+up, p+2*up... share one set of taps (a polyphase branch) and read input
    # windows that start `down` samples apart: a strided window view and one product per
    # branch, so nothing is computed for the zeros of the upsampled signal.
    k_taps = (2 * c) // up + 2
    pad = k_taps + 1
    xp = np.concatenate([np.zeros((pad, x.shape[1])), x, np.zeros((pad + k_taps, x.shape[1]))])
    windows = np.lib.stride_tricks.sliding_window_view(xp, k_taps, axis=0)  # (positions, channels, k)
    out = np.empty((n_out, x.shape[1]))
    for p in range(min(up, n_out)):
        count = len(range(p, n_out, up))
        n0 = -((c - p * down) // up)  # ceil((p*down - c) / up): first input sample in reach
        idx = p * down - (n0 + np.arange(k_taps)) * up + c
        taps = np.where((idx >= 0) & (idx <= 2 * c), h[np.clip(idx, 0, 2 * c)], 0.0)
        rows = windows[n0 + pad :: down][:count]
        out[p::up] = rows @ taps
    return out[:, 0] if squeeze else out


def _wav_to_float(reader: wave.Wave_read) -> tuple[npt.NDArray[np.float64], int]:
    channels, width, rate, frames = (
        reader.getnchannels(),
        reader.getsampwidth(),
        reader.getframerate(),
        reader.getnframes(),
    )
    raw = reader.readframes(frames)
    if width == 1:  # 8-bit WAV is unsigned with 128 as zero
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    elif width == 3:  # no numpy dtype: widen each 3-byte sample to 4 bytes, sign from the top byte
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        v = b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16)
        data = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float64) / float(1 << 23)
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)
    else:
        raise ValueError(f"unsupported WAV sample width of {width} bytes")
    return data.reshape(-1, channels), rate


def _to_stereo(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    channels = x.shape[1]
    if channels == 1:
        return np.repeat(x, 2, axis=1)
    if channels > 2:
        # WAV's channel order starts front-left, front-right: keep those. A proper downmix
        # needs the channel mask, and test material is mono or stereo anyway.
        _log.debug("keeping the first 2 of %d WAV channels", channels)
    return x[:, :2]


def _from_wav(source: str | os.PathLike[str] | io.BytesIO, what: str) -> bytes:
    try:
        with wave.open(source if isinstance(source, io.BytesIO) else os.fspath(source), "rb") as reader:
            data, rate = _wav_to_float(reader)
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{what} is not a PCM WAV file the wave module can read: {exc}") from exc
    stereo = _to_stereo(data)
    if rate != SAMPLE_RATE:
        _log.debug("resampling %s from %d Hz to %d Hz", what, rate, SAMPLE_RATE)
        stereo = resample(stereo, rate, SAMPLE_RATE)
    return array_to_pcm(stereo)


def _from_array(array: np.ndarray, sample_rate: int) -> bytes:
    a = array
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if not (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 2)):
        hint = " (channels first? pass array.T)" if a.ndim == 2 and a.shape[0] in (1, 2) else ""
        raise ValueError(f"audio arrays must have shape (n,) mono or (n, 2) stereo, got {a.shape}{hint}")
    if a.dtype == np.int16:
        if sample_rate == SAMPLE_RATE:
            s = a if a.ndim == 2 else np.repeat(a[:, None], 2, axis=1)
            return s.astype("<i2").tobytes()
        x = a.astype(np.float64) / 32768.0
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("float audio contains NaN or infinity")
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > 1.0 + 1e-6:
            # Most likely integer samples cast to float: scaling them silently would clip everything.
            raise ValueError(f"float audio must lie within [-1, 1], peak is {peak:.4g}")
    else:
        raise TypeError(f"audio arrays must be int16 or floating point, got dtype {a.dtype}")
    if x.ndim == 1:
        x = x[:, None]
    if sample_rate != SAMPLE_RATE:
        x = resample(x, sample_rate, SAMPLE_RATE)
    return array_to_pcm(_to_stereo(x))


def load_pcm(audio: AudioInput, *, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Turn test audio into 48 kHz stereo s16le PCM bytes.

    Parameters
    ----------
    audio:
        * a path (:class:`str` or :class:`os.PathLike`) to a PCM WAV file of any sample rate,
          channel count (mono is duplicated, channels past the second are dropped) and sample
          width (8/16/24/32-bit) the :mod:`wave` module reads; it is resampled to 48 kHz;
        * :class:`bytes`-like: raw 48 kHz stereo s16le PCM, returned as is (the contents of a
          WAV file, recognised by its ``RIFF....WAVE`` header, are decoded like a path);
        * a :class:`numpy.ndarray` of shape ``(n,)`` (mono) or ``(n, 2)`` (stereo), dtype int16
          or float with values in [-1, 1], sampled at ``sample_rate``.
    sample_rate: :class:`int`
        Sample rate of an array input (ignored for WAV files and bytes).

    Returns
    -------
    :class:`bytes`
        48 kHz, 2-channel, signed 16-bit little-endian interleaved PCM.

    Raises
    ------
    TypeError
        Unsupported input type or array dtype.
    ValueError
        Unreadable WAV, raw PCM not a multiple of 4 bytes, wrong array shape, floats outside
        [-1, 1] or non-finite, or a non-positive sample rate.
    FileNotFoundError
        The path does not exist.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
    if isinstance(audio, np.ndarray):
        return _from_array(audio, sample_rate)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        data = bytes(audio)
        if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            return _from_wav(io.BytesIO(data), "the WAV bytes")
        if len(data) % _BYTES_PER_SAMPLE:
            raise ValueError(
                f"raw PCM must be 48 kHz stereo s16le (a multiple of {_BYTES_PER_SAMPLE} bytes), got {len(data)} bytes"
            )
        return data
    if isinstance(audio, (str, os.PathLike)):
        if not os.path.exists(audio):
            raise FileNotFoundError(f"no such audio file: {os.fspath(audio)!r}")
        return _from_wav(audio, repr(os.fspath(audio)))
    raise TypeError(
        f"cannot load audio from {type(audio).__name__}: pass a WAV path, 48 kHz stereo s16le bytes, or a numpy array"
    )


# -- generators ------------------------------------------------------------------------------


def _check_common(seconds: float, amplitude: float) -> int:
    if not seconds >= 0 or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    if not 0 <= amplitude <= 1:
        raise ValueError(f"amplitude is a fraction of full scale within [0, 1], got {amplitude!r}")
    return round(seconds * SAMPLE_RATE)


def tone(freq: float, seconds: float, amplitude: float = 0.5) -> bytes:
    """A sine tone, the same in both channels.

    Parameters
    ----------
    freq: :class:`float`
        Frequency in Hz, below the Nyquist frequency (24 kHz).
    seconds: :class:`float`
        Duration, rounded to whole samples.
    amplitude: :class:`float`
        Peak as a fraction of full scale.
    """
    n = _check_common(seconds, amplitude)
    if not 0 <= freq < SAMPLE_RATE / 2:
        raise ValueError(f"freq must be within [0, {SAMPLE_RATE // 2}) Hz, got {freq!r}")
    t = np.arange(n) / SAMPLE_RATE
    return array_to_pcm(amplitude * np.sin(2 * np.pi * freq * t))


def chirp(f0: float, f1: float, seconds: float, amplitude: float = 0.5, *, method: str = "linear") -> bytes:
    """A sine sweep from ``f0`` to ``f1`` Hz, the same in both channels.

    Unlike a tone, a sweep has one clear autocorrelation peak (its frequency never repeats),
    so it also works for alignment checks, if less robustly than :func:`speechlike` through Opus.

    Parameters
    ----------
    method: :class:`str`
        ``"linear"`` (constant Hz per second) or ``"log"`` (constant octaves per second; needs
        both frequencies > 0).
    """
    n = _check_common(seconds, amplitude)
    for f in (f0, f1):
        if not 0 <= f < SAMPLE_RATE / 2:
            raise ValueError(f"chirp frequencies must be within [0, {SAMPLE_RATE // 2}) Hz, got {f!r}")
    t = np.arange(n) / SAMPLE_RATE
    T = max(seconds, 1e-12)
    if method == "linear":
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * T))
    elif method == "log":
        if f0 <= 0 or f1 <= 0:
            raise ValueError("a logarithmic chirp needs f0 > 0 and f1 > 0")
        if f0 == f1:
            phase = 2 * np.pi * f0 * t
        else:
            k = math.log(f1 / f0) / T
            phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
    else:
        raise ValueError(f"method must be 'linear' or 'log', got {method!r}")
    return array_to_pcm(amplitude * np.sin(phase))


# Vowel-ish formant centres (Hz) for F1..F3 (rough adult ranges) and their bandwidths. The
# bandwidths are those of whispered rather than voiced vowels, on purpose: narrow resonances
# ring, and ringing puts side peaks into the autocorrelation (0.4 at 1 ms with voiced-speech
# bandwidths, below 0.2 with these). A flat floor stands in for aspiration noise.
_FORMANT_RANGES: Final = ((300.0, 850.0), (850.0, 2300.0), (2300.0, 3100.0))
_FORMANT_BANDWIDTHS: Final = (250.0, 300.0, 350.0)
_NOISE_FLOOR: Final = 0.1


def speechlike(seconds: float, seed: int = 0, amplitude: float = 0.5) -> bytes:
    """A deterministic, non-periodic, speech-like test signal (the same in both channels).

    Built from white noise shaped, one syllable at a time, by three formant resonances at
    random vowel-like frequencies with a -3 dB/octave tilt above 500 Hz, under a syllable
    envelope (120-320 ms syllables at roughly 4 per second, 30-120 ms gaps, and a 250-500 ms
    pause about every fifth syllable). The result sounds like whispering.

    Why noise and not a voiced (pitched) source: a pitch pulse train makes the signal
    correlate with itself one pitch period away, so alignment by cross-correlation would find
    several peaks. Shaped noise has one peak at lag 0 (the autocorrelation stays around 0.2
    or less beyond half a millisecond), and signals from distinct seeds are
    uncorrelated (``|r|`` of a few hundredths over a second or more), which lets tests tell
    speakers apart.

    Parameters
    ----------
    seconds: :class:`float`
        Duration, rounded to whole samples.
    seed: :class:`int`
        Same seed, same bytes (across runs and machines with one numpy version; NEP 19 lets
        numpy change a :class:`numpy.random.Generator` stream between versions, so do not
        store expected bytes, regenerate them).
    amplitude: :class:`float`
        Peak as a fraction of full scale (the signal is normalised to exactly this peak).
    """
    n = _check_common(seconds, amplitude)
    rng = np.random.default_rng(np.random.SeedSequence([0x5EEC4, int(seed) & 0xFFFFFFFFFFFFFFFF]))
    out = np.zeros(n)
    pos = int(rng.integers(0, int(0.06 * SAMPLE_RATE)))  # do not start every seed at sample 0
    count = 0
    while pos < n:
        length = int(rng.uniform(0.12, 0.32) * SAMPLE_RATE)
        stop = min(n, pos + length)
        out[pos:stop] = _syllable(rng, length)[: stop - pos]
        count += 1
        gap = rng.uniform(0.25, 0.5) if count % 5 == 0 else rng.uniform(0.03, 0.12)
        pos = stop + int(gap * SAMPLE_RATE)
    peak = float(np.max(np.abs(out))) if n else 0.0
    if peak > 0:
        out *= amplitude / peak
    return array_to_pcm(out)


def _syllable(rng: np.random.Generator, length: int) -> npt.NDArray[np.float64]:
    # Shape white noise in the frequency domain: a syllable is short enough that one spectral
    # envelope fits it, and it avoids needing an IIR filter (no scipy in the dependencies).
    size = 1 << max(1, (length - 1).bit_length())
    spectrum = np.fft.rfft(rng.standard_normal(size))
    f = np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
    envelope = np.full_like(f, _NOISE_FLOOR)
    for (lo, hi), bw in zip(_FORMANT_RANGES, _FORMANT_BANDWIDTHS):
        fc = rng.uniform(lo, hi)
        envelope += 1.0 / (1.0 + ((f - fc) / (bw / 2)) ** 2)  # Lorentzian: a resonance's shape
    tilt = 1.0 / np.sqrt(np.maximum(1.0, f / 500.0))  # -3 dB/octave above 500 Hz
    highpass = 1.0 - np.exp(-((f / 120.0) ** 2))  # no DC or rumble: real voices have none
    shaped = np.fft.irfft(spectrum * envelope * tilt * highpass, size)[:length]
    # Raised-cosine attack/decay with a plateau, times a little random loudness per syllable.
    ramp = max(1, length // 4)
    env = np.ones(length)
    r = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    env[:ramp] = r
    env[length - ramp :] = r[::-1]
    rms = float(np.sqrt(np.mean(shaped**2))) or 1.0
    return shaped / rms * env * rng.uniform(0.5, 1.0)


# -- analysis ---------------------------------------------------------------------------------


def best_alignment(reference: bytes, received: bytes, *, max_lag: int | None = None) -> tuple[int, float]:
    """Find where ``reference`` sits inside ``received`` by normalised cross-correlation.

    Both are 48 kHz stereo s16le PCM; the channels are averaged first.

    Parameters
    ----------
    max_lag: Optional[:class:`int`]
        Only consider lags ``-max_lag..max_lag`` samples (default: every overlap).

    Returns
    -------
    tuple[:class:`int`, :class:`float`]
        ``(lag, r)``: ``received[lag + i]`` best matches ``reference[i]`` (lag in samples per
        channel, may be negative), and ``r`` is the Pearson correlation over the overlapping
        part at that lag (1.0 identical, ~0 unrelated).
    """
    a = pcm_to_array(reference).astype(np.float64).mean(axis=1)
    b = pcm_to_array(received).astype(np.float64).mean(axis=1)
    if not a.size or not b.size:
        raise ValueError("cannot align empty audio")
    size = 1 << (a.size + b.size - 1).bit_length()
    # FFT cross-correlation: xc[k] = sum_i b[i + k] * a[i], lags -(len(a)-1)..len(b)-1
    xc = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.concatenate([np.arange(0, b.size), np.arange(-(a.size - 1), 0)])
    values = np.concatenate([xc[: b.size], xc[size - (a.size - 1) :]])
    if max_lag is not None:
        keep = np.abs(lags) <= max_lag
        lags, values = lags[keep], values[keep]
        if not lags.size:
            raise ValueError("max_lag leaves no lag to try")
    lag = int(lags[int(np.argmax(values))])
    # Pearson r over the overlap at that lag, so the score does not depend on lengths.
    lo, hi = max(0, -lag), min(a.size, b.size - lag)
    if hi - lo < 2:
        return lag, 0.0
    x, y = a[lo:hi], b[lo + lag : hi + lag]
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    return lag, (float(np.dot(x, y)) / denom if denom else 0.0)
