"""libopus through ctypes: real encode/decode, FEC recovery and concealment."""

from __future__ import annotations

import numpy as np
import pytest

from discord.ext.listening import opus


def _signal(seconds: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(48000 * seconds)) / 48000
    mono = 6000 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + rng.normal(0, 300, t.size)
    return np.repeat(mono.astype(np.int16)[:, None], 2, axis=1)


def _frames(sig: np.ndarray) -> list[bytes]:
    return [sig[i : i + 960].tobytes() for i in range(0, len(sig) - 959, 960)]


def _corr(a: bytes, b: bytes) -> float:
    x = np.frombuffer(a, np.int16).astype(float)
    y = np.frombuffer(b, np.int16).astype(float)
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


def test_encode_decode_round_trip_preserves_the_signal() -> None:
    enc, dec = opus.OpusEncoder(), opus.OpusDecoder()
    frames = _frames(_signal(1.0))
    out = [dec.decode(enc.encode(f)) for f in frames]
    assert all(len(o) == opus.FRAME_BYTES for o in out)
    # libopus has a 6.5 ms algorithmic delay (312 samples); compare with that shift.
    sent = b"".join(frames)
    got = b"".join(out)
    shift = 312 * 4
    assert _corr(sent[:-shift][shift * 4 :], got[shift:][shift * 4 :]) > 0.95


def test_fec_recovers_a_lost_frame_better_than_concealment() -> None:
    enc = opus.OpusEncoder(expected_loss=30)
    frames = _frames(_signal(1.0, seed=3))
    packets = [enc.encode(f) for f in frames]
    assert opus.packet_has_fec(packets[20])
    ref = opus.OpusDecoder()
    reference = [ref.decode(p) for p in packets]
    fec_dec, plc_dec = opus.OpusDecoder(), opus.OpusDecoder()
    for p in packets[:20]:
        fec_dec.decode(p)
        plc_dec.decode(p)
    recovered = fec_dec.decode_fec(packets[21])
    concealed = plc_dec.conceal()
    assert len(recovered) == len(concealed) == opus.FRAME_BYTES
    assert _corr(recovered, reference[20]) > 0.8
    assert _corr(recovered, reference[20]) >= _corr(concealed, reference[20])


def test_silence_frame_decodes_to_silence_and_bad_input_is_an_error() -> None:
    dec = opus.OpusDecoder()
    assert dec.decode(opus.SILENCE_FRAME) == bytes(opus.FRAME_BYTES)
    assert opus.packet_samples(opus.SILENCE_FRAME) == 960
    with pytest.raises(opus.OpusError):
        dec.decode(b"\xff\xff\xff\xff\xff")
    with pytest.raises(ValueError, match="3840 bytes"):
        opus.OpusEncoder().encode(b"\x00" * 10)
    with pytest.raises(ValueError, match="bitrate"):
        opus.OpusEncoder(bitrate=1)


def test_discord_py_can_use_the_bundled_library() -> None:
    import discord.opus

    opus.load_for_discord()
    assert discord.opus.is_loaded()
    encoded = discord.opus.Encoder().encode(_signal(0.02).tobytes(), 960)
    assert len(opus.OpusDecoder().decode(encoded)) == opus.FRAME_BYTES
