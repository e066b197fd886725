"""The receive engine: one thread runs every session's rounds, when they are due and not before.

The clients here are small recorders of when the engine ran them; the sessions that use the
engine for real are exercised by every end-to-end test (test_listen, test_recording...).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from discord.ext.listening import engine as engine_module
from discord.ext.listening.engine import ROUND, ReceiveEngine
from helpers import wait_until


class Client:
    """Runs are recorded; ``ask`` says when to run next, given the round's ``now``."""

    def __init__(self, ask: Callable[[float], float | None] = lambda now: None) -> None:
        self.ask = ask
        self.runs: list[float] = []
        self.asked: list[float | None] = []
        self.threads: set[str] = set()
        self.failed: list[Exception] = []
        self.finished = 0

    def run_round(self, now: float) -> float | None:
        self.runs.append(now)
        self.threads.add(threading.current_thread().name)
        due = self.ask(now)
        self.asked.append(due)
        return due

    def round_failed(self, error: Exception) -> None:
        self.failed.append(error)

    def finish_on_engine(self) -> None:
        self.threads.add(threading.current_thread().name)
        self.finished += 1


def test_a_client_runs_once_when_added_and_then_only_when_woken() -> None:
    engine = ReceiveEngine()
    client = Client()
    engine.add(client)
    wait_until(lambda: len(client.runs) == 1)
    assert client.threads == {"listening-engine"}
    time.sleep(0.3)
    assert len(client.runs) == 1  # asked for nothing: nobody wakes it
    engine.wake(client)
    wait_until(lambda: len(client.runs) == 2)
    engine.remove(client)
    wait_until(lambda: not engine.running)


def test_a_client_never_runs_before_the_time_it_asked_for_and_runs_on_the_grid() -> None:
    engine = ReceiveEngine()
    asks = iter([0.013, 0.027, 0.0021, 0.05, 0.0099, 0.031])
    client = Client(lambda now: now + next(asks, 0.0) if len(client.runs) <= 6 else None)
    engine.add(client)
    wait_until(lambda: len(client.runs) == 7)
    for due, ran in zip(client.asked, client.runs[1:]):
        assert due is not None
        assert ran >= due  # never early
        assert ran >= (int(due / ROUND - 1e-9) + 1) * ROUND - 1e-9  # rounded up to the grid
    engine.remove(client)


def test_clients_due_within_one_round_share_one_wake_up() -> None:
    engine = ReceiveEngine()
    base: list[float] = []
    clients = [Client() for _ in range(20)]
    for i, c in enumerate(clients):
        # once started, each asks for a different time inside the same 10 ms cell
        c.ask = lambda now, i=i: base[0] + (i + 1) * ROUND / 40 if base else None
        engine.add(c)
    wait_until(lambda: all(c.runs for c in clients))
    base.append((int(time.monotonic() / ROUND) + 5) * ROUND)
    before = engine.rounds
    for c in clients:
        engine.wake(c)
    wait_until(lambda: all(len(c.runs) >= 3 for c in clients))
    # one round ran the woken clients (or two, should the wakes straddle it), one ran them all when due
    assert engine.rounds - before <= 3
    dues = {c.runs[2] for c in clients}
    assert len(dues) == 1
    for c in clients:
        engine.remove(c)


def test_a_client_that_asks_for_the_next_round_runs_once_per_round() -> None:
    engine = ReceiveEngine()
    client = Client(lambda now: now)
    engine.add(client)
    wait_until(lambda: len(client.runs) >= 20)
    engine.remove(client)
    wait_until(lambda: not engine.running)
    gaps = [b - a for a, b in zip(client.runs, client.runs[1:])]
    assert min(gaps[1:]) > ROUND / 2  # the next round, not a busy loop


def test_a_failing_client_is_told_and_the_others_run_on() -> None:
    engine = ReceiveEngine()

    def boom(now: float) -> float | None:
        raise RuntimeError("bug")

    bad, good = Client(boom), Client(lambda now: now + 0.02)
    engine.add(bad)
    engine.add(good)
    wait_until(lambda: len(good.runs) >= 5 and bad.failed)
    assert [str(e) for e in bad.failed] == ["bug"]
    engine.remove(bad)
    engine.remove(good)
    wait_until(lambda: bad.finished == 1 and good.finished == 1)


def test_an_end_of_round_callback_runs_once_after_every_client_of_the_round(caplog: pytest.LogCaptureFixture) -> None:
    engine = ReceiveEngine()
    order: list[str] = []
    ends: list[tuple[str, int]] = []

    def send() -> None:  # what every session of a round shares (the pool's send_deferred)
        ends.append((threading.current_thread().name, len(order)))

    def broken() -> None:
        raise RuntimeError("hook bug")

    def asks(name: str) -> Callable[[float], float | None]:
        def ask(now: float) -> float | None:
            order.append(name)
            engine.after_round(send)
            engine.after_round(broken)
            return now if len(order) < 12 else None

        return ask

    clients = [Client(asks(n)) for n in "abc"]
    for c in clients:
        engine.add(c)
    wait_until(lambda: len(order) >= 12 and len(ends) >= 4)
    for c in clients:
        engine.remove(c)
    wait_until(lambda: not engine.running)
    assert {name for name, _ in ends} == {"listening-engine"}
    # once a round, after the round's last client, however many clients asked for it
    assert len(ends) == engine.rounds
    assert [n for _, n in ends] == sorted({n for _, n in ends})
    assert ends[-1][1] == len(order)
    # a failing callback is logged; it stops neither the others nor the engine
    assert sum("hook bug" in r.getMessage() or "broken" in r.getMessage() for r in caplog.records) >= len(ends)


def test_removing_finishes_once_on_the_engine_and_the_thread_ends_with_the_last_client() -> None:
    engine = ReceiveEngine()
    a, b = Client(lambda now: now), Client()
    engine.add(a)
    engine.add(b)
    wait_until(lambda: a.runs and b.runs)
    engine.remove(a)
    engine.remove(a)  # idempotent
    wait_until(lambda: a.finished == 1)
    assert engine.running  # b is still served
    runs = len(a.runs)
    time.sleep(0.05)
    assert len(a.runs) == runs  # removed: no more rounds
    engine.wake(a)  # a wake of a removed client is ignored
    engine.remove(b)
    wait_until(lambda: not engine.running)
    assert a.finished == b.finished == 1
    assert a.threads == b.threads == {"listening-engine"}
    # and a new client starts it again
    c = Client()
    engine.add(c)
    wait_until(lambda: len(c.runs) == 1)
    assert engine.running
    engine.remove(c)
    wait_until(lambda: not engine.running)


def test_every_client_runs_at_least_every_max_sleep_even_unasked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_SLEEP", 0.2)
    engine = ReceiveEngine()
    client = Client()
    engine.add(client)
    wait_until(lambda: len(client.runs) >= 3, timeout=3.0)
    engine.remove(client)
    assert min(b - a for a, b in zip(client.runs, client.runs[1:])) >= 0.2 - 1e-3


@pytest.mark.parametrize("bad", [0, -0.01, float("nan")])
def test_the_round_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="round_interval must be positive"):
        ReceiveEngine(bad)
