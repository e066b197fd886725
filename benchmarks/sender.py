"""The benchmark's packet sender: a process of its own that puts pre-built packets on the wire.

Started by ``scenario.py`` with the emulators' UDP sockets inherited (``pass_fds``): the
bot's sockets are ``connect()``-ed to the voice server's address, so packets must leave from
exactly those sockets. Everything is built before the clock starts (transport- and, where
on, DAVE-encrypted by the emulator's keys); this process only paces and sends, so its CPU
is not the receiver's.

Protocol: ``python sender.py JOB`` where JOB is a pickle with ``fds`` (one per guild),
``addrs`` (the bot's UDP address per guild), ``dest`` (guild index per packet), ``due``
(send time offsets in seconds), ``packets`` (bytes). It prints ``ready``, reads the start
time (``time.monotonic()`` value, shared by every process on Linux) from stdin, sends, then
writes the actual send time of every packet to ``JOB + ".sent"`` and a JSON summary line.
"""

from __future__ import annotations

import array
import json
import pickle
import socket
import sys
import time


def main(job_path: str) -> None:
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    socks = [socket.socket(fileno=fd) for fd in job["fds"]]
    # (The sockets stay non-blocking: the flag is shared with the emulator's event loop.
    # Loopback UDP never says EAGAIN for long; a packet that cannot go is counted.)
    sends = [s.sendto for s in socks]
    addrs = [tuple(a) for a in job["addrs"]]
    dest: list[int] = list(job["dest"])
    due: list[float] = list(job["due"])
    packets: list[bytes] = job["packets"]
    n = len(packets)
    sent_at = array.array("d", bytes(8 * n))
    print("ready", flush=True)
    t0 = float(sys.stdin.readline())
    due = [t0 + d for d in due]
    deadline = (due[-1] if due else t0) + 30.0  # bounded even if the machine stalls badly
    errors = 0
    cpu0 = time.process_time()
    monotonic, sleep = time.monotonic, time.sleep
    i = 0
    while i < n:
        now = monotonic()
        if now > deadline:
            break
        wait = due[i] - now
        if wait > 0:
            sleep(wait if wait < 0.002 else 0.002)
            continue
        k = 0
        while i < n and due[i] <= now:
            g = dest[i]
            try:
                sends[g](packets[i], addrs[g])
            except OSError:
                errors += 1
            sent_at[i] = now
            i += 1
            k += 1
            if k == 16:
                now = monotonic()
                k = 0
    cpu = time.process_time() - cpu0
    with open(job_path + ".sent", "wb") as f:
        sent_at.tofile(f)
    lag = sorted(sent_at[j] - due[j] for j in range(i))
    summary = {
        "sent": i,
        "of": n,
        "errors": errors,
        "cpu_s": cpu,
        "lag_p50_ms": 1000 * lag[len(lag) // 2] if lag else 0.0,
        "lag_p99_ms": 1000 * lag[int(len(lag) * 0.99)] if lag else 0.0,
        "lag_max_ms": 1000 * lag[-1] if lag else 0.0,
    }
    for s in socks:
        s.detach()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
