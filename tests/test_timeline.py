"""Recording timeline placement (discord.ext.listening.timeline)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discord.ext.listening.reorder import JitterBuffer, Released
from discord.ext.listening.rtp import unix_to_ntp
from discord.ext.listening.seqmath import seq_add, ts_add
from discord.ext.listening.timeline import StreamClock, Timeline, debursted_arrivals

RATE = 48000
FRAME = 960
BASE_DELAY = 0.04  # one-way network delay: the "truth" is where a frame arrives without jitter


@dataclass
class Pkt:
    spurt: int
    seq: int
    ts: int
    spoken: int  # sample (on the receiver's timeline) where the frame truly belongs
    arrival: float
    silence: bool = False


def talk(
    sender: str,
    spurts: list[tuple[float, int]],
    *,
    jitter: float = 0.015,
    ts0: int = 0x12345678,
    seq0: int = 4321,
    seed: int = 0,
    one_sided: bool = False,
    silence_frames: int = 5,
) -> list[Pkt]:
    """Packets of one member, in sequence order.

    ``spurts`` are ``(start seconds, frames)``; ``sender`` is ``"webrtc"`` (RTP clock runs
    through silence) or ``"discordpy"`` (timestamp advances 960 per packet sent only). Each
    spurt ends with ``silence_frames`` Opus silence frames, as both senders do.
    Arrival = spoken + BASE_DELAY + jitter (uniform in +-jitter, or 0..jitter if one_sided).
    """
    rng = random.Random(seed)
    out = []
    sent = 0
    first = round(spurts[0][0] * RATE)
    for n, (start, frames) in enumerate(spurts):
        s = round(start * RATE)
        for i in range(frames + silence_frames):
            spoken = s + FRAME * i
            ts = ts0 + (spoken - first if sender == "webrtc" else FRAME * sent)
            j = rng.uniform(0, jitter) if one_sided else rng.uniform(-jitter, jitter)
            out.append(
                Pkt(
                    n,
                    seq_add(seq0, sent),
                    ts & 0xFFFFFFFF,
                    spoken + round(BASE_DELAY * RATE),
                    spoken / RATE + BASE_DELAY + j,
                    i >= frames,
                )
            )
            sent += 1
    return out


def place(clock: StreamClock, packets: list[Pkt]) -> list[int]:
    return [clock.position(p.ts, p.arrival, silence=p.silence) for p in packets]


def check(packets: list[Pkt], positions: list[int], *, within: int = FRAME) -> None:
    """Every frame within ``within`` samples of the truth; exactly 960 apart inside a spurt."""
    for p, pos in zip(packets, positions):
        assert abs(pos - p.spoken) <= within, f"frame seq {p.seq} of spurt {p.spurt}: {pos} vs {p.spoken}"
    for a, b, pa, pb in zip(packets, packets[1:], positions, positions[1:]):
        assert pb >= pa + FRAME, "overlap"
        if a.spurt == b.spurt:
            assert pb - pa == FRAME, f"spacing {pb - pa} inside spurt {a.spurt}"


SENDERS = ["webrtc", "discordpy"]


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("pause", [0.1, 1.0, 60.0])
def test_pause_in_speech_is_placed_within_one_frame(sender: str, pause: float) -> None:
    spurts = []
    t = 0.5
    for _ in range(6):
        spurts.append((t, 50))
        t += (50 + 5) * 0.02 + pause  # audio, silence frames, then nothing for `pause`
    for seed in range(5):
        packets = talk(sender, spurts, seed=seed)
        check(packets, place(StreamClock(0.0), packets))


def test_a_sender_without_silence_frames_pausing_longer_than_gap() -> None:
    # Not every sender ends a spurt with silence frames; a pause longer than ``gap`` is seen
    # anyway (nothing arrived for that long).
    spurts = [(0.5 + 1.3 * k, 50) for k in range(5)]  # 1 s of speech, 0.3 s of nothing
    for seed in range(5):
        packets = talk("discordpy", spurts, seed=seed, silence_frames=0)
        check(packets, place(StreamClock(0.0), packets))


@pytest.mark.parametrize("sender", SENDERS)
def test_ten_minutes_of_jittery_speech_do_not_drift(sender: str) -> None:
    # One continuous 10-minute spurt with +-15 ms jitter: exactly 960 apart all the way,
    # and the last frame is as close to the truth as the first.
    packets = talk(sender, [(0.3, 30_000)], seed=3)
    clock = StreamClock(0.0)
    positions = place(clock, packets)
    check(packets, positions)
    assert positions[-1] - positions[0] == FRAME * (len(packets) - 1)
    assert clock.resyncs == 0


@pytest.mark.parametrize("sender", SENDERS)
def test_ten_minutes_of_talk_spurts_with_random_pauses(sender: str) -> None:
    rng = random.Random(11)
    spurts = []
    t = 0.2
    while t < 600:
        frames = rng.randint(10, 500)
        spurts.append((t, frames))
        t += (frames + 5) * 0.02 + rng.uniform(0.1, 5.0)
    packets = talk(sender, spurts, seed=5)
    clock = StreamClock(0.0)
    check(packets, place(clock, packets))
    # Every spurt start after the first re-decided by arrival at most once.
    assert clock.resyncs <= len(spurts) - 1


@pytest.mark.parametrize("sender", SENDERS)
def test_timestamp_wrap(sender: str) -> None:
    # The 32-bit timestamp wraps inside a spurt and (webrtc) inside a pause.
    packets = talk(sender, [(1.0, 40), (1.9, 40), (3.0, 40)], ts0=0xFFFFFFFF - 960 * 20 + 1, seq0=65520)
    assert any(p.ts < 960 * 20 for p in packets) and packets[0].ts > 0xFFFF0000
    check(packets, place(StreamClock(0.0), packets))


def test_through_the_jitter_buffer() -> None:
    # Reordered arrivals (jitter 30 ms span > 20 ms spacing) go through the jitter buffer;
    # placement uses each packet's own arrival time, not its release time.
    packets = talk("discordpy", [(0.5, 200), (5.0, 200)], seed=9)
    by_seq = {p.seq: p for p in packets}
    jb = JitterBuffer(depth=0.06)
    clock = StreamClock(0.0)
    placed: list[tuple[Pkt, int]] = []
    for p in sorted(packets, key=lambda p: p.arrival):
        jb.push(p.seq, p.ts, None, p.arrival)
        for r in jb.pop_ready(p.arrival):
            pos = clock.position(r.timestamp, r.arrival, lost_before=r.lost_before, new_stream=r.new_stream)
            placed.append((by_seq[r.sequence], pos))
    for r in jb.flush():
        placed.append((by_seq[r.sequence], clock.position(r.timestamp, r.arrival)))
    assert [p.seq for p, _ in placed] == [p.seq for p in packets]
    check([p for p, _ in placed], [pos for _, pos in placed])


def test_lost_frames_leave_room_for_concealment() -> None:
    packets = talk("webrtc", [(0.5, 30)], jitter=0.0)
    clock = StreamClock(0.0)
    kept = [p for i, p in enumerate(packets) if i not in (10, 11, 12)]
    positions = [clock.position(p.ts, p.arrival, lost_before=3 if p is packets[13] else 0) for p in kept]
    # The RTP distance places the packet after the hole exactly.
    assert positions[10] - positions[9] == 4 * FRAME
    assert clock.resyncs == 0


def test_room_for_lost_frames_even_when_arrival_decides() -> None:
    # A discord.py sender pauses; the first 2 packets after the pause are lost and the
    # third arrives early (jitter), only 10 ms after the previous frame's end. Arrival
    # decides, and the position leaves room for the 2 concealed frames (30 ms past arrival,
    # inside tolerance).
    clock = StreamClock(0.0)
    for i in range(10):
        clock.position(960 * i, 0.5 + 0.02 * i)
    end = clock.end
    assert end is not None
    pos = clock.position(960 * 12 + 50_000, end / RATE + 0.01, lost_before=2)
    assert pos == end + 2 * FRAME
    # A absurd report of 1000 lost frames cannot push the stream into the future: at most
    # tolerance past arrival.
    end = clock.end
    assert end is not None
    now = end / RATE + 0.5
    pos = clock.position(10**9, now, lost_before=1000)
    assert round(now * RATE) <= pos <= round(now * RATE) + round(0.06 * RATE)


def test_new_stream_uses_arrival_but_never_overlaps() -> None:
    clock = StreamClock(0.0)
    for i in range(10):
        clock.position(960 * i, 1.0 + 0.02 * i)
    end = clock.end
    assert end is not None
    # The sender restarted with an unrelated timestamp that happens to look contiguous.
    assert clock.position(960 * 10, 3.0, new_stream=True) == round(3.0 * RATE)
    # And a restart arriving before the previous frame ended is pushed after it.
    clock2 = StreamClock(0.0)
    clock2.position(5, 1.0)
    assert clock2.position(77, 1.001, new_stream=True) == round(1.0 * RATE) + FRAME


def test_discordpy_stall_detected_inside_the_gap_window() -> None:
    # A bot pauses 120 ms (arrival gap 140 ms < gap=0.2 s): its timestamp does not move,
    # but the disagreement with arrival (> tolerance) re-decides the position.
    clock = StreamClock(0.0)
    for i in range(20):
        clock.position(960 * i, 1.0 + 0.02 * i, silence=i >= 15)  # discord.py sends 5 before pausing
    pos = clock.position(960 * 20, 1.0 + 0.02 * 20 + 0.12)
    assert pos == round((1.0 + 0.02 * 20 + 0.12) * RATE)
    assert clock.resyncs == 1


def test_sender_reports_remove_arrival_jitter_from_spurt_starts() -> None:
    # One-sided queuing delay (0..15 ms). A WebRTC sender pauses 2 s between spurts; its
    # RTCP sender reports map RTP to its wall clock. With them, every spurt start lands on
    # the least-delayed path (within 1 ms of the truth); without them on its own packet's
    # delay.
    spurts = [(0.5 + 3.0 * n, 50) for n in range(8)]
    packets = talk("webrtc", spurts, jitter=0.015, one_sided=True, seed=2)
    wall0 = 1_700_000_000.0  # the sender's Unix time when it spoke its first frame
    ts0 = packets[0].ts
    rng = random.Random(4)

    def report(clock: StreamClock, at: float) -> None:
        # Sent at sender time ``at`` (seconds after the first frame was spoken).
        ntp = unix_to_ntp(wall0 + at)
        rtp = ts_add(ts0, round(at * RATE))
        clock.sender_report(ntp, rtp, packets[0].spoken / RATE + at + rng.uniform(0, 0.015))

    with_sr = StreamClock(0.0)
    without = StreamClock(0.0)
    for n in range(10):
        report(with_sr, -1.0 + 0.1 * n)
    starts = [i for i, p in enumerate(packets) if i == 0 or p.spurt != packets[i - 1].spurt]
    err_sr, err_plain, positions = [], [], []
    for i, p in enumerate(packets):
        a = with_sr.position(p.ts, p.arrival)
        b = without.position(p.ts, p.arrival)
        positions.append(a)
        if i in starts:
            err_sr.append(abs(a - p.spoken))
            err_plain.append(abs(b - p.spoken))
    assert max(err_sr) <= 48  # 1 ms
    assert max(err_plain) > 96  # the plain arrival is visibly off on some start
    check(packets, positions)


def test_sender_report_that_disagrees_with_arrival_is_ignored() -> None:
    # A sender whose RTP clock stands still in silence makes its report's mapping wrong
    # after a pause: arrival decides, within one frame.
    packets = talk("discordpy", [(0.5, 50), (5.0, 50)])
    clock = StreamClock(0.0)
    clock.sender_report(unix_to_ntp(1000.0), packets[0].ts, packets[0].arrival)
    check(packets, place(clock, packets))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.just(None),  # the next contiguous frame, arriving exactly one frame later
            st.tuples(
                st.integers(-3000, 100_000),  # timestamp step beyond contiguous
                st.floats(-0.05, 3.0),  # arrival step
                st.integers(0, 3),  # lost_before
                st.booleans(),  # new_stream
                st.sampled_from([480, 960, 1920]),  # frame size
            ),
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 0xFFFFFFFF),
)
def test_positions_never_overlap_and_contiguous_frames_stay_exact(steps, ts0) -> None:
    clock = StreamClock(0.0)
    ts, now = ts0, 10.0
    prev_end = None
    size = 960
    for step in steps:
        if step is None:
            ts_step, dt, lost, new = 0, size / RATE, 0, False
        else:
            ts_step, dt, lost, new, size = step
        ts = ts_add(ts, ts_step)
        now += dt
        pos = clock.position(ts, now, size, lost_before=lost, new_stream=new)
        if prev_end is not None:
            assert pos >= prev_end
            # Room for the lost frames, unless that would be more than tolerance past arrival.
            assert pos >= min(prev_end + lost * size, round(now * RATE) + round(0.06 * RATE))
            if step is None:
                assert pos == prev_end
        prev_end = pos + size
        ts = ts_add(ts, size)
        assert clock.end == prev_end


def test_timeline_pause_is_silence_and_positions_follow_the_wall_clock() -> None:
    tl = Timeline(100.0)
    assert tl.position(100.0) == 0 and tl.position(101.0) == RATE
    assert not tl.paused
    assert tl.pause(103.0) == 3 * RATE
    assert tl.paused and tl.paused_at(3 * RATE) and tl.paused_at(10 * RATE)
    assert tl.pause(103.5) == 3 * RATE  # already paused: unchanged
    assert tl.resume(104.0) == 4 * RATE
    assert tl.position(105.0) == 5 * RATE  # not shifted by the pause
    assert tl.pauses == ((3 * RATE, 4 * RATE),)
    assert tl.paused_at(3 * RATE + 1) and not tl.paused_at(4 * RATE) and not tl.paused_at(3 * RATE - 1)
    tl.pause(110.0)
    assert tl.paused_samples(110.5) == RATE + RATE // 2
    tl.resume(111.0)
    assert tl.paused_samples(200.0) == 2 * RATE
    assert tl.resume(112.0) == 12 * RATE and len(tl.pauses) == 2


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("pause", [0.1, 1.0, 60.0])
def test_recording_pause_drops_frames_and_resumes_on_the_wall_clock(sender: str, pause: float) -> None:
    # The member speaks throughout; the recording pauses 3 s in for ``pause`` seconds.
    # Frames arriving while paused are dropped by the caller; after resume, frames sit where
    # they were spoken and none lands inside the paused span.
    origin = 50.0
    packets = talk(sender, [(0.5, round((4.0 + pause) / 0.02))], seed=1)
    for p in packets:
        p.arrival += origin
    tl = Timeline(origin)
    clock = tl.stream_clock()
    kept, positions = [], []
    paused_at, resumed_at = origin + 3.0, origin + 3.0 + pause
    for p in packets:
        if paused_at <= p.arrival < resumed_at:
            tl.pause(paused_at)
            continue
        if p.arrival >= resumed_at and tl.paused:
            tl.resume(resumed_at)
        kept.append(p)
        positions.append(clock.position(p.ts, p.arrival))
    assert tl.pauses and len(kept) < len(packets)
    for p, pos in zip(kept, positions):
        assert abs(pos - p.spoken) <= FRAME
        assert not tl.paused_at(pos) or pause < 0.2  # a short pause may be bridged by RTP
    after = [pos for p, pos in zip(kept, positions) if p.arrival >= resumed_at]
    assert after[0] >= tl.pauses[0][1] - FRAME


def test_after_more_than_gap_without_packets_arrival_decides() -> None:
    # RTP and arrival roughly agree (50 ms apart, inside tolerance) but nothing arrived for
    # 0.24 s > gap: a new spurt, placed by arrival.
    clock = StreamClock(0.0, gap=0.2, tolerance=0.06)
    for i in range(10):
        clock.position(960 * i, 1.0 + 0.02 * i)
    last = 1.0 + 0.02 * 9
    pos = clock.position(960 * 10 + 9000, last + 0.24)
    assert pos == round((last + 0.24) * RATE) and clock.resyncs == 1


def test_one_late_packet_does_not_move_the_rest_of_its_spurt() -> None:
    # A network stall holds up a few packets of continuous speech by 70 ms (more than
    # tolerance): the sender's clock, not the arrival, says where they belong.
    clock = StreamClock(0.0)
    positions = []
    for i in range(30):  # a discord.py-like sender: contiguous sequence and timestamps
        send = 1.0 + i * 0.02
        arrival = send + 0.005
        if i == 5:
            arrival = send + 0.070  # held up 70 ms on the way
        elif i in (6, 7, 8):
            arrival = 1.0 + 5 * 0.02 + 0.077  # the next ones right behind it
        positions.append(clock.position((123456 + 960 * i) & 0xFFFFFFFF, arrival))
    steps = [b - a for a, b in itertools.pairwise(positions)]
    assert steps == [FRAME] * len(steps), steps
    assert clock.resyncs == 0


def test_a_pause_after_silence_frames_is_kept_even_when_short() -> None:
    # The same 70 ms, but after the silence frames a discord.py sender sends before it
    # pauses: its timestamp stood still, so this is a pause and arrival decides.
    clock = StreamClock(0.0)
    for i in range(20):
        clock.position(960 * i, 1.0 + 0.02 * i, silence=i >= 15)
    pos = clock.position(960 * 20, 1.0 + 0.02 * 20 + 0.07)
    assert pos == round((1.0 + 0.02 * 20 + 0.07) * RATE)
    assert clock.resyncs == 1


def test_a_bot_pausing_without_silence_frames_is_seen_past_drift_tolerance() -> None:
    clock = StreamClock(0.0, drift_tolerance=0.1)
    for i in range(20):
        clock.position(960 * i, 1.0 + 0.02 * i)
    pos = clock.position(960 * 20, 1.0 + 0.02 * 20 + 0.15)  # under gap (0.2 s), over 0.1 s
    assert pos == round((1.0 + 0.02 * 20 + 0.15) * RATE)


def test_drift_tolerance_is_validated() -> None:
    with pytest.raises(ValueError, match="drift_tolerance"):
        StreamClock(0.0, tolerance=0.06, drift_tolerance=0.05)


def test_a_delayed_sender_report_does_not_move_later_spurts() -> None:
    wall = 1.7e9  # the sender's wall clock reads wall + t at our monotonic t
    clock = StreamClock(0.0)
    for i in range(25):  # a first spurt at t = 1 s, 5 ms on the way
        clock.position(1000 + 960 * i, 1.0 + 0.02 * i + 0.005)
    clock.sender_report(unix_to_ntp(wall + 2.0), 1000 + 48000, now=2.055)  # its report, 55 ms queued
    for i in range(10):  # the next spurt, 5 ms on the way again
        placed = clock.position(1000 + 2 * 48000 + 960 * i, 3.005 + 0.02 * i)
        if i == 0:
            assert placed == round(3.005 * RATE), placed - 3 * RATE
    # A later spurt whose first packet is 15 ms late (jitter) is placed where the report,
    # corrected by the packet that proved a smaller offset, says: 5 ms after it was spoken.
    placed = clock.position(1000 + 5 * 48000, 6.02)
    assert placed == round(6.005 * RATE), placed - 6 * RATE


# The exact contract of StreamClock, at the boundaries the placement rules draw. Times are
# binary fractions (or whole samples) so that "exactly at the bound" is exact in floats too.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 0}, "sample_rate must be positive, got 0"),
        ({"sample_rate": -1}, "sample_rate must be positive"),
        ({"gap": 0.0}, "gap must be positive, got 0.0"),
        ({"gap": float("nan")}, "gap must be positive"),
        ({"tolerance": 0.0}, "tolerance must be positive, got 0.0"),
        ({"tolerance": 0.06, "drift_tolerance": 0.05}, r"drift_tolerance must be at least tolerance \(0.06\)"),
    ],
)
def test_stream_clock_says_which_argument_is_wrong(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StreamClock(0.0, **kwargs)  # type: ignore[arg-type]


def test_stream_clock_accepts_the_smallest_valid_arguments() -> None:
    clock = StreamClock(2.0, sample_rate=1, gap=1e-9, tolerance=0.5, drift_tolerance=0.5)
    assert (clock.origin, clock.sample_rate, clock.gap, clock.tolerance) == (2.0, 1, 1e-9, 0.5)
    assert clock.position(0, 4.0) == 2  # two seconds after the origin, at one sample a second
    defaults = StreamClock(0)
    assert (defaults.sample_rate, defaults.gap, defaults.tolerance) == (RATE, 0.2, 0.06)
    assert isinstance(defaults.tolerance, float) and defaults.end is None


def test_timeline_validates_its_rate_and_hands_it_to_stream_clocks() -> None:
    with pytest.raises(ValueError, match="sample_rate must be positive, got 0"):
        Timeline(0.0, sample_rate=0)
    one = Timeline(1.0, sample_rate=1)
    assert one.position(5.0) == 4
    clock = Timeline(1.0, sample_rate=8000).stream_clock(gap=0.5)
    assert (clock.origin, clock.sample_rate, clock.gap) == (1.0, 8000, 0.5)


@pytest.mark.parametrize(("silence", "limit"), [(False, 0.25), (True, 0.06)])
@pytest.mark.parametrize("direction", [1, -1])
def test_arrival_may_drift_from_rtp_up_to_the_tolerance_then_arrival_decides(
    silence: bool, limit: float, direction: int
) -> None:
    # Every frame arrives 5 ms (240 samples) later (or earlier) than the one before on top of
    # its 20 ms: after k frames arrival and RTP disagree by k * 240 samples. Within a spurt
    # that is accepted up to `drift_tolerance` (0.25 s) after audio frames and `tolerance`
    # (0.06 s) after silence frames, both inclusive; the first frame past it starts a spurt.
    clock = StreamClock(1.0)
    step = 0.02 + direction * 0.005
    last_ok = round(limit * RATE) // 240  # the last frame exactly at the bound
    positions = [clock.position(FRAME * k, 1.0 + step * k, silence=silence) for k in range(last_ok + 2)]
    assert positions[: last_ok + 1] == [FRAME * k for k in range(last_ok + 1)]
    assert clock.resyncs == 1
    # Placed by arrival, but never before the end of the frame before it.
    assert positions[-1] == max(round(step * (last_ok + 1) * RATE), FRAME * (last_ok + 1))


def test_resyncs_count_every_frame_placed_by_arrival() -> None:
    clock = StreamClock(0.0)
    for spurt in range(4):  # four spurts 1 s apart, each of 3 frames
        for k in range(3):
            clock.position(FRAME * (10 * spurt + k), spurt + 0.02 * k)
    assert clock.resyncs == 3


def test_gap_and_timestamp_jump_bounds_are_inclusive() -> None:
    gap = 0.25  # 12000 samples, exact in binary
    # A frame exactly `gap` after the last arrival, whose timestamp jumps exactly `gap`:
    # still the same spurt, placed by RTP (12960 = end 960 + 12000), not by arrival (12000).
    clock = StreamClock(1.0, gap=gap)
    clock.position(0, 1.0)
    assert clock.position(FRAME + 12000, 1.25) == 960 + 12000
    assert clock.resyncs == 0
    # One sample further and RTP is discontinuous: arrival decides.
    clock = StreamClock(1.0, gap=gap)
    clock.position(0, 1.0)
    assert clock.position(FRAME + 12001, 1.25) == 12000
    assert clock.resyncs == 1


def test_reported_losses_widen_the_gap_by_their_duration() -> None:
    gap = 0.25
    # Two frames lost (40 ms): the packet after them may come up to gap + 40 ms after the
    # last one and stay on the RTP clock ...
    clock = StreamClock(1.0, gap=gap)
    clock.position(0, 1.0)
    assert clock.position(FRAME + 12540, 1.28125, lost_before=2) == 960 + 12540
    assert clock.resyncs == 0
    # ... but not later, even when its timestamp agrees with its arrival.
    clock = StreamClock(1.0, gap=gap)
    clock.position(0, 1.0)
    assert clock.position(FRAME + 13440, 1.3, lost_before=2) == 14400
    assert clock.resyncs == 1


def _sr_clock(origin: float, wall: float, offset: float, ts0: int) -> StreamClock:
    """A clock that got one sender report: the sender's wall clock reads `wall + t` at our
    monotonic `t - offset`, and its RTP clock reads `ts0` at our monotonic `origin`."""
    clock = StreamClock(origin)
    clock.sender_report(unix_to_ntp(wall + origin), ts0, origin + offset)
    return clock


def test_a_spurt_start_placed_by_a_sender_report_keeps_its_lag_for_the_rest_of_the_spurt() -> None:
    # The report puts the spurt start 40 ms before its arrival (within tolerance): the start
    # goes there, and the following frames, which arrive with the same 40 ms, continue it.
    origin, ts0 = 100.0, 5000
    clock = _sr_clock(origin, 1.7e9, 0.0, ts0)
    start = ts0 + 2 * RATE  # spoken 2 s after the origin
    placed = [clock.position(start + FRAME * k, origin + 2.04 + 0.02 * k) for k in range(30)]
    assert placed == [2 * RATE + FRAME * k for k in range(30)]
    assert clock.resyncs == 0


@pytest.mark.parametrize(
    ("late", "placed_at"),
    [
        (0.0, 0),  # arrival and report agree: the same sample
        (0.0625, 0),  # arrival 60 ms + 2.5 ms after the report's sample: still the report
        (0.0625 + 1 / RATE, 3001),  # one sample past tolerance: arrival
        (-0.0625, -3000),  # the report predicts 62.5 ms after arrival (a slow report): arrival
        (-0.0625 - 1 / RATE, -3001),  # past tolerance the other way: arrival, report ignored
    ],
)
def test_sender_report_placement_bounds(late: float, placed_at: int) -> None:
    # tolerance 0.0625 s = 3000 samples. The sender spoke at our origin + 2 s; the frame
    # arrives `late` after that.
    origin, ts0 = 100.0, 7000
    clock = StreamClock(origin, tolerance=0.0625)
    clock.sender_report(unix_to_ntp(1.7e9), ts0, origin)
    pos = clock.position(ts0 + 2 * RATE, origin + 2.0 + late)
    assert pos - 2 * RATE == placed_at


def test_a_report_predicting_after_arrival_lowers_the_offset_for_later_spurts() -> None:
    origin, ts0 = 100.0, 7000
    clock = StreamClock(origin)
    clock.sender_report(unix_to_ntp(1.7e9), ts0, origin + 0.03)  # queued 30 ms
    # A spurt that arrived only 10 ms after it was spoken: the report (30 ms) predicts it
    # 20 ms after its arrival; arrival places it, and teaches the clock a 10 ms offset.
    assert clock.position(ts0 + 2 * RATE, origin + 2.01) == 2 * RATE + 480
    # The next spurt arrives 25 ms after it was spoken: placed 10 ms after, not 30 ms.
    assert clock.position(ts0 + 5 * RATE, origin + 5.025) == 5 * RATE + 480


def test_a_report_predicting_exactly_tolerance_after_arrival_still_teaches_its_offset() -> None:
    # tolerance 0.0625 s = 3000 samples, exact in binary: the boundary sample itself.
    origin, ts0 = 100.0, 7000
    clock = StreamClock(origin, tolerance=0.0625)
    clock.sender_report(unix_to_ntp(1.7e9), ts0, origin)
    assert clock.position(ts0 + 2 * RATE, origin + 2.0 - 0.0625) == 2 * RATE - 3000  # arrival
    # The clock learnt that packets arrive 62.5 ms before the report says: the next spurt,
    # 10 ms later than that, goes where the report now predicts, not to its arrival.
    assert clock.position(ts0 + 5 * RATE, origin + 5.0 - 0.0625 + 0.01) == 5 * RATE - 3000


def test_a_short_pause_after_a_report_placed_start_is_judged_against_that_start() -> None:
    # The report put the spurt 50 ms before its first packet's arrival (lag 2400 samples).
    # After a silence frame, a frame whose RTP time stood still arrives 40 ms later than RTP
    # says: within the 60 ms tolerance of that lag, so it continues the spurt.
    origin, ts0 = 100.0, 5000
    clock = _sr_clock(origin, 1.7e9, 0.0, ts0)
    start = ts0 + 2 * RATE
    assert clock.position(start, origin + 2.05) == 2 * RATE
    assert clock.position(start + FRAME, origin + 2.07, silence=True) == 2 * RATE + FRAME
    assert clock.position(start + 2 * FRAME, origin + 2.09 + 0.04) == 2 * RATE + 2 * FRAME
    assert clock.resyncs == 0


def test_sender_report_offset_is_the_minimum_over_the_last_eight_reports() -> None:
    origin, ts0 = 100.0, 7000
    clock = StreamClock(origin)
    clock.sender_report(unix_to_ntp(1.7e9), ts0, origin + 0.010)  # one fast report (10 ms) ...
    for n in range(1, 9):  # ... then eight at 30 ms push it out of the history
        clock.sender_report(unix_to_ntp(1.7e9 + n), ts0 + n * RATE, origin + n + 0.030)
    # A spurt spoken at 20 s arrives 35 ms later: the report places it 30 ms after it was
    # spoken (with the forgotten 10 ms report it would be 10 ms).
    assert clock.position(ts0 + 20 * RATE, origin + 20.035) == 20 * RATE + 1440


def test_a_sender_clock_that_goes_back_forgets_older_offsets() -> None:
    origin, ts0 = 100.0, 7000
    clock = StreamClock(origin)
    clock.sender_report(unix_to_ntp(1.7e9 + 10), ts0 + 10 * RATE, origin + 10.010)  # 10 ms
    # The sender's wall clock is stepped 5 s back: its reports now say 1.7e9 + t - 5.
    clock.sender_report(unix_to_ntp(1.7e9 + 6), ts0 + 11 * RATE, origin + 11.030)
    # Offsets from before the step are meaningless: only the 30 ms one counts.
    assert clock.position(ts0 + 20 * RATE, origin + 20.035) == 20 * RATE + 1440


def test_a_sender_report_at_the_same_wall_time_keeps_the_history() -> None:
    origin, ts0 = 100.0, 7000
    clock = StreamClock(origin)
    clock.sender_report(unix_to_ntp(1.7e9 + 1), ts0 + RATE, origin + 1.010)
    clock.sender_report(unix_to_ntp(1.7e9 + 1), ts0 + RATE, origin + 1.030)  # a duplicate, later
    assert clock.position(ts0 + 20 * RATE, origin + 20.035) == 20 * RATE + 480


def test_a_pause_covers_its_first_sample_but_not_the_one_where_recording_resumes() -> None:
    timeline = Timeline(0.0)
    timeline.pause(1.0)  # sample 48000
    assert timeline.paused_samples(1.0) == 0  # not a sample yet at the instant it starts
    assert timeline.paused_samples(0.5) == 0  # a clock reading from before the pause
    timeline.resume(1.5)  # sample 72000
    assert (timeline.paused_at(47999), timeline.paused_at(48000)) == (False, True)
    assert (timeline.paused_at(71999), timeline.paused_at(72000)) == (True, False)
    assert timeline.paused_samples(9.0) == 24000


def _rel(seq: int, ts: int, arrival: float, new_stream: bool = False) -> Released:
    return Released(seq & 0xFFFF, ts & 0xFFFFFFFF, None, arrival, 0, new_stream)


def test_debursted_arrivals_caps_each_by_its_successor_minus_their_rtp_distance() -> None:
    # a burst read at once: each earlier packet could not have been sent later than 20 ms per
    # frame before the next one (chained from the end)
    burst = [_rel(65534 + k, 2**32 - 1920 + 960 * k, 1.0 + 0.0001 * k) for k in range(4)]  # wraps
    assert debursted_arrivals(burst) == pytest.approx([1.0003 - 0.06, 1.0003 - 0.04, 1.0003 - 0.02, 1.0003])
    # chained: the last packet's early arrival moves both before it, though the middle one came late
    assert debursted_arrivals([_rel(1, 0, 1.0), _rel(2, 960, 1.05), _rel(3, 1920, 1.0001)]) == pytest.approx(
        [0.9601, 0.9801, 1.0001]
    )
    # a lost packet in between: the cap is two frames
    assert debursted_arrivals([_rel(1, 0, 1.0), _rel(3, 1920, 1.0001)]) == pytest.approx([0.9601, 1.0001])
    # paced packets stay as they are (exactly)
    paced = [_rel(1, 0, 1.0), _rel(2, 960, 1.025), _rel(3, 1920, 1.05)]
    assert debursted_arrivals(paced) == [1.0, 1.025, 1.05]
    # a timestamp that does not follow the sequence (a pause, a new clock) is no evidence
    assert debursted_arrivals([_rel(1, 0, 1.0), _rel(2, 960 * 5, 1.0001)]) == [1.0, 1.0001]
    assert debursted_arrivals([_rel(1, 0, 1.0), _rel(1, 0, 1.0001)]) == [1.0, 1.0001]  # no step
    # a new stream is no evidence about the packet before it, but the ones before that still are
    mixed = [_rel(1, 0, 1.0), _rel(2, 960, 1.0001), _rel(500, 10**6, 1.0002, True), _rel(501, 10**6 + 960, 1.0003)]
    assert debursted_arrivals(mixed) == pytest.approx([1.0001 - 0.02, 1.0001, 1.0003 - 0.02, 1.0003])
    assert debursted_arrivals([]) == [] and debursted_arrivals([_rel(1, 0, 2.0)]) == [2.0]


def test_a_frame_exactly_drift_tolerance_early_stays_on_its_rtp_place() -> None:
    """Within a spurt, after an audio frame, arrival may disagree with RTP placement by up to
    ``drift_tolerance`` (0.25 s = 12000 samples) either way, bounds included."""
    for early, resyncs in ((12000, 0), (12001, 1)):
        clock = StreamClock(origin=0.0)
        assert clock.position(48000, 1.0) == 48000
        at = (48000 + 960 - early) / 48000  # the next frame, `early` samples before its RTP place
        assert clock.position(48000 + 960, at) == 48960  # (a resync may not go before the last end)
        assert clock.resyncs == resyncs, early
