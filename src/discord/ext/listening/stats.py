"""Counters for one listening session: what arrived, what became audio, and why the rest did not.

The contract (docs/architecture.md, "Rules the code keeps") is that every authenticated
audio packet ends up either in the output or in a counter naming the reason; these are those
counters.
"""

from __future__ import annotations

import enum
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ("DropReason", "ListenStats", "UserStats")


class DropReason(enum.Enum):
    """Why a packet or frame did not reach a sink."""

    #: Not a parseable RTP/RTCP packet (garbage, truncated, lying length fields).
    malformed = "malformed"
    #: Transport authentication failed (forged, corrupt, or an old key).
    auth_failed = "auth_failed"
    #: A payload type other than Opus, or an SSRC that belongs to video.
    not_audio = "not_audio"
    #: The SSRC was never mapped to a user before the hold time ran out.
    unknown_ssrc = "unknown_ssrc"
    #: DAVE decryption failed for good (no key arrived in time, or a corrupt frame).
    undecryptable = "undecryptable"
    #: An unencrypted frame while DAVE passthrough was off (not allowed through).
    unencrypted = "unencrypted"
    #: The same sequence number arrived twice.
    duplicate = "duplicate"
    #: Arrived after its place in the stream was already played out.
    late = "late"
    #: A bounded buffer was full (jitter buffer, DAVE hold queue).
    overflow = "overflow"
    #: Arrived while listening was paused.
    paused = "paused"
    #: Lost in a decode worker that died.
    worker_lost = "worker_lost"
    #: The Opus payload could not be decoded.
    decode_error = "decode_error"
    #: The sink could not keep up and its bounded queue was full.
    sink_overflow = "sink_overflow"


@dataclass(slots=True)
class UserStats:
    """Counters for one user (or for unknown SSRCs under user id ``None``).

    Attributes
    ----------
    received: :class:`int`
        RTP packets that authenticated with the transport key.
    decrypted: :class:`int`
        Packets whose Opus payload was recovered (DAVE-decrypted, or clear where allowed).
    frames: :class:`int`
        Frames handed to the sink, all kinds.
    decoded: :class:`int`
        Frames decoded from their own packet.
    concealed: :class:`int`
        Frames recovered by FEC or synthesized by PLC or filled with silence after a loss.
    lost: :class:`int`
        Sequence numbers that never arrived (each is a concealed frame or a counted gap).
    padding: :class:`int`
        Padding-only packets (a client probing bandwidth): they use up sequence numbers but
        carry no media, so they are neither frames nor losses nor time.
    dropped: :class:`collections.Counter`
        Drops by :class:`DropReason`.
    """

    received: int = 0
    decrypted: int = 0
    frames: int = 0
    decoded: int = 0
    concealed: int = 0
    lost: int = 0
    padding: int = 0
    dropped: Counter[DropReason] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        """A plain dict (drop reasons by name) for logging or JSON."""
        return {
            "received": self.received,
            "decrypted": self.decrypted,
            "frames": self.frames,
            "decoded": self.decoded,
            "concealed": self.concealed,
            "lost": self.lost,
            "padding": self.padding,
            "dropped": {r.value: n for r, n in self.dropped.items() if n},
        }


_FIELDS = frozenset(UserStats.__slots__) - {"dropped"}


class ListenStats:
    """Per-user and total counters of a listening session (safe to read from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[int | None, UserStats] = {}
        #: RTCP packets that authenticated, and those of them the sink never got because its
        #: queue was full.
        self.rtcp_packets = 0
        self.rtcp_dropped = 0
        #: Datagrams that were not RTP/RTCP at all or failed before an SSRC was known.
        self.unattributed: Counter[DropReason] = Counter()
        #: 8-byte datagrams from the voice server: echoes of our UDP keepalives.
        self.keepalive_echoes = 0
        #: SSRCs attributed to a member by DAVE trial decryption, because no SPEAKING (op 5)
        #: named their owner in time.
        self.ssrcs_inferred = 0
        #: DAVE session recoveries asked for because a sender's frames kept failing.
        self.dave_recoveries = 0
        #: Sink callbacks that raised (each logged, the first of a kind with its traceback).
        self.sink_errors = 0
        #: Datagrams the kernel dropped because this connection's receive buffer was full
        #: (Linux: the socket's own count, read from the datagrams that follow a drop; 0
        #: elsewhere). They never reached the receiver, so no other counter has them.
        self.socket_drops = 0

    def _user(self, user_id: int | None) -> UserStats:
        s = self._users.get(user_id)
        if s is None:
            s = self._users[user_id] = UserStats()
        return s

    def add(self, user_id: int | None, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (a :class:`UserStats` field) of a user."""
        if name not in _FIELDS:
            raise ValueError(f"unknown counter {name!r}; expected one of {sorted(_FIELDS)}")
        with self._lock:
            s = self._user(user_id)
            setattr(s, name, getattr(s, name) + n)

    def add_released(self, counts: Mapping[int | None, Sequence[int]]) -> None:
        """Per user ``(n, lost)``: ``n`` packets received and decrypted, ``lost`` frames lost.

        What the receive path counts for one whole release, under one lock.
        """
        with self._lock:
            for user_id, (n, lost) in counts.items():
                s = self._user(user_id)
                s.received += n
                s.decrypted += n
                s.lost += lost

    def drop(self, user_id: int | None, reason: DropReason, n: int = 1) -> None:
        """Count ``n`` packets/frames of a user dropped for ``reason``."""
        with self._lock:
            self._user(user_id).dropped[reason] += n

    def drop_unattributed(self, reason: DropReason, n: int = 1) -> None:
        """Count a datagram dropped before it could be tied to any SSRC."""
        with self._lock:
            self.unattributed[reason] += n

    def move(self, old: int | None, new: int) -> None:
        """Fold the counters kept under ``old`` (e.g. an unmapped SSRC) into user ``new``."""
        with self._lock:
            src = self._users.pop(old, None)
            if src is None:
                return
            dst = self._user(new)
            for name in _FIELDS:
                setattr(dst, name, getattr(dst, name) + getattr(src, name))
            dst.dropped.update(src.dropped)

    def user(self, user_id: int | None) -> UserStats:
        """A snapshot of one user's counters."""
        with self._lock:
            s = self._users.get(user_id) or UserStats()
            return UserStats(
                s.received, s.decrypted, s.frames, s.decoded, s.concealed, s.lost, s.padding, Counter(s.dropped)
            )

    @property
    def users(self) -> dict[int | None, UserStats]:
        """A snapshot of every user's counters."""
        with self._lock:
            ids = list(self._users)
        return {u: self.user(u) for u in ids}

    @property
    def total(self) -> UserStats:
        """The sum over all users (unattributed drops included in ``dropped``)."""
        out = UserStats()
        for s in self.users.values():
            for name in _FIELDS:
                setattr(out, name, getattr(out, name) + getattr(s, name))
            out.dropped.update(s.dropped)
        with self._lock:
            out.dropped.update(self.unattributed)
        return out

    def as_dict(self) -> dict[str, object]:
        """Totals and per-user counters as plain data."""
        return {
            "total": self.total.as_dict(),
            "rtcp_packets": self.rtcp_packets,
            "rtcp_dropped": self.rtcp_dropped,
            "keepalive_echoes": self.keepalive_echoes,
            "ssrcs_inferred": self.ssrcs_inferred,
            "dave_recoveries": self.dave_recoveries,
            "sink_errors": self.sink_errors,
            "socket_drops": self.socket_drops,
            "users": {str(u): s.as_dict() for u, s in self.users.items()},
        }

    def __repr__(self) -> str:
        t = self.total
        return f"<ListenStats received={t.received} frames={t.frames} concealed={t.concealed} dropped={sum(t.dropped.values())}>"
