"""The emulator's sans-I/O sending side: test audio, simulated senders, network impairment."""

from __future__ import annotations

import random
import wave
from pathlib import Path

import numpy as np
import pytest

from discord.ext.listening.opus import FRAME_BYTES, SILENCE_FRAME, OpusDecoder, packet_samples
from discord.ext.listening.rtp import parse_audio_level, parse_rtp_header, split_plaintext
from discord.ext.listening.testing.audio import (
    best_alignment,
    chirp,
    load_pcm,
    pcm_to_array,
    resample,
    speechlike,
    tone,
)
from discord.ext.listening.testing.impairment import (
    Impairment,
    garbage_datagram,
    unknown_ssrc_packet,
    video_packet,
    with_wrong_tag,
)
from discord.ext.listening.testing.speech import RTPSender, SenderClock, audio_level
from discord.ext.listening.transport import AES_GCM, XCHACHA20, DecryptionFailed, transport_cipher

OPUS_DELAY = 312  # libopus' algorithmic delay at 48 kHz (6.5 ms look-ahead), in samples
KEY = bytes(range(32))


def _mono(pcm: bytes) -> np.ndarray:
    return pcm_to_array(pcm).astype(np.float64).mean(axis=1)


def _decode(frames) -> bytes:
    dec = OpusDecoder()
    return b"".join(dec.decode(f.opus) for f in frames)


# -- senders ---------------------------------------------------------------------------------


def test_frames_decode_back_to_the_input():
    pcm = speechlike(1.5, seed=11)
    sender = RTPSender(4242, rng=1)
    frames = sender.talk(pcm, start=100.0)
    audio = [f for f in frames if not f.silence]
    assert len(audio) == 75 and all(packet_samples(f.opus) == 960 for f in audio)
    lag, r = best_alignment(pcm, _decode(audio))
    assert abs(lag - OPUS_DELAY) <= 8, lag
    assert r > 0.9, r
    # and it is this signal, not just any speech-like noise
    _, r_other = best_alignment(speechlike(1.5, seed=12), _decode(audio), max_lag=2000)
    assert r_other < 0.2, r_other


def test_spurt_framing_padding_pacing_and_levels():
    pcm = tone(440, 1.01, 0.5)  # 50.5 frames -> 51, the last half padding
    frames = RTPSender(1, rng=2).talk(pcm, start=5.0)
    audio = [f for f in frames if not f.silence]
    assert len(audio) == 51 and len(frames) == 56
    assert all(len(f.pcm) == FRAME_BYTES for f in frames)
    assert audio[-1].pcm[FRAME_BYTES // 2 :] == bytes(FRAME_BYTES // 2)
    assert b"".join(f.pcm for f in audio)[: len(pcm)] == pcm
    assert [f.send_time for f in frames] == pytest.approx([5.0 + 0.02 * i for i in range(56)])
    # a full-scale-0.5 sine has RMS 0.354 of full scale: -9 dBov
    assert audio[10].audio_level == 9
    assert audio_level(tone(440, 0.02, 0.005)) == 49
    assert audio_level(bytes(FRAME_BYTES)) == 127


def test_silence_frames_end_every_spurt():
    sender = RTPSender(7, rng=3)
    frames = sender.talk(speechlike(0.3, seed=1), start=0.0)
    tail = frames[-5:]
    assert all(f.opus == SILENCE_FRAME and f.silence and f.audio_level == 127 for f in tail)
    assert not any(f.silence or f.opus == SILENCE_FRAME for f in frames[:-5])
    assert _decode(tail) == bytes(5 * FRAME_BYTES)  # they are silence once decoded, too
    spurt = sender.record.spurts[0]
    assert spurt.silence_frames == tail and len(spurt.audio_frames) == 15
    # a client that drops out sends none
    abrupt = RTPSender(8, rng=3, silence_frames=0).talk(speechlike(0.3, seed=1), start=0.0)
    assert len(abrupt) == 15 and not any(f.silence for f in abrupt)


@pytest.mark.parametrize("clock", list(SenderClock))
def test_sequence_and_timestamp_cross_their_wraps(clock):
    sender = RTPSender(9, sequence=65530, timestamp=2**32 - 1000, clock=clock, rng=0)
    first = sender.talk(tone(300, 0.2), start=0.0)  # 10 audio + 5 silence frames
    second = sender.talk(tone(300, 0.2), start=first[-1].send_time + 0.02)  # no pause
    frames = first + second
    assert [f.sequence for f in frames] == [(65530 + i) % 65536 for i in range(30)]
    assert [f.timestamp for f in frames] == [(2**32 - 1000 + 960 * i) % 2**32 for i in range(30)]
    assert frames[6].sequence == 0 and frames[1].timestamp == 2**32 - 40 and frames[2].timestamp == 920


def test_discordpy_checked_add_wrap_quirk():
    # discord.py resets the timestamp to 0 instead of wrapping (VoiceClient.checked_add).
    sender = RTPSender(9, timestamp=2**32 - 1000, clock=SenderClock.discordpy, rng=0, checked_add_wrap=True)
    ts = [f.timestamp for f in sender.talk(tone(300, 0.06), start=0.0)]
    assert ts[:4] == [2**32 - 1000, 2**32 - 40, 0, 960]


def test_webrtc_and_discordpy_timestamps_across_a_pause():
    a, b = speechlike(0.5, seed=1), speechlike(0.5, seed=2)
    got = {}
    for clock in SenderClock:
        sender = RTPSender(5, sequence=100, timestamp=1_000_000, clock=clock, rng=0)
        s1 = sender.talk(a, start=10.0)  # 25 + 5 frames: ends at 10.6
        s2 = sender.talk(b, start=11.6)  # after 1 s of nothing
        assert s2[0].sequence == s1[-1].sequence + 1 == 130  # sequence never jumps
        got[clock] = (s1, s2)
    web1, web2 = got[SenderClock.webrtc]
    dpy1, dpy2 = got[SenderClock.discordpy]
    # webrtc: the timestamp follows wall time, 1.6 s after the first spurt started
    assert web2[0].timestamp - web1[0].timestamp == round(1.6 * 48000) == 76800
    # discord.py: 960 per packet sent, the pause leaves no trace
    assert dpy2[0].timestamp - dpy1[0].timestamp == 30 * 960 == 28800
    assert web2[0].timestamp - dpy2[0].timestamp == 48000
    # markers and extensions as the real clients send them
    assert [f.marker for f in web1 + web2].count(True) == 2 and web1[0].marker and web2[0].marker
    assert not any(f.marker for f in dpy1 + dpy2)
    assert all(f.header_extension for f in web1) and not any(f.header_extension for f in dpy1)
    assert RTPSender(5, clock=SenderClock.discordpy, marker=True, rng=0).talk(a, 0.0)[0].marker


def test_record_keeps_everything_sent():
    sender = RTPSender(77, rng=5)
    pcm1, pcm2 = speechlike(0.25, seed=3), speechlike(0.41, seed=4)
    f1 = sender.talk(pcm1, start=1.0)
    f2 = sender.talk(pcm2, start=3.0)
    rec = sender.record
    assert rec.ssrc == 77 and rec.clock is SenderClock.webrtc
    assert [s.start for s in rec.spurts] == [1.0, 3.0]
    assert rec.spurts[0].pcm == pcm1 and rec.spurts[1].pcm == pcm2
    assert rec.frames == f1 + f2 and rec.packet_count == len(f1) + len(f2)
    assert rec.spurts[1].padded_pcm[: len(pcm2)] == pcm2 and rec.spurts[1].samples == len(pcm2) // 4
    assert rec.spurts[0].end == pytest.approx(1.0 + 0.02 * len(f1))
    assert rec.spurts[1].first_sequence == f2[0].sequence


def test_talk_rejects_overlaps_and_bad_input():
    sender = RTPSender(1, rng=0)
    sender.talk(tone(200, 0.1), start=0.0)  # 5 + 5 frames: busy until 0.2
    with pytest.raises(ValueError, match="overlaps"):
        sender.talk(tone(200, 0.1), start=0.19)
    with pytest.raises(ValueError, match="at least one sample"):
        sender.talk(b"", start=1.0)
    with pytest.raises(ValueError):
        RTPSender(1, sequence=65536)
    with pytest.raises(ValueError):
        RTPSender(2**32)


def test_random_initial_values_are_seeded():
    a, b, c = RTPSender(1, rng=42), RTPSender(1, rng=42), RTPSender(1, rng=43)
    fa, fb, fc = (s.talk(tone(200, 0.02), 0.0)[0] for s in (a, b, c))
    assert (fa.sequence, fa.timestamp) == (fb.sequence, fb.timestamp) != (fc.sequence, fc.timestamp)


@pytest.mark.parametrize("mode", [AES_GCM, XCHACHA20])
def test_outgoing_frames_encrypt_to_what_a_receiver_parses(mode):
    cipher = transport_cipher(mode, KEY)
    frame = RTPSender(0xDEADBEEF, sequence=7, timestamp=123, rng=0).talk(tone(500, 0.04, 0.25), 0.0)[0]
    packet = frame.to_packet(cipher, 99, padding=3)
    header = parse_rtp_header(packet)
    assert (header.ssrc, header.sequence, header.timestamp, header.payload_type) == (0xDEADBEEF, 7, 123, 120)
    assert header.marker and header.has_padding and header.extension_profile == 0xBEDE
    ext, payload = split_plaintext(cipher.decrypt(packet, header.aad_length), header)
    assert payload == frame.opus and parse_audio_level(ext) == frame.audio_level == 15
    assert packet[-4:] == (99).to_bytes(4, "big")
    dpy = RTPSender(1, clock=SenderClock.discordpy, rng=0).talk(tone(500, 0.02), 0.0)[0]
    assert parse_rtp_header(dpy.to_packet(cipher, 1)).extension_profile is None


def test_sender_report_maps_wall_time_to_the_capture_clock():
    from discord.ext.listening.rtp import parse_rtcp

    sender = RTPSender(3, timestamp=5000, rng=0)
    sender.talk(tone(200, 0.1), start=1000.0)
    (sr,) = parse_rtcp(sender.sender_report(1002.0))
    assert sr.ssrc == 3 and sr.rtp_timestamp == 5000 + 2 * 48000 and sr.packet_count == 10
    assert sr.wall_time == pytest.approx(1002.0)
    with pytest.raises(ValueError):
        RTPSender(3, clock=SenderClock.discordpy, rng=0).sender_report(0.0)


# -- impairment ------------------------------------------------------------------------------

N = 20_000


def _run(imp: Impairment, n: int = N) -> list[tuple[float, int]]:
    """Offer n packets 20 ms apart; return (delivery time, index) sorted by delivery."""
    out = []
    for i in range(n):
        out.extend((t, int.from_bytes(p, "big")) for t, p in imp.apply(i.to_bytes(4, "big"), i * 0.02))
    out.sort()
    return out


def _loss_runs(delivered: set[int], n: int) -> list[int]:
    runs, cur = [], 0
    for i in range(n):
        if i in delivered:
            if cur:
                runs.append(cur)
            cur = 0
        else:
            cur += 1
    return runs + ([cur] if cur else [])


def test_loss_rate_for_a_fixed_seed():
    imp = Impairment(loss=0.05, seed=1)
    got = _run(imp)
    st = imp.stats
    assert st.sent == N and st.dropped == N - len(got) and st.delivered == len(got)
    assert 0.043 <= st.loss_rate <= 0.057, st.loss_rate
    assert [i for _, i in got] == sorted(i for _, i in got)  # loss alone never reorders
    assert all(abs(t - i * 0.02) < 1e-9 for t, i in got)


def test_burst_loss_comes_in_runs():
    bursty = Impairment(burst_loss=(0.01, 0.25), seed=2)
    got = {i for _, i in _run(bursty)}
    runs = _loss_runs(got, N)
    rate = 1 - len(got) / N
    assert bursty.expected_loss == pytest.approx(0.01 / 0.26)
    assert 0.025 <= rate <= 0.055, rate
    assert 3.0 <= np.mean(runs) <= 5.5, np.mean(runs)  # mean burst 1 / 0.25 = 4 packets
    # independent loss at a similar rate hardly ever loses two in a row
    plain = {i for _, i in _run(Impairment(loss=rate, seed=2), 5000)}
    assert np.mean(_loss_runs(plain, 5000)) < 1.2


def test_reorder_really_reorders():
    imp = Impairment(reorder=0.1, seed=3)
    got = _run(imp)
    order = [i for _, i in got]
    assert sorted(order) == list(range(N))  # nothing lost or doubled
    assert 0.09 * N <= imp.stats.reordered <= 0.11 * N
    late = {i: pos for pos, i in enumerate(order)}
    # a held packet comes after 1..3 of the packets sent after it
    displaced = [i for i in range(N - 4) if late[i] > late[i + 1]]
    assert len(displaced) >= 0.08 * N
    assert all(any(late[i] > late[i + k] for k in (1, 2, 3)) for i in displaced)
    assert not any(
        late[i] > late[i + 4] for i in range(N - 4) if not any(late[j] > late[j + 1] for j in range(i, i + 4))
    )


def test_duplicates_are_delivered_and_counted():
    imp = Impairment(duplicate=0.1, seed=4)
    got = _run(imp)
    st = imp.stats
    assert len(got) == N + st.duplicated == st.delivered
    assert 0.09 * N <= st.duplicated <= 0.11 * N
    counts = np.bincount([i for _, i in got], minlength=N)
    assert counts.max() == 2 and int((counts == 2).sum()) == st.duplicated


def test_jitter_and_delay_only_ever_add():
    imp = Impairment(jitter=0.01, delay=0.05, seed=5)
    extra = np.array([t - i * 0.02 - 0.05 for t, i in _run(imp, 5000)])
    assert extra.min() >= 0.0
    assert 0.007 <= extra.mean() <= 0.009  # half-normal mean: 0.8 x sigma
    assert Impairment(delay=0.2, seed=0).apply(b"x", 1.0) == [(1.2, b"x")]


def test_same_seed_same_fate_other_seed_other():
    params = dict(loss=0.05, burst_loss=(0.02, 0.3), reorder=0.05, duplicate=0.05, jitter=0.004)
    a, b, c = (_run(Impairment(**params, seed=s), 3000) for s in (6, 6, 7))
    assert a == b and a != c
    imp = Impairment(**params, seed=6)
    first = _run(imp, 3000)
    imp.reset()
    assert _run(imp, 3000) == first
    # the loss pattern does not depend on the other knobs (fixed draws per packet)
    lost_a = {i for _, i in _run(Impairment(loss=0.05, seed=8), 3000)}
    lost_b = {i for _, i in _run(Impairment(loss=0.05, jitter=0.01, reorder=0.2, seed=8), 3000)}
    assert lost_a == lost_b


def test_chained_impairments_compound():
    chain = Impairment.chain(Impairment(loss=0.1, seed=9), Impairment(loss=0.1, delay=0.03, seed=10))
    got, n = [], 10_000
    for i in range(n):
        got.extend(chain.apply(i.to_bytes(4, "big"), i * 0.02))
    assert 1 - len(got) / n == pytest.approx(0.19, abs=0.012)  # 1 - 0.9 * 0.9; 3 sigma = 0.012
    assert all(abs(t - int.from_bytes(p, "big") * 0.02 - 0.03) < 1e-9 for t, p in got)
    first, second = chain.stages
    assert second.stats.sent == first.stats.delivered


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(loss=-0.1),
        dict(loss=1.5),
        dict(reorder=2),
        dict(duplicate=-1),
        dict(jitter=-0.01),
        dict(delay=float("inf")),
        dict(burst_loss=(0.1, 0.0)),
        dict(burst_loss=(1.2, 0.5)),
        dict(burst_loss=0.1),
        dict(interval=0),
        dict(seed="x"),
    ],
)
def test_impairment_validates_its_parameters(kwargs):
    with pytest.raises(ValueError):
        Impairment(**kwargs)


def test_noop_impairment_delivers_unchanged():
    imp = Impairment(seed=0)
    assert imp.is_noop and imp.apply(b"abc", 2.5) == [(2.5, b"abc")]
    assert not Impairment(jitter=0.001).is_noop and Impairment().seed is not None


# -- fault packets ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [AES_GCM, XCHACHA20])
def test_fault_packets(mode):
    cipher = transport_cipher(mode, KEY)
    good = unknown_ssrc_packet(cipher, 5, ssrc=0x1234, sequence=9, timestamp=960)
    header = parse_rtp_header(good)
    assert header.ssrc == 0x1234 and header.payload_type == 120
    ext, payload = split_plaintext(cipher.decrypt(good, header.aad_length), header)
    assert len(OpusDecoder().decode(payload)) == FRAME_BYTES and parse_audio_level(ext) is not None

    bad = with_wrong_tag(good)
    assert len(bad) == len(good) and bad[: header.aad_length] == good[: header.aad_length] and bad[-4:] == good[-4:]
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(bad, header.aad_length)

    video = video_packet(cipher, 6, ssrc=0x5678, rng=1)
    vh = parse_rtp_header(video)
    assert vh.payload_type == 103 and vh.ssrc == 0x5678
    assert len(cipher.decrypt(video, vh.aad_length)) == 900

    assert garbage_datagram(3, 50) == garbage_datagram(3, 50) != garbage_datagram(4, 50)
    assert 1 <= len(garbage_datagram(random.Random(1))) <= 1200


# -- test audio ------------------------------------------------------------------------------


def _write_wav(path: Path, data: np.ndarray, rate: int, width: int = 2) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if data.ndim == 1 else data.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 2:
            w.writeframes(np.rint(data * 32767).astype("<i2").tobytes())
        elif width == 3:
            v = np.rint(data * (2**23 - 1)).astype("<i4").reshape(-1)
            w.writeframes(np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], 1).astype(np.uint8).tobytes())


def _chirp_at(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * (100 * t + (6000 - 100) * t * t / (2 * seconds)))


def test_load_pcm_resamples_a_16k_mono_wav(tmp_path):
    src = _chirp_at(16000, 1.5)
    _write_wav(tmp_path / "a.wav", src, 16000)
    pcm = load_pcm(tmp_path / "a.wav")
    a = pcm_to_array(pcm)
    assert a.shape == (72000, 2) and np.array_equal(a[:, 0], a[:, 1])  # 1.5 s, mono duplicated
    lag, r = best_alignment(array_pcm := chirp(100, 6000, 1.5), pcm)
    assert lag == 0 and r > 0.999, (lag, r)
    assert np.max(np.abs(_mono(pcm)[100:-100] - _mono(array_pcm)[100:-100])) < 40  # ~-58 dBFS
    # the same file, as bytes
    assert load_pcm((tmp_path / "a.wav").read_bytes()) == pcm


def test_load_pcm_other_wav_shapes(tmp_path):
    src = _chirp_at(44100, 0.5)
    _write_wav(tmp_path / "s24.wav", np.stack([src, -src], 1), 44100, width=3)
    a = pcm_to_array(load_pcm(str(tmp_path / "s24.wav")))
    assert a.shape == (24000, 2)
    assert np.corrcoef(a[:, 0], -a[:, 1].astype(float))[0, 1] > 0.9999
    assert best_alignment(chirp(100, 6000, 0.5), a[:, 0].repeat(2).astype("<i2").tobytes())[1] > 0.999


def test_load_pcm_arrays_bytes_and_errors(tmp_path):
    mono = (np.arange(960) % 200 - 100).astype(np.int16)
    a = pcm_to_array(load_pcm(mono))
    assert np.array_equal(a[:, 0], mono) and np.array_equal(a[:, 1], mono)
    stereo = np.stack([mono, -mono], 1)
    assert load_pcm(stereo) == stereo.astype("<i2").tobytes()
    assert pcm_to_array(load_pcm(np.full(10, 0.5)))[0, 0] == 16384
    assert len(load_pcm(np.zeros(16000), sample_rate=16000)) == 48000 * 4
    raw = tone(300, 0.1)
    assert load_pcm(raw) == raw and load_pcm(bytearray(raw)) == raw
    with pytest.raises(ValueError, match="multiple of 4"):
        load_pcm(b"\x00" * 6)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        load_pcm(np.full(10, 300.0))
    with pytest.raises(ValueError, match="NaN"):
        load_pcm(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match=r"array\.T"):
        load_pcm(np.zeros((2, 100), dtype=np.int16))
    with pytest.raises(TypeError, match="int16 or floating"):
        load_pcm(np.zeros(10, dtype=np.int32))
    with pytest.raises(TypeError):
        load_pcm(12345)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        load_pcm(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(ValueError, match="WAV"):
        load_pcm(tmp_path / "junk.wav")


def test_resample_is_accurate():
    for rate in (8000, 22050, 44100, 96000):
        y = resample(np.sin(2 * np.pi * 440 * np.arange(rate) / rate), rate)
        ref = np.sin(2 * np.pi * 440 * np.arange(len(y)) / 48000)
        assert len(y) == 48000 and np.max(np.abs(y - ref)[1000:-1000]) < 1e-4


def test_speechlike_is_deterministic_aperiodic_and_seed_specific():
    s = speechlike(2.0, seed=1)
    assert s == speechlike(2.0, seed=1) and len(s) == 2 * 48000 * 4
    assert abs(int(np.max(np.abs(pcm_to_array(s)))) - 0.5 * 32767) <= 1
    x = _mono(s)
    # one clear autocorrelation peak: nothing past half a millisecond comes close
    size = 1 << (2 * x.size).bit_length()
    spec = np.fft.rfft(x, size)
    ac = np.fft.irfft(spec * np.conj(spec), size)[: x.size]
    assert np.max(ac[24:]) / ac[0] < 0.3
    # alignment finds an offset exactly
    assert best_alignment(s[4 * 1234 :], s) == (1234, pytest.approx(1.0))
    # distinct seeds: uncorrelated
    for seed in range(2, 5):
        assert abs(np.corrcoef(x, _mono(speechlike(2.0, seed=seed)))[0, 1]) < 0.08
    # tones are exactly what alignment cannot use: the peak repeats every period
    assert best_alignment(tone(480, 0.5)[400:], tone(480, 0.5), max_lag=300)[1] > 0.99
