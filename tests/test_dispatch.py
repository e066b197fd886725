"""The sink dispatcher: a few threads call the sinks of every session, each session's calls in
order and never two at once, and a sink that blocks holds up nobody else for long.

The clients here are small queues of numbers; the sessions that use the dispatcher for real
are exercised by every end-to-end test (test_listen, test_recording...).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import pytest

from discord.ext.listening import dispatch
from discord.ext.listening.dispatch import STUCK_AFTER, SinkDispatcher
from helpers import wait_until

pytestmark = pytest.mark.timeout(30)


class Client:
    """Takes up to ``share`` numbers a run; ``gate`` (when given) must be open for each one."""

    def __init__(self, share: int = 4, gate: threading.Event | None = None) -> None:
        self.items: deque[int] = deque()
        self.got: list[int] = []
        self.share = share
        self.gate = gate
        self.running = 0
        self.overlapped = False
        self.threads: set[str] = set()

    def put(self, dispatcher: SinkDispatcher, *xs: int) -> None:
        self.items.extend(xs)  # queued before scheduled, as a session does
        dispatcher.schedule(self)

    def run_sink_calls(self) -> None:
        self.running += 1
        self.overlapped |= self.running > 1
        self.threads.add(threading.current_thread().name)
        for _ in range(self.share):
            if not self.items:
                break
            if self.gate is not None:
                self.gate.wait(10)
            self.got.append(self.items.popleft())
        self.running -= 1

    def has_sink_calls(self) -> bool:
        return bool(self.items)


def test_each_client_gets_everything_in_order_from_many_producers_never_two_calls_at_once() -> None:
    d = SinkDispatcher()
    clients = [Client(share=3) for _ in range(8)]

    def produce(k: int) -> None:
        for i in range(500):
            c = clients[(k + i) % len(clients)]
            c.put(d, k * 1000 + i)

    producers = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    wait_until(lambda: sum(len(c.got) for c in clients) == 2000)
    for c in clients:
        assert not c.overlapped
        for k in range(4):  # each producer's numbers in the order it put them
            mine = [x for x in c.got if x // 1000 == k]
            assert mine == sorted(mine)
    assert sorted(x for c in clients for x in c.got) == sorted(k * 1000 + i for k in range(4) for i in range(500))
    assert d.started == 1  # with nobody calling check(), the one thread does it all


def test_many_quiet_clients_share_one_thread() -> None:
    d = SinkDispatcher()
    clients = [Client() for _ in range(50)]
    for r in range(20):  # rounds: every client gets a frame, then a pause
        for c in clients:
            c.put(d, r)
        d.check(time.monotonic())
        wait_until(lambda r=r: all(len(c.got) == r + 1 for c in clients))
        time.sleep(0.005)
    assert all(c.got == list(range(20)) for c in clients)
    assert d.started == 1 and d.threads == 1


def test_a_blocked_sink_holds_up_the_others_only_until_the_next_check() -> None:
    d = SinkDispatcher()
    gate = threading.Event()
    slow, fast = Client(gate=gate), Client()
    slow.put(d, 1, 2)
    wait_until(lambda: slow.running == 1)  # the only thread is stuck in the slow sink
    fast.put(d, 10)
    d.check(time.monotonic())  # not waited long enough yet
    assert d.started == 1
    time.sleep(STUCK_AFTER * 2)
    d.check(time.monotonic())  # (the engine calls this every round)
    wait_until(lambda: fast.got == [10])
    assert d.started == 2 and slow.got == []
    fast.put(d, 11)
    wait_until(lambda: fast.got == [10, 11])
    gate.set()
    wait_until(lambda: slow.got == [1, 2])
    assert slow.threads.isdisjoint(fast.threads)


def test_a_last_call_scheduled_now_does_not_wait_for_a_blocked_sink() -> None:
    d = SinkDispatcher()
    gate = threading.Event()
    slow, ending = Client(gate=gate), Client()
    slow.put(d, 1)
    wait_until(lambda: slow.running == 1)
    ending.items.append(99)
    d.schedule(ending, now=True)  # no check() needed: a thread starts for it
    wait_until(lambda: ending.got == [99])
    gate.set()
    wait_until(lambda: slow.got == [1])


def test_threads_end_when_idle_and_start_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "IDLE_EXIT", 0.1)
    d = SinkDispatcher()
    c = Client()
    c.put(d, 1)
    wait_until(lambda: c.got == [1])
    wait_until(lambda: d.threads == 0)  # a silent bot has no dispatcher thread
    c.put(d, 2)
    wait_until(lambda: c.got == [1, 2])
    assert d.started == 2


def test_a_call_queued_while_the_client_finishes_its_run_is_not_lost() -> None:
    # The race the dispatcher's lock closes: the producer queues just as the thread finds the
    # client empty. Hammer it: every number must arrive.
    d = SinkDispatcher()
    c = Client(share=1)
    for i in range(3000):
        c.put(d, i)
        if i % 7 == 0:
            time.sleep(0)  # let the thread drain and go idle now and then
    wait_until(lambda: len(c.got) == 3000)
    assert c.got == list(range(3000)) and not c.overlapped
