"""Jitter buffer (discord.ext.listening.reorder) and wrap-safe RTP arithmetic (seqmath)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discord.ext.listening.reorder import JitterBuffer, PushResult, Released
from discord.ext.listening.seqmath import seq_add, seq_diff, ts_add, ts_diff

DEPTH = 0.06
FRAME = 0.02
TICK = 0.005
TS0 = 123_456

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- arithmetic -----------------------------------------------------------------------------


@given(st.integers(0, 0xFFFF), st.integers(-32768, 32767))
def test_seq_diff_inverts_seq_add(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert 0 <= b <= 0xFFFF
    assert seq_diff(b, a) == n


@given(st.integers(0, 0xFFFFFFFF), st.integers(-(2**31), 2**31 - 1))
def test_ts_diff_inverts_ts_add(a: int, n: int) -> None:
    b = ts_add(a, n)
    assert 0 <= b <= 0xFFFFFFFF
    assert ts_diff(b, a) == n


def test_wrap_edges() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(32768, 0) == -32768  # the one ambiguous distance resolves to the low end
    assert ts_diff(0, 0xFFFFFFFF) == 1
    assert ts_add(0xFFFFFFFF, 960) == 959


# -- a small simulator ------------------------------------------------------------------------


def simulate(
    jb: JitterBuffer,
    arrivals: list[tuple[float, int, int]],
    *,
    until: float | None = None,
) -> list[tuple[float, Released]]:
    """Push ``(arrival, seq, ts)`` in arrival order, polling at each arrival and every TICK.

    Returns ``(release time, item)`` pairs, then everything :meth:`flush` gives (time inf).
    """
    out: list[tuple[float, Released]] = []
    events = sorted(arrivals, key=lambda e: e[0])
    last = events[-1][0] if events else 0.0
    end = (last + 3 * DEPTH) if until is None else until
    t = 0.0
    i = 0
    while t <= end or i < len(events):
        while i < len(events) and events[i][0] <= t:
            arrival, seq, ts = events[i]
            jb.push(seq, ts, (seq, arrival), arrival)
            out.extend((arrival, r) for r in jb.pop_ready(arrival))
            i += 1
        out.extend((t, r) for r in jb.pop_ready(t))
        t = round(t + TICK, 9)
        if not len(jb) and i < len(events) and events[i][0] > t:
            # Nothing held: polling would find nothing until the next arrival.
            t = round(TICK * (events[i][0] // TICK), 9)
    out.extend((float("inf"), r) for r in jb.flush())
    return out


def index_of(seq: int, s0: int) -> int:
    return (seq - s0) & 0xFFFF


def check_gaps(items: list[Released], s0: int) -> list[int]:
    """Released indexes; asserts order and that lost_before counts exactly the holes."""
    ks = [index_of(r.sequence, s0) for r in items]
    for n, (k, r) in enumerate(zip(ks, items)):
        if n == 0:
            assert r.new_stream and r.lost_before == 0
        else:
            assert k > ks[n - 1], f"out of order: {ks[n - 1]} then {k}"
            assert not r.new_stream
            assert r.lost_before == k - ks[n - 1] - 1
        assert r.timestamp == (TS0 + 960 * k) & 0xFFFFFFFF
    return ks


starts = st.one_of(st.integers(65535 - 160, 65535), st.integers(0, 65535))


@FAST
@given(
    s0=starts,
    copies=st.lists(st.lists(st.floats(0.0, DEPTH * 0.9), max_size=3), min_size=1, max_size=150),
)
def test_any_pattern_within_depth_releases_each_survivor_once_in_order(s0: int, copies: list[list[float]]) -> None:
    # Any permutation / duplication / loss with delays below depth: nothing is late, every
    # packet that arrived comes out exactly once, in order, and the holes are the losses.
    arrivals = [
        (k * FRAME + d, seq_add(s0, k), (TS0 + 960 * k) & 0xFFFFFFFF) for k, ds in enumerate(copies) for d in ds
    ]
    jb = JitterBuffer(depth=DEPTH)
    out = simulate(jb, arrivals)
    items = [r for _, r in out]
    survivors = sorted(k for k, ds in enumerate(copies) if ds)
    ks = check_gaps(items, s0)
    assert ks == survivors
    st_ = jb.stats
    assert st_.received == len(arrivals)
    assert st_.released == len(survivors)
    assert st_.duplicates == len(arrivals) - len(survivors)
    assert st_.late == st_.overflow == st_.restarts == st_.held == 0
    assert st_.received == st_.released + st_.duplicates + st_.late + st_.overflow
    expected_lost = (survivors[-1] - survivors[0] + 1 - len(survivors)) if survivors else 0
    assert st_.lost == sum(r.lost_before for r in items) == expected_lost
    # Never a stall: everything leaves within depth of its arrival (plus one poll tick).
    for t, r in out:
        assert t - r.arrival <= DEPTH + TICK + 1e-9, (t, r)


@FAST
@given(
    s0=starts,
    copies=st.lists(st.lists(st.floats(0.0, 0.5), max_size=3), min_size=1, max_size=150),
)
def test_any_pattern_with_late_packets_keeps_order_and_counts(s0: int, copies: list[list[float]]) -> None:
    # Delays up to 0.5 s (8x depth): some packets are late. Still: strictly in order, no
    # packet twice, every push accounted for, losses exact, latency bounded by depth.
    arrivals = [
        (k * FRAME + d, seq_add(s0, k), (TS0 + 960 * k) & 0xFFFFFFFF) for k, ds in enumerate(copies) for d in ds
    ]
    jb = JitterBuffer(depth=DEPTH)
    out = simulate(jb, arrivals)
    items = [r for _, r in out]
    ks = check_gaps(items, s0)
    survivors = {k for k, ds in enumerate(copies) if ds}
    assert set(ks) <= survivors
    st_ = jb.stats
    assert st_.restarts == st_.overflow == st_.held == 0
    assert st_.received == len(arrivals) == st_.released + st_.duplicates + st_.late + st_.overflow
    assert st_.lost == sum(r.lost_before for r in items)
    # A survivor that was not released was late, every copy of it.
    assert len(survivors) - len(ks) <= st_.late
    for t, r in out:
        assert t - r.arrival <= DEPTH + TICK + 1e-9


def stream(
    n: int, *, s0: int = 1000, skip: frozenset[int] = frozenset(), start: float = 0.0
) -> list[tuple[float, int, int]]:
    return [(start + k * FRAME, seq_add(s0, k), (TS0 + 960 * k) & 0xFFFFFFFF) for k in range(n) if k not in skip]


def test_single_loss_stalls_at_most_depth() -> None:
    jb = JitterBuffer(depth=DEPTH)
    out = simulate(jb, stream(40, skip=frozenset({10})))
    times = {index_of(r.sequence, 1000): (t, r) for t, r in out}
    assert 10 not in times
    t11, r11 = times[11]
    assert r11.lost_before == 1
    # Released at the first poll after waiting depth, not later; 12 and 13 (which arrived
    # meanwhile) leave with it; 14 and on are in order again and leave on arrival.
    assert r11.arrival + DEPTH <= t11 <= r11.arrival + DEPTH + TICK + 1e-9
    assert times[12][0] == times[13][0] == t11
    for k in range(14, 40):
        assert times[k][0] == times[k][1].arrival
    assert jb.stats.lost == 1


def test_first_packet_waits_depth_then_in_order_packets_leave_on_arrival() -> None:
    jb = JitterBuffer(depth=DEPTH)
    assert jb.push(5, TS0 + 960, "a", 1.0) is PushResult.ACCEPTED
    assert jb.pop_ready(1.0) == []
    assert jb.next_deadline() == pytest.approx(1.0 + DEPTH)
    # An earlier packet arriving within depth of the first is not late: it starts the stream.
    assert jb.push(4, TS0, "b", 1.01) is PushResult.ACCEPTED
    assert jb.pop_ready(1.05) == []
    got = jb.pop_ready(1.0 + DEPTH)
    assert [r.sequence for r in got] == [4, 5]
    assert got[0].new_stream and not got[1].new_stream
    jb.push(6, TS0 + 1920, "c", 1.065)  # within depth of the one before it
    assert jb.next_deadline() == 1.065
    assert [r.payload for r in jb.pop_ready(1.065)] == ["c"]


def test_a_packet_after_a_quiet_stretch_waits_for_the_burst_a_stall_held_up() -> None:
    """A network stall holds packets back and delivers them in a burst: the first of them,
    released alone, would be placed by its late arrival and shift the rest of the speech by
    the stall. A packet coming more than ``depth`` after its predecessor waits ``depth``, so
    the burst comes out with it (arrivals exact); within ``depth`` it leaves at once."""
    jb = JitterBuffer(depth=DEPTH)
    early = stream(10)  # 0.00 .. 0.18
    stalled = [(0.18 + 0.2 + 0.0001 * k, seq_add(1000, 10 + k), TS0 + 960 * (10 + k)) for k in range(10)]
    out = simulate(jb, early + stalled)
    by_seq = {r.sequence: (t, r) for t, r in out}
    assert [r.sequence for _, r in out] == [seq_add(1000, k) for k in range(20)]
    assert [by_seq[seq_add(1000, 10 + k)][0] for k in range(10)] == [pytest.approx(0.38 + DEPTH, abs=TICK)] * 10
    assert [by_seq[seq_add(1000, 10 + k)][1].arrival for k in range(10)] == [a for a, _, _ in stalled]
    assert jb.stats.lost == 0
    # the deadline says so, and a packet after the burst, in time, is not held
    jb2 = JitterBuffer(depth=DEPTH)
    jb2.push(1, TS0, "a", 0.0)
    assert [r.payload for r in jb2.pop_ready(DEPTH)] == ["a"]
    jb2.push(2, TS0 + 960, "b", 0.3)
    assert jb2.pop_ready(0.3) == [] and jb2.next_deadline() == pytest.approx(0.3 + DEPTH)
    jb2.push(3, TS0 + 1920, "c", 0.3 + DEPTH)  # exactly depth after: not a quiet stretch
    assert [r.payload for r in jb2.pop_ready(0.3 + DEPTH)] == ["b", "c"]
    jb2.push(4, TS0 + 2880, "d", 0.3 + 2 * DEPTH)
    assert jb2.next_deadline() == pytest.approx(0.3 + 2 * DEPTH)
    assert [r.payload for r in jb2.pop_ready(0.3 + 2 * DEPTH)] == ["d"]


def test_wrap_with_reordering_around_it() -> None:
    seqs = [65530, 65531, 65533, 65532, 0, 65535, 65534, 2, 1, 3, 4, 5]
    k_of = {s: (s - 65530) & 0xFFFF for s in seqs}
    jb = JitterBuffer(depth=DEPTH)
    released: list[Released] = []
    for i, s in enumerate(seqs):
        now = i * 0.01
        assert jb.push(s, (0xFFFFFFFF - 3000 + 960 * k_of[s]) & 0xFFFFFFFF, None, now).accepted
        released += jb.pop_ready(now)
    released += jb.pop_ready(1.0)
    assert [r.sequence for r in released] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3, 4, 5]
    assert jb.stats.lost == 0 and jb.stats.restarts == 0 and jb.stats.late == 0


def test_duplicates_and_late_are_dropped_and_counted() -> None:
    jb = JitterBuffer(depth=DEPTH)
    for k in range(3):
        jb.push(100 + k, TS0 + 960 * k, k, k * FRAME)
    assert jb.push(101, TS0 + 960, "dup", 0.05) is PushResult.DUPLICATE  # while held
    got = jb.pop_ready(1.0)
    assert [r.payload for r in got] == [0, 1, 2]
    r = jb.push(101, TS0 + 960, "dup", 1.0)  # after release: still a duplicate, not late
    assert r is PushResult.DUPLICATE and r.duplicate and not r.accepted
    # 104 goes out after waiting depth with 103 declared lost; 103 then is late.
    jb.push(104, TS0 + 960 * 4, 4, 1.1)
    assert [(x.sequence, x.lost_before) for x in jb.pop_ready(1.1 + DEPTH)] == [(104, 1)]
    r = jb.push(103, TS0 + 960 * 3, 3, 1.2)
    assert r is PushResult.LATE and r.late
    s = jb.stats
    assert (s.received, s.released, s.duplicates, s.late, s.lost) == (7, 4, 2, 1, 1)


def test_long_idle_gap_is_not_loss() -> None:
    # Speech, five minutes of nothing, speech again with the next sequence number (both
    # sender kinds keep sequence numbers contiguous; a WebRTC timestamp jumps meanwhile).
    jb = JitterBuffer(depth=DEPTH)
    first = stream(50, s0=65500)
    gap = 300.0
    second = [
        (gap + k * FRAME, seq_add(65500, 50 + k), (TS0 + 960 * (50 + k) + 48000 * 300) & 0xFFFFFFFF) for k in range(50)
    ]
    out = simulate(jb, first + second)
    assert len(out) == 100
    assert jb.stats.lost == 0 and jb.stats.restarts == 0
    t50, r50 = next((t, r) for t, r in out if r.sequence == seq_add(65500, 50))
    # it waits depth, as after any quiet stretch (see the stall test), and keeps its arrival
    assert t50 == pytest.approx(gap + DEPTH) and r50.arrival == gap
    assert r50.lost_before == 0 and not r50.new_stream


def test_restart_is_a_new_stream_not_thirty_thousand_losses() -> None:
    jb = JitterBuffer(depth=DEPTH)
    old = stream(30, s0=1000)
    new = [(0.7 + k * FRAME, seq_add(40000, k), (TS0 + 10**8 + 960 * k) & 0xFFFFFFFF) for k in range(30)]
    # A straggler of the old stream arrives after the new one began; it must not restart again.
    straggler = [(0.75, seq_add(1000, 25), TS0 + 960 * 25)]
    out = simulate(jb, old + new + straggler)
    items = [r for _, r in out]
    assert [r.sequence for r in items] == [seq_add(1000, k) for k in range(30)] + [seq_add(40000, k) for k in range(30)]
    assert [i for i, r in enumerate(items) if r.new_stream] == [0, 30]
    s = jb.stats
    assert s.restarts == 1 and s.lost == 0 and s.duplicates == 1


def test_restart_behind_in_sequence() -> None:
    # A restarted sender whose random sequence number lands far behind the old one (and
    # whose random timestamp lands ahead: see the next test for one behind).
    jb = JitterBuffer(depth=DEPTH)
    new = [(0.5 + k * FRAME, seq_add(20000, k), TS0 + 10**8 + 960 * k) for k in range(20)]
    out = simulate(jb, stream(20, s0=30000) + new)
    assert len(out) == 40 and jb.stats.restarts == 1 and jb.stats.late == 0


def test_replayed_old_packets_are_late_and_do_not_disturb_the_stream() -> None:
    # Authentic packets replayed seconds or minutes later (transport encryption does not
    # stop replays): behind in timestamp, outside the windows in sequence. They must not
    # restart the stream (which would re-release old audio and declare the live packets
    # after them lost), whether they look behind or, past half the sequence space, ahead.
    jb = JitterBuffer(depth=DEPTH)
    live = stream(3000, s0=65000)
    replays = []
    for k in range(150, 3000, 7):  # each live packet k comes with a replay of an older one
        old = k - 101 - (k * 37) % (k - 101) if k > 101 else 0
        replays.append((live[k][0] + 0.001, live[old][1], live[old][2]))
    far = [(30.0 + k * FRAME, seq_add(65000, 2999 + 20000 + k), TS0 + 960 * 100 + 960 * k) for k in range(10)]
    out = simulate(jb, live + replays + far)
    assert [r.sequence for _, r in out] == [seq for _, seq, _ in live]
    assert [i for i, (_, r) in enumerate(out) if r.new_stream] == [0]
    s = jb.stats
    assert s.restarts == 0 and s.lost == 0 and s.late + s.duplicates == len(replays) + len(far)


def test_restart_behind_in_both_sequence_and_timestamp_needs_probation() -> None:
    # A real restart whose random numbers land behind in both: it looks like replayed old
    # packets until restart_probation of them arrived in a row with the old stream quiet.
    jb = JitterBuffer(depth=DEPTH, restart_probation=10)
    new = stream(30, s0=20000, start=0.5)  # TS0-based: behind the old stream's timestamps
    out = simulate(jb, stream(20, s0=30000) + new)
    items = [r for _, r in out]
    assert [r.sequence for r in items[20:]] == [seq for _, seq, _ in new[9:]]
    assert items[20].new_stream and jb.stats.restarts == 1 and jb.stats.late == 9
    # The same run interleaved with live packets of the current stream never restarts it.
    jb = JitterBuffer(depth=DEPTH, restart_probation=10)
    live = stream(60, s0=30000)
    fake = [(t + 0.3 + 0.001, seq, ts) for t, seq, ts in stream(40, s0=20000)]
    out = simulate(jb, live + fake)
    assert [r.sequence for _, r in out] == [seq for _, seq, _ in live] and jb.stats.restarts == 0


def test_timestamp_moving_against_sequence_is_a_restart() -> None:
    # Sequence continues (+3) but the timestamp goes backwards: a new stream that happens
    # to land inside the loss window. Declaring 2 losses before it would be wrong.
    jb = JitterBuffer(depth=DEPTH)
    a = stream(10, s0=500)
    b = [(0.3 + k * FRAME, seq_add(512, k), 5_000 + 960 * k) for k in range(10)]
    out = simulate(jb, a + b)
    items = [r for _, r in out]
    assert len(items) == 20 and jb.stats.restarts == 1 and jb.stats.lost == 0
    assert items[10].new_stream and items[10].lost_before == 0


def test_old_packets_held_at_restart_come_out_first_and_in_order() -> None:
    jb = JitterBuffer(depth=DEPTH)
    for k in (0, 1, 3):  # 2 missing, 3 held waiting for it
        jb.push(10 + k, TS0 + 960 * k, k, 0.01 * k)
    assert [r.payload for r in jb.pop_ready(0.0 + DEPTH)] == [0, 1]
    assert jb.push(50000, TS0 + 10**8, "n0", 0.04) is PushResult.RESTART
    assert jb.push(50001, TS0 + 10**8 + 960, "n1", 0.05).accepted
    got = jb.pop_ready(0.04 + DEPTH) + jb.pop_ready(1.0)
    assert [(r.payload, r.lost_before, r.new_stream) for r in got] == [
        (3, 1, False),
        ("n0", 0, True),
        ("n1", 0, False),
    ]


def test_overflow_drops_oldest_and_reports_its_place_as_lost() -> None:
    jb = JitterBuffer(depth=DEPTH, max_packets=4)
    released = []
    for k in range(5):
        jb.push(k, TS0 + 960 * k, k, k * FRAME)
        released += jb.pop_ready(k * FRAME + DEPTH)
    assert [r.sequence for r in released] == [0, 1, 2, 3, 4]
    # 5 is missing; 6..15 arrive in a burst, more than fit.
    results = [jb.push(k, TS0 + 960 * k, k, 1.0) for k in range(6, 16)]
    assert results.count(PushResult.OVERFLOW) == 6 and len(jb) == 4
    got = jb.pop_ready(1.0 + DEPTH)
    assert [(r.sequence, r.lost_before) for r in got] == [(12, 7), (13, 0), (14, 0), (15, 0)]
    s = jb.stats
    assert s.overflow == 6 and s.lost == 7
    assert s.received == s.released + s.duplicates + s.late + s.overflow


@FAST
@given(
    packets=st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.booleans()), max_size=600),
    narrow=st.booleans(),
)
def test_flood_of_random_sequence_numbers_stays_bounded(packets: list[tuple[int, int, bool]], narrow: bool) -> None:
    # Random sequence numbers (``narrow``: all inside the windows, so they pile up rather
    # than restart), polled or not: never more than max_packets held, internal queues
    # bounded, every push accounted for, each stream's output consistent.
    jb = JitterBuffer(depth=DEPTH, max_packets=16)
    released: list[Released] = []
    for i, (seq, ts, poll) in enumerate(packets):
        now = i * 0.001
        if narrow:
            seq, ts = seq % 300, TS0 + 960 * (seq % 300)
        jb.push(seq, ts, None, now)
        assert len(jb) <= 16
        assert len(jb._fifo) <= jb._fifo_limit and len(jb._bounds) <= 17 and len(jb._heap) == len(jb)
        if poll:
            released += jb.pop_ready(now)
    released += jb.flush()
    s = jb.stats
    assert s.held == 0
    assert s.received == len(packets) == s.released + s.duplicates + s.late + s.overflow
    assert s.released == len(released)
    assert s.lost == sum(r.lost_before for r in released)
    for prev, cur in itertools.pairwise(released):
        if not cur.new_stream:
            assert (cur.sequence - prev.sequence) & 0xFFFF == cur.lost_before + 1


def test_reset_forgets_the_stream() -> None:
    jb = JitterBuffer(depth=DEPTH)
    for k in range(5):
        jb.push(k, TS0 + 960 * k, k, 0.0)
    assert len(jb.reset()) == 5
    # The caller dropped 500 packets (a paused recording): no loss declared after reset.
    for k in range(505, 510):
        jb.push(k, TS0 + 960 * k, k, 10.0)
    got = jb.pop_ready(10.0 + DEPTH)
    assert [r.sequence for r in got] == list(range(505, 510)) and got[0].new_stream
    assert jb.stats.lost == 0 and jb.stats.restarts == 0


def test_long_speech_with_random_jitter_and_loss() -> None:
    # Ten minutes of 20 ms packets, 2 % loss, 1 % duplicates, delays up to 50 ms, across
    # a sequence wrap: exact accounting, no late packets, and bounded latency.
    rng = random.Random(7)
    arrivals = []
    lost = set()
    for k in range(30_000):
        if rng.random() < 0.02:
            lost.add(k)
            continue
        for _ in range(2 if rng.random() < 0.01 else 1):
            arrivals.append((k * FRAME + rng.uniform(0, 0.05), seq_add(50_000, k), (TS0 + 960 * k) & 0xFFFFFFFF))
    jb = JitterBuffer(depth=DEPTH)
    arrivals.sort()
    released: list[Released] = []
    for arrival, seq, ts in arrivals:
        jb.push(seq, ts, arrival, arrival)
        released += jb.pop_ready(arrival)
    released += jb.flush()
    survivors = sorted(set(range(30_000)) - lost)
    assert [index_of(r.sequence, 50_000) for r in released] == survivors
    s = jb.stats
    assert s.late == 0 and s.restarts == 0 and s.overflow == 0
    assert s.duplicates == len(arrivals) - len(survivors)
    assert s.lost == sum(1 for k in lost if survivors[0] < k < survivors[-1])


@pytest.mark.parametrize("narrow", [False, True])
def test_flood_without_polling_keeps_internal_queues_bounded(narrow: bool) -> None:
    rng = random.Random(narrow)
    jb = JitterBuffer(depth=DEPTH, max_packets=16)
    for i in range(5000):
        seq = rng.randrange(300) if narrow else rng.randrange(65536)
        jb.push(seq, TS0 + 960 * seq if narrow else rng.randrange(2**32), None, i * 0.0001)
        assert len(jb) <= 16 and len(jb._fifo) <= jb._fifo_limit and len(jb._bounds) <= 17
    s = jb.stats
    assert s.overflow > 1000
    assert s.received == s.released + s.duplicates + s.late + s.overflow + s.held


def test_straggler_of_the_old_stream_fills_its_hole_after_a_restart() -> None:
    jb = JitterBuffer(depth=DEPTH)
    for k in (0, 1, 2, 4, 5):  # 3 delayed
        jb.push(100 + k, TS0 + 960 * k, k, 0.02 * k)
    jb.pop_ready(0.0 + DEPTH)
    assert jb.push(40000, TS0 + 10**8, "n0", 0.105) is PushResult.RESTART
    # The old stream's 3 arrives after the restart, still within depth: filled in.
    assert jb.push(103, TS0 + 960 * 3, 3, 0.11) is PushResult.ACCEPTED
    got = jb.flush()
    assert [(r.payload, r.lost_before, r.new_stream) for r in got] == [
        (3, 0, False),
        (4, 0, False),
        (5, 0, False),
        ("n0", 0, True),
    ]
    assert jb.stats.lost == 0 and jb.stats.late == 0 and jb.stats.restarts == 1


def test_restart_slightly_behind_with_a_timestamp_ahead_is_not_late() -> None:
    # A new stream whose sequence lands 50 behind the old one, inside the reorder window.
    # Its timestamp is unrelated (ahead), which no reordered packet can have.
    jb = JitterBuffer(depth=DEPTH)
    old = stream(100, s0=1000)
    new = [(2.5 + k * FRAME, seq_add(1049, k), (TS0 + 10**8 + 960 * k) & 0xFFFFFFFF) for k in range(20)]
    out = simulate(jb, old + new)
    assert len(out) == 120 and jb.stats.late == 0 and jb.stats.restarts == 1


def test_a_stream_emptied_by_overflow_is_skipped_cleanly() -> None:
    # Three streams held at once (two restarts, nobody polling), the middle one entirely
    # dropped on overflow: the third still comes out as one stream.
    jb = JitterBuffer(depth=DEPTH, max_packets=4)
    jb.push(100, TS0, "a", 0.0)
    jb.push(30000, TS0 + 10**8, "b0", 0.01)  # restart
    jb.push(30001, TS0 + 10**8 + 960, "b1", 0.02)
    jb.push(60000, TS0 + 2 * 10**8, "c0", 0.03)  # restart
    for k in range(1, 4):  # overflow drops a, b0, b1
        jb.push(60000 + k, TS0 + 2 * 10**8 + 960 * k, f"c{k}", 0.03 + 0.001 * k)
    got = jb.pop_ready(1.0)
    assert [(r.payload, r.new_stream, r.lost_before) for r in got] == [
        ("c0", True, 0),
        ("c1", False, 0),
        ("c2", False, 0),
        ("c3", False, 0),
    ]
    s = jb.stats
    assert s.restarts == 2 and s.overflow == 3 and s.received == s.released + s.overflow


def test_straggler_of_a_stream_that_overflow_just_finished_is_late_not_a_huge_gap() -> None:
    # Found by fuzzing (fuzz/targets.py jitter, replayed here as it was found): a straggler
    # of the previous stream came in while the buffer was full; evicting the new stream's
    # first packet finished the old stream, yet the straggler was stored into it with no
    # boundary left, so the new stream's next packet came out with lost_before=262128
    # (87 minutes for the decoder to conceal, and as many timeline positions to compute).
    jb = JitterBuffer(depth=DEPTH, max_packets=2, max_dropout=3, max_misorder=214)
    pushes = [
        (1034, 101128905),
        (1037, 101131785),
        (1042, 101136585),
        (1042, 101136585),
        (1047, 101141385),
        (1052, 101146185),
        (1048, 101142345),
        (1043, 101137545),
        (1043, 101137545),
        (1053, 101147145),
    ]
    results = [jb.push(seq, ts, i, 0.0) for i, (seq, ts) in enumerate(pushes)]
    assert results[2] is PushResult.RESTART and results[-1] is PushResult.LATE
    got = jb.flush()
    assert all(r.lost_before < 10 for r in got), got
    s = jb.stats
    assert s.received == s.released + s.duplicates + s.late + s.overflow


def test_the_defaults_are_the_documented_ones() -> None:
    jb = JitterBuffer()
    assert (jb.depth, jb.max_packets, jb.max_dropout, jb.max_misorder, jb.restart_probation) == (
        0.06,
        256,
        1000,
        100,
        50,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": -1e-9}, "depth must be >= 0 seconds, got -1e-09"),
        ({"depth": float("nan")}, "depth must be >= 0 seconds, got nan"),
        ({"max_packets": 0}, "max_packets must be >= 1, got 0"),
        ({"max_dropout": 0}, "max_dropout must be within 1..32767, got 0"),
        ({"max_dropout": 32768}, "max_dropout must be within 1..32767, got 32768"),
        ({"max_misorder": 0}, "max_misorder must be within 1..32767, got 0"),
        ({"max_misorder": 32768}, "max_misorder must be within 1..32767, got 32768"),
        ({"restart_probation": 0}, "restart_probation must be >= 1, got 0"),
    ],
)
def test_each_bad_argument_is_named_with_its_bounds(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        JitterBuffer(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_every_bound_itself_is_accepted() -> None:
    for kwargs in (
        {"depth": 0.0},
        {"max_packets": 1},
        {"max_dropout": 1},
        {"max_dropout": 32767},
        {"max_misorder": 1},
        {"max_misorder": 32767},
        {"restart_probation": 1},
    ):
        jb = JitterBuffer(**kwargs)  # type: ignore[arg-type]
        ((name, value),) = kwargs.items()
        assert getattr(jb, name) == value
    # depth 0: a stream's first packet goes at once, nothing waits
    jb = JitterBuffer(depth=0.0)
    jb.push(7, TS0, "a", 1.0)
    assert [r.payload for r in jb.pop_ready(1.0)] == ["a"]


def test_a_copy_is_told_from_a_late_packet_up_to_max_misorder_behind() -> None:
    jb = JitterBuffer(depth=DEPTH, max_misorder=5)
    for k in range(11):
        jb.push(10 + k, TS0 + 960 * k, k, k * FRAME)
        assert len(jb.pop_ready(k * FRAME + DEPTH)) == 1
    # 20 was released last: 20 - 5 = 15 is the oldest place the history remembers
    assert jb.push(20, TS0 + 960 * 10, "copy", 0.3) is PushResult.DUPLICATE
    assert jb.push(15, TS0 + 960 * 5, "copy", 0.3) is PushResult.DUPLICATE
    assert jb.push(14, TS0 + 960 * 4, "old", 0.3) is PushResult.LATE  # outside the window
    assert (jb.stats.duplicates, jb.stats.late) == (2, 1)


def test_a_straggler_past_the_old_streams_newest_moves_its_window() -> None:
    jb = JitterBuffer(depth=DEPTH, max_misorder=5)
    for seq in range(100, 104):
        jb.push(seq, seq * 960, seq, 0.0)
    assert jb.push(30000, 10**7, "new", 0.001) is PushResult.RESTART
    # one past the old stream's newest: still the old stream, and now its newest
    assert jb.push(104, 104 * 960, 104, 0.002) is PushResult.ACCEPTED
    # so 109 is within max_misorder of it (it would not be of 103)
    assert jb.push(109, 109 * 960, 109, 0.003) is PushResult.ACCEPTED
    out = jb.pop_ready(1.0)
    assert [r.sequence for r in out] == [100, 101, 102, 103, 104, 109, 30000]
    assert out[5].lost_before == 4 and out[6].new_stream


def test_an_old_stream_finished_by_overflow_still_tells_its_copies_from_its_late_packets() -> None:
    jb = JitterBuffer(depth=DEPTH, max_packets=4)
    for seq in (100, 101):
        jb.push(seq, seq * 960, seq, 0.0)
    assert [r.sequence for r in jb.pop_ready(DEPTH)] == [100, 101]
    jb.push(103, 103 * 960, 103, 0.07)  # 102 missing: 103 waits
    assert jb.push(30000, 10**7, "new", 0.071) is PushResult.RESTART
    jb.push(30001, 10**7 + 960, "new", 0.072)
    jb.push(30002, 10**7 + 1920, "new", 0.073)  # full: 103, 30000..30002
    assert jb.push(30003, 10**7 + 2880, "new", 0.074) is PushResult.OVERFLOW  # 103 goes
    assert jb.push(30004, 10**7 + 3840, "new", 0.075) is PushResult.OVERFLOW  # 30000 goes: old stream over
    # the old stream ended having released 100 and 101: a copy of 101 is a duplicate, 102 late
    assert jb.push(101, 101 * 960, "copy", 0.08) is PushResult.DUPLICATE
    assert jb.push(102, 102 * 960, "late", 0.08) is PushResult.LATE


def test_the_timestamp_decides_at_its_exact_bounds() -> None:
    # far ahead in sequence with the newest's very timestamp: a restarted sender, not an old packet
    jb = JitterBuffer(depth=DEPTH)
    jb.push(100, 96000, "a", 0.0)
    assert jb.push(100 + 2000, 96000, "b", 0.01) is PushResult.RESTART
    # a bandwidth probe carries the last audio timestamp: the audio packet before it, arriving
    # after it (one behind, same timestamp), is reordering, not a restart
    jb = JitterBuffer(depth=DEPTH)
    jb.push(101, 96000, "probe", 0.0)
    assert jb.push(100, 96000, "audio", 0.001) is PushResult.ACCEPTED
    assert [r.payload for r in jb.pop_ready(0.1)] == ["audio", "probe"]
    # far behind in sequence with the newest's timestamp: an old packet, not a restart
    jb = JitterBuffer(depth=DEPTH, restart_probation=5)
    jb.push(5000, 96000, "a", 0.0)
    assert jb.push(3000, 96000, "old", 0.01) is PushResult.LATE


def test_a_reordered_packet_keeps_its_timestamp_and_copies_after_a_gap_are_told_apart() -> None:
    jb = JitterBuffer(depth=DEPTH)
    for seq, at in ((10, 0.0), (12, 0.01), (11, 0.015)):  # 11 overtaken by 12
        jb.push(seq, seq * 960, seq, at)
    assert [(r.sequence, r.timestamp) for r in jb.pop_ready(DEPTH)] == [(10, 9600), (11, 10560), (12, 11520)]
    jb.push(14, 14 * 960, 14, 0.1)  # 13 lost
    assert [(r.sequence, r.lost_before) for r in jb.pop_ready(0.1 + DEPTH)] == [(14, 1)]
    assert jb.push(12, 12 * 960, "copy", 0.2) is PushResult.DUPLICATE  # released before the gap
    assert jb.push(13, 13 * 960, "late", 0.2) is PushResult.LATE  # never released: its place is gone
    assert jb.push(11, 11 * 960, "copy", 0.2) is PushResult.DUPLICATE


def test_packets_pushed_into_a_full_buffer_keep_their_fields() -> None:
    jb = JitterBuffer(depth=DEPTH, max_packets=2)
    for seq in (1, 2, 3):
        jb.push(seq, seq * 960, f"p{seq}", 0.001 * seq)  # the third pushes the first out
    out = jb.pop_ready(1.0)
    assert [(r.sequence, r.timestamp, r.payload, r.arrival) for r in out] == [
        (2, 1920, "p2", 0.002),
        (3, 2880, "p3", 0.003),
    ]
    assert out[0].new_stream and jb.stats.overflow == 1  # (nothing was released before: a start)


def test_a_straggler_into_a_full_buffer_is_kept_while_its_stream_lasts_and_late_once_it_ended() -> None:
    def buffer(max_packets: int, held: tuple[int, ...]) -> JitterBuffer:
        jb = JitterBuffer(depth=DEPTH, max_packets=max_packets)
        jb.push(100, 100 * 960, 100, 0.0)
        assert [r.sequence for r in jb.pop_ready(DEPTH)] == [100]
        assert jb.push(99, 99 * 960, "late", 0.07) is PushResult.LATE  # one late packet counted already
        for seq in held:  # 101 missing
            jb.push(seq, seq * 960, seq, 0.08)
        assert jb.push(30000, 10**7, "new", 0.09) is PushResult.RESTART
        return jb

    # full with 102, 103 of the old stream and the new one: pushing 102 out leaves 103, so 101 stays
    jb = buffer(3, (102, 103))
    assert jb.push(101, 101 * 960, 101, 0.1) is PushResult.OVERFLOW
    assert [r.sequence for r in jb.pop_ready(1.0)] == [101, 103, 30000]
    # the old stream's last held packet already pushed out (by 30001): making room for 101 pushes
    # out the new stream's first, which ends the old stream, so 101 has no place left
    jb = buffer(2, (102,))
    assert jb.push(30001, 10**7 + 960, "new", 0.095) is PushResult.OVERFLOW  # 102 goes
    assert jb.push(101, 101 * 960, 101, 0.1) is PushResult.LATE
    assert jb.stats.late == 2
    assert [r.sequence for r in jb.pop_ready(1.0)] == [30001]


def test_a_flood_nobody_polls_keeps_the_fifo_bounded_and_the_release_order_right() -> None:
    """Nobody polls while a flood fills the buffer: each push evicts the lowest packet and
    leaves a stale FIFO entry; past 2 * max_packets + 16 of them the FIFO is compacted to the
    packets still held, and the release afterwards goes by them."""
    jb = JitterBuffer(depth=DEPTH, max_packets=4)
    for k in range(25):  # the 25th push makes 25 FIFO entries for 4 held packets: compaction
        jb.push(k + 1, (k + 1) * 960, k + 1, 0.001 * k)
    assert len(jb._fifo) == 4
    assert jb.pop_ready(0.021 + DEPTH - 0.0005) == []  # the oldest held (22, at 0.021) not overdue yet
    assert [r.sequence for r in jb.pop_ready(0.021 + DEPTH)] == [22, 23, 24, 25]
    assert jb.stats.overflow == 21


def test_stale_entries_behind_a_held_packet_are_compacted_on_the_in_order_path_too() -> None:
    # Packet 40 waits for the gap before it while 1..39 arrive late and are released one by
    # one: each leaves a stale entry behind 40's in the arrival FIFO. The entry that takes
    # the FIFO past its bound can be an in-order packet (41), which must compact it as well.
    jb = JitterBuffer(max_packets=4, depth=1.0)
    jb.push(0, 0, "p0", 0.0)
    assert [r.payload for r in jb.pop_ready(1.0)] == ["p0"]
    jb.push(40, 40 * 960, "p40", 1.0)
    k = 1
    while len(jb._fifo) < jb._fifo_limit:
        assert k < 40, "the FIFO never reached its bound"
        assert jb.push(k, k * 960, f"p{k}", 1.0 + k / 1000) is PushResult.ACCEPTED
        assert [r.payload for r in jb.pop_ready(1.0 + k / 1000)] == [f"p{k}"]
        k += 1
    assert jb.push(41, 41 * 960, "p41", 1.05) is PushResult.ACCEPTED
    assert len(jb._fifo) <= len(jb) + 1  # only what is held (and at most the newest) remains
    assert jb.next_deadline() == 2.0  # 40's, the oldest still held
    # 1..k-1 are out; 40 waits for k..39 until its deadline, then goes with 41.
    released = jb.pop_ready(2.0)
    assert [(r.payload, r.lost_before) for r in released] == [("p40", 40 - k), ("p41", 0)]
