"""Reading a voice socket in batches: every queued datagram at once, each with its kernel arrival time.

The receive engine reads a socket with audio on it once per round (``engine.ROUND``), not
once per datagram: a thread wake-up costs more CPU than all the Python work for a packet.
Batching must not move audio on the timeline, so each datagram carries the kernel's receive
timestamp (Linux ``SO_TIMESTAMPNS``). The socket's own drop count (``SO_RXQ_OVFL``) comes
with it: datagrams the kernel dropped because the receive buffer was full are counted in
:attr:`ListenStats.socket_drops`, not lost silently.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

from .stats import ListenStats

__all__ = ("MAX_BATCH", "RECEIVE_BUFFER", "DatagramReader", "wall_clock_offset")

#: Datagrams read per batch at most (bounds the time between two releases under a flood).
MAX_BATCH = 2000
#: Kernel receive buffer asked for on discord.py's socket: 10 ms of batching at hundreds of
#: speakers would overflow Linux's default (~200 datagrams). The system may cap it.
RECEIVE_BUFFER = 1 << 21
# Kernel receive timestamps (Linux SO_TIMESTAMPNS; Python has no name for it).
_SO_TIMESTAMPNS = 35 if sys.platform.startswith("linux") else None
# The socket's drop count (Linux SO_RXQ_OVFL; no Python name either): once the kernel has
# dropped a datagram because the receive buffer was full, each datagram queued after that
# carries the socket's cumulative drop count (uint32) next to its timestamp.
_SO_RXQ_OVFL = 40 if sys.platform.startswith("linux") else None
# getsockopt(SO_MEMINFO): the socket's memory counters (uint32 each); SK_MEMINFO_DROPS is the
# same count, read once when we start counting (drops before the session are not its own).
_SO_MEMINFO = 55
_MEMINFO_DROPS = 8
_U32 = struct.Struct("@I")
# ioctl for the kernel timestamp of the datagram discord.py's reader has just read.
_SIOCGSTAMPNS = 0x8907
_TIMESPEC = struct.Struct("@ll")


def wall_clock_offset() -> float:
    """``time.time() - time.monotonic()`` at one instant, to a few microseconds.

    The two clocks are read one after the other; a thread preempted between the reads (on a
    VM, for up to a millisecond) would shift every kernel timestamp converted with the result
    by that much, so the tightest of three tries counts.
    """
    best_gap, offset = float("inf"), 0.0
    for _ in range(3):
        m1 = time.monotonic()
        wall = time.time()
        m2 = time.monotonic()
        if m2 - m1 < best_gap:
            best_gap, offset = m2 - m1, wall - (m1 + m2) / 2
        if best_gap < 20e-6:
            break
    return offset


class DatagramReader:
    """One session's reads of its voice socket (which discord.py may replace on a reconnect).

    Parameters
    ----------
    stats: :class:`ListenStats`
        Where the socket's kernel drops are counted (``socket_drops``).
    """

    __slots__ = ("_drops_offset", "_sock", "_stamped", "_stats")

    def __init__(self, stats: ListenStats) -> None:
        self._stats = stats
        self._sock: socket.socket | None = None
        self._stamped = False
        self._drops_offset = 0  # socket_drops = the kernel's count on the socket + this

    @property
    def stamped(self) -> bool:
        """Whether the current socket gives kernel arrival times (then reads may be late)."""
        return self._stamped

    def attach(self, sock: socket.socket, first_arrival: float) -> float:
        """Use ``sock`` from now on; returns the arrival time of the datagram just read from it.

        A socket seen before is left as it is. A new one gets a larger receive buffer, kernel
        timestamps and drop counting; the datagram discord.py's reader just read from it is
        then dated by the socket's last-receive stamp (only this once: with ``SO_TIMESTAMPNS``
        on, Linux stops updating that stamp, and it would date every later burst's first
        datagram back to this one). Later bursts' first datagrams are timed when discord.py's
        reader hands them over (~0.3-4 ms late under load).
        """
        if sock is self._sock:
            return first_arrival
        self._sock = sock
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass
        self._stamped = False
        if _SO_TIMESTAMPNS is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._stamped = sock.getsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS) == 1
            except OSError:
                pass
        # Count from here on; a replacement socket's drops add to the earlier sockets'.
        self._drops_offset = self._stats.socket_drops
        if _SO_RXQ_OVFL is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
                info = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 4 * (_MEMINFO_DROPS + 1))
                if len(info) >= 4 * (_MEMINFO_DROPS + 1):
                    self._drops_offset -= _U32.unpack_from(info, 4 * _MEMINFO_DROPS)[0]
            except OSError:
                pass
        if not self._stamped:
            return first_arrival
        try:
            import fcntl

            sec, nsec = _TIMESPEC.unpack(fcntl.ioctl(sock.fileno(), _SIOCGSTAMPNS, bytes(_TIMESPEC.size)))
            t: float = sec + nsec * 1e-9 - wall_clock_offset()
            if first_arrival - 1.0 < t < first_arrival:
                return t
        except (OSError, ImportError, ValueError):
            pass
        return first_arrival

    def read(self) -> tuple[list[bytes], list[float], bool | None]:
        """Every datagram queued on the socket now (at most :data:`MAX_BATCH`).

        The clocks are read here, not taken from the caller: the engine reads many sessions'
        sockets in one round, and a time from the round's start would date the later ones'
        datagrams early.

        Returns
        -------
        Tuple[List[:class:`bytes`], List[:class:`float`], Optional[:class:`bool`]]
            The datagrams, their arrival times on the monotonic clock (``now`` where the
            kernel gave none), and whether the batch stopped at :data:`MAX_BATCH` (more
            are queued); ``None`` when the socket failed (closed under us).
        """
        sock = self._sock
        batch: list[bytes] = []
        arrivals: list[float] = []
        if sock is None:
            return batch, arrivals, None
        full: bool | None = False
        now = time.monotonic()
        drops: bytes | None = None  # the newest drop count read (raw), parsed once per batch
        try:
            if self._stamped:
                sol, kind, ovfl = socket.SOL_SOCKET, _SO_TIMESTAMPNS, _SO_RXQ_OVFL
                unpack, size, recvmsg = _TIMESPEC.unpack_from, _TIMESPEC.size, sock.recvmsg
                offset = wall_clock_offset()  # kernel stamps are wall-clock time
                while True:
                    d, anc, _, _ = recvmsg(2048, 64)
                    t = now
                    # (the timestamp, then the drop count once the socket has dropped)
                    for level, k, cdata in anc:
                        if level == sol and k == kind and len(cdata) >= size:
                            sec, nsec = unpack(cdata)
                            t = sec + nsec * 1e-9 - offset
                            if t > now:
                                t = now
                        elif k == ovfl and level == sol:
                            drops = cdata
                    batch.append(d)
                    arrivals.append(t)
                    if len(batch) >= MAX_BATCH:
                        full = True
                        break
            else:
                recv = sock.recv
                while True:
                    batch.append(recv(2048))
                    arrivals.append(now)
                    if len(batch) >= MAX_BATCH:
                        full = True
                        break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            full = None
        if drops is not None:  # counts only grow: the batch's newest is its largest
            n = _U32.unpack_from(drops)[0] + self._drops_offset
            if n > self._stats.socket_drops:
                self._stats.socket_drops = n
        return batch, arrivals, full
