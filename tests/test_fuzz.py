"""Property-based fuzzing of every parser, decryptor and writer that sees hostile bytes.

Two layers:

* hypothesis feeds the shared targets of ``fuzz/targets.py`` (RTP, RTCP, both transport
  ciphers, DAVE frames through davey, the jitter buffer, the whole PacketReceiver, the Ogg
  and WAV writers) with arbitrary bytes, and checks structured properties (round trips,
  tamper detection, in-order exactly-once release) on generated valid traffic;
* a short, time-bounded atheris run (coverage-guided libFuzzer over the same targets) runs
  in CI when atheris is installed; ``python fuzz/run.py --seconds N`` is the long form.

A target passes when it returns: no exception escapes but the documented rejections, no
invariant breaks, the receive path logs no error, and every structure stays bounded.
Settings are sized for CI (a few seconds); ``LISTENING_SOAK=1`` multiplies the examples.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discord.ext.listening import rtp, transport
from discord.ext.listening.files import ogg
from discord.ext.listening.reorder import JitterBuffer
from discord.ext.listening.seqmath import seq_add, ts_add
from discord.ext.listening.stats import DropReason

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

import targets  # noqa: E402  (fuzz/targets.py)

SCALE = 20 if os.environ.get("LISTENING_SOAK") else 1
pytestmark = pytest.mark.timeout(120 * SCALE)


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


# -- the shared targets, driven by hypothesis ------------------------------------------------


@pytest.mark.parametrize(
    "name, examples, size",
    [
        ("rtp", 400, 200),
        ("rtcp", 400, 300),
        ("transport", 200, 600),
        ("dave", 300, 300),
        ("jitter", 200, 1200),
        ("receiver", 150, 1500),
        ("ogg", 150, 1500),
        ("wav", 60, 300),
    ],
)
def test_target_survives_arbitrary_bytes(name: str, examples: int, size: int) -> None:
    target = targets.TARGETS[name]
    for seed in targets.seeds(name):
        target(seed)

    @fuzz_settings(examples)
    @given(st.binary(max_size=size))
    def run(data: bytes) -> None:
        target(data)

    run()


# -- structured properties --------------------------------------------------------------------


@fuzz_settings(200)
@given(
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    ext=st.one_of(st.none(), st.integers(0, 6)),
    pad=st.integers(0, 255),
    payload=st.binary(max_size=300),
    counter=st.integers(0, 0xFFFFFFFF),
    mode=st.sampled_from(transport.SUPPORTED_MODES),
    level=st.integers(0, 127),
)
def test_rtp_round_trip_through_both_ciphers(seq, ts, ssrc, marker, ext, pad, payload, counter, mode, level) -> None:
    cipher = transport.transport_cipher(mode, targets.KEY)
    ext_body = b"" if ext is None else (rtp.audio_level_extension(level) + bytes(4 * ext))
    header = rtp.build_rtp_header(
        seq, ts, ssrc, marker=marker, padding=bool(pad), extension_length=None if ext is None else len(ext_body)
    )
    body = ext_body + payload + (bytes(pad - 1) + bytes([pad]) if pad else b"")
    packet = cipher.encrypt(header, body, counter)
    h = rtp.parse_rtp_header(packet)
    assert (h.sequence, h.timestamp, h.ssrc, h.marker, h.payload_type) == (seq, ts, ssrc, marker, 120)
    got_ext, got_payload = rtp.split_plaintext(cipher.decrypt(packet, h.aad_length), h)
    assert got_payload == payload and got_ext == ext_body
    assert rtp.parse_audio_level(got_ext) == (None if ext is None else level)


@fuzz_settings(300)
@given(data=st.data(), mode=st.sampled_from(transport.SUPPORTED_MODES))
def test_every_single_bit_flip_and_truncation_is_rejected(data, mode) -> None:
    cipher = transport.transport_cipher(mode, targets.KEY)
    aad = data.draw(st.binary(min_size=12, max_size=40))
    packet = cipher.encrypt(aad, data.draw(st.binary(max_size=200)), data.draw(st.integers(0, 2**32 - 1)))
    bit = data.draw(st.integers(0, 8 * len(packet) - 1))
    tampered = bytearray(packet)
    tampered[bit // 8] ^= 1 << (bit % 8)
    cut = data.draw(st.integers(0, len(packet) - 1))
    for bad in (bytes(tampered), packet[:cut], packet + data.draw(st.binary(min_size=1, max_size=8))):
        with pytest.raises(transport.DecryptionFailed):
            cipher.decrypt(bad, len(aad))


_block = st.builds(
    rtp.ReportBlock,
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(-(2**23), 2**23 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)


@fuzz_settings(200)
@given(
    ssrc=st.integers(0, 2**32 - 1),
    ntp=st.integers(0, 2**64 - 1),
    rtp_ts=st.integers(0, 2**32 - 1),
    blocks=st.lists(_block, max_size=31),
    bye=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=31),
    reason=st.binary(max_size=255),
    lie=st.integers(-3, 3),
    where=st.integers(0, 2),
)
def test_rtcp_compound_round_trip_and_lying_lengths(ssrc, ntp, rtp_ts, blocks, bye, reason, lie, where) -> None:
    parts = [
        rtp.build_sender_report(ssrc, ntp, rtp_ts, 1, 2, blocks),
        rtp.build_receiver_report(ssrc, blocks[:5]),
        rtp.build_goodbye(bye, reason),
    ]
    compound = b"".join(parts)
    sr, rr, gb = rtp.parse_rtcp(compound)
    assert sr.reports == blocks and sr.ntp_timestamp == ntp and rr.reports == blocks[:5]
    assert gb.ssrcs == bye and gb.reason == reason
    # A length field that lies: parsing refuses or stays inside the datagram, never past it.
    offset = sum(len(p) for p in parts[:where])
    lying = bytearray(compound)
    words = int.from_bytes(lying[offset + 2 : offset + 4], "big")
    lying[offset + 2 : offset + 4] = ((words + lie) % 65536).to_bytes(2, "big")
    try:
        packets = rtp.parse_rtcp(bytes(lying))
    except rtp.MalformedPacket:
        return
    assert lie == 0 or len(packets) >= 1


@fuzz_settings(150)
@given(
    start_seq=st.integers(0, 0xFFFF),
    start_ts=st.integers(0, 0xFFFFFFFF),
    n=st.integers(1, 300),
    shuffle_seed=st.integers(0, 2**32),
    window=st.integers(1, 20),
    dup=st.floats(0, 0.3),
)
def test_jitter_buffer_releases_each_packet_once_in_order(start_seq, start_ts, n, shuffle_seed, window, dup) -> None:
    rng = random.Random(shuffle_seed)
    pkts = [(seq_add(start_seq, i), ts_add(start_ts, 960 * i), i) for i in range(n)]
    # Reorder within a window and duplicate some: a lossless but messy network.
    arrival = sorted(range(n), key=lambda i: i + rng.uniform(0, window))
    arrival += [i for i in range(n) if rng.random() < dup]
    jb = JitterBuffer(depth=0.5, max_packets=400)
    out = []
    for k, i in enumerate(arrival):
        jb.push(pkts[i][0], pkts[i][1], pkts[i][2], k * 0.001)
        out += jb.pop_ready(k * 0.001)
    out += jb.flush()
    assert [r.payload for r in out] == list(range(n))
    assert sum(r.lost_before for r in out) == 0
    st_ = jb.stats
    assert st_.received == len(arrival) and st_.released == n and st_.duplicates + st_.late == len(arrival) - n


@fuzz_settings(100)
@given(
    n=st.integers(1, 120),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    mode=st.sampled_from(transport.SUPPORTED_MODES),
    noise=st.lists(st.binary(max_size=120), max_size=60),
    seed=st.integers(0, 2**32),
)
def test_receiver_delivers_authentic_audio_untouched_among_noise(n, seq, ts, mode, noise, seed) -> None:
    """Authentic packets of a mapped speaker come out complete and in order, whatever noise
    (arbitrary datagrams, unknown SSRCs) is mixed in; every noise datagram is counted."""
    conn = targets._Conn(mode)
    from discord.ext.listening.receive import PacketReceiver
    from discord.ext.listening.ssrc import SSRCMap
    from discord.ext.listening.stats import ListenStats

    m = SSRCMap()
    m.set_audio(7, targets.SENDER)
    stats = ListenStats()
    receiver = PacketReceiver(m, stats, origin=0.0, max_streams=4)
    receiver.set_transport(conn.mode, conn.secret_key)
    receiver.set_dave(conn.dave_session, conn.dave_protocol_version)
    cipher = transport.transport_cipher(mode, targets.KEY)
    opus = targets._opus_packets()
    rng = random.Random(seed)
    sent = []
    events = []
    for i in range(n):
        payload = opus[i % len(opus)]
        header = rtp.build_rtp_header(seq_add(seq, i), ts_add(ts, 960 * i), 7, extension_length=4)
        events.append((i * 0.02, cipher.encrypt(header, rtp.audio_level_extension(9) + payload, i)))
        sent.append(payload)
    for d in noise:
        events.append((rng.uniform(0, n * 0.02), d))
    events.sort(key=lambda e: e[0])
    out = []
    t = 0.0
    for when, d in events:
        while t + 0.01 <= when:
            t += 0.01
            out += receiver.poll(t)[0]
        receiver.datagram(d, when)
    out += receiver.poll(t + 1)[0] + receiver.flush(t + 2)
    targets._no_errors_logged()
    mine = [p for p in out if p.user_id == targets.SENDER]
    assert [p.opus for p in mine] == sent
    assert stats.user(targets.SENDER).dropped == {}
    noise_dgrams = len([d for d in noise if not (len(d) == 74 and d[1] == 2)])
    rtcp_like = sum(1 for d in noise if rtp.is_rtcp(d))
    # every noise datagram is counted once: dropped, or an 8-byte keepalive echo
    counted = sum(stats.total.dropped.values()) + stats.keepalive_echoes
    assert stats.keepalive_echoes == sum(1 for d in noise if len(d) == 8)
    assert counted == noise_dgrams, (counted, noise_dgrams, rtcp_like, stats.total.dropped)
    # noise never authenticates: it can only be garbage, forged, or (before any decryption)
    # a payload type that is not Opus; never a duplicate, late or undecryptable audio packet
    unauthenticated = {DropReason.malformed, DropReason.auth_failed, DropReason.not_audio}
    assert set(stats.total.dropped) <= unauthenticated, stats.total.dropped


@fuzz_settings(100)
@given(packets=st.lists(st.binary(max_size=1200), max_size=40), serial=st.integers(0, 2**32 - 1))
def test_ogg_pages_carry_arbitrary_packets_exactly(packets, serial) -> None:
    w = ogg.OggStreamWriter(serial)
    out = b""
    for i, p in enumerate(packets):
        w.add_packet(p, 960 * (i + 1))
        if i % 7 == 3:
            out += w.pages(flush=True)
    out += w.pages(eos=True)
    pages = ogg.parse_pages(out)
    got, partial = [], b""
    for page in pages:
        assert page.serial == serial and len(page.segments) <= 255
        for piece, complete in page.packets():
            partial += piece
            if complete:
                got.append(partial)
                partial = b""
    assert got == packets


# -- coverage-guided: a short, bounded atheris run ---------------------------------------------


def test_atheris_bounded_run_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    seconds = 6 * SCALE
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "run.py"),
            "--seconds",
            str(seconds),
            "--json",
            "--artifacts",
            str(tmp_path / "artifacts"),
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    (result,) = json.loads(done.stdout)
    assert result["ok"], result.get("output")
    assert result["inputs"] > 500, result  # it really fuzzed
    assert result["peak_rss_mb"] is None or result["peak_rss_mb"] < 1024
