"""The transport key a voice connection decrypts with, across key changes, sans-I/O.

Discord hands out a new transport key with every SESSION_DESCRIPTION (a resume, a move,
a re-key). The UDP and websocket paths race around such a change: packets sealed with the
new key can arrive before the key does, and packets sealed with the old key after it. So
the previous key stays usable for :data:`KEY_GRACE` seconds after a change, and packets that
no key opens are parked (bounded in count and age) and offered once more when the key
changes. The owner tells the ring about keys with :meth:`TransportKeyRing.set` (any thread)
and decrypts on one thread.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Final

from .transport import DecryptionFailed, TransportCipher, transport_cipher

__all__ = ("KEY_GRACE", "MAX_PARKED", "TransportKeyRing")

_log = logging.getLogger(__name__)

#: Seconds around a transport key change during which either key is accepted.
KEY_GRACE: Final = 1.0
#: Packets that failed authentication kept for a retry when the key changes.
MAX_PARKED: Final = 64


class TransportKeyRing:
    """The current transport cipher, the previous one within its grace period, parked packets.

    Attributes
    ----------
    cipher: Optional[:class:`~discord.ext.listening.transport.TransportCipher`]
        The current key's cipher (``None`` before the first key, or for a mode we cannot do).
    changed: :class:`bool`
        Set when a new key arrived, until :meth:`take_parked` hands back the parked packets.
    """

    __slots__ = ("_key", "_parked", "_prev", "_prev_until", "changed", "cipher")

    def __init__(self) -> None:
        self.cipher: TransportCipher | None = None
        self._key: tuple[str, bytes] | None = None
        self._prev: TransportCipher | None = None
        self._prev_until = 0.0
        self._parked: deque[tuple[bytes, float]] = deque()
        self.changed = False

    def set(self, mode: str | None, key: bytes | bytearray | list[int] | None) -> bool:
        """The connection's mode and key now; returns whether that is a change.

        The same key announced again (discord.py stores every SESSION_DESCRIPTION afresh) is
        no change. ``None`` forgets the key (nothing decrypts until the next one).
        """
        new = (mode, bytes(key)) if mode and key else None
        if new == self._key:
            return False
        cipher = None
        if new is not None:
            try:
                cipher = transport_cipher(new[0], new[1])
            except ValueError:
                _log.error("voice connection uses unsupported mode %r; cannot decrypt", mode)
        self._key = new
        # Previous first: a reader on another thread sees either cipher, never none.
        self._prev = self.cipher
        self.cipher = cipher
        self.changed = True
        return True

    def open_previous(self, packet: bytes, aad_length: int, now: float) -> bytes | None:
        """The current key failed on an RTP packet: the previous one, within its grace period."""
        prev = self._prev
        if prev is not None and now < self._prev_until:
            try:
                return prev.decrypt(packet, aad_length)
            except DecryptionFailed:
                pass
        return None

    def park(self, packet: bytes, now: float) -> int:
        """Keep a packet no key opened, for the next key; returns how many older ones expired."""
        parked = self._parked
        expired = 0
        while parked and (len(parked) >= MAX_PARKED or now - parked[0][1] > KEY_GRACE):
            parked.popleft()
            expired += 1
        parked.append((packet, now))
        return expired

    def take_parked(self, now: float) -> list[tuple[bytes, float]]:
        """After a change: start the previous key's grace period, hand back the parked packets."""
        self.changed = False
        self._prev_until = now + KEY_GRACE
        parked, self._parked = list(self._parked), deque()
        return parked

    @property
    def parked(self) -> int:
        """Packets parked now (at most :data:`MAX_PARKED`)."""
        return len(self._parked)

    def drop_parked(self) -> int:
        """Forget the parked packets (listening ends); returns how many there were."""
        n = len(self._parked)
        self._parked.clear()
        return n
