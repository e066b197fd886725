"""UDP keepalive: Discord stops sending media to an address that has sent nothing for a while.

A bot that only listens sends nothing on UDP (discord.py sends only while it plays), and
Discord's voice servers stop forwarding media to a client whose address stayed silent: the
recording goes quiet after minutes, with no error anywhere. So while a listening-capable
voice client is connected, an 8-byte datagram (a little-endian counter, as other clients
send) goes to the voice server every :data:`KEEPALIVE_INTERVAL` seconds. Nothing waits for
an echo: some servers answer, some never do. The timer lives on the event loop (one timer
handle per connection, no thread) and reads the connection's socket at every tick, so it
follows reconnects and moves by itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Final

__all__ = ("KEEPALIVE_INTERVAL", "UDPKeepalive", "keepalive_packet")

_log = logging.getLogger(__name__)

#: Seconds between keepalives (what other Discord clients use).
KEEPALIVE_INTERVAL: Final = 5.0
_PACKET = struct.Struct("<I4x")


def keepalive_packet(counter: int) -> bytes:
    """The 8-byte keepalive datagram number ``counter`` (wraps at 2**32)."""
    return _PACKET.pack(counter & 0xFFFFFFFF)


class UDPKeepalive:
    """Sends a keepalive datagram on a voice connection's socket at a fixed interval.

    Parameters
    ----------
    loop: :class:`asyncio.AbstractEventLoop`
        The loop the timer runs on (the voice client's).
    get_socket: Callable[[], Optional[:class:`socket.socket`]]
        Returns the socket to send on now, or ``None`` while the connection has no usable
        one (connecting, reconnecting): that tick is skipped.
    interval: :class:`float`
        Seconds between two keepalives.

    Attributes
    ----------
    sent: :class:`int`
        Keepalives sent so far.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        get_socket: Callable[[], socket.socket | None],
        *,
        interval: float = KEEPALIVE_INTERVAL,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive seconds, got {interval!r}")
        self._loop = loop
        self._get_socket = get_socket
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self.sent = 0

    @property
    def running(self) -> bool:
        """Whether the timer is armed."""
        return self._handle is not None

    def start(self) -> None:
        """Send one keepalive now and then every ``interval`` seconds (idempotent; loop thread)."""
        if self._handle is None:
            self._tick()

    def stop(self) -> None:
        """Stop sending (idempotent; loop thread)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = self._loop.call_later(self.interval, self._tick)
        sock = self._get_socket()
        if sock is None:
            return
        try:
            sock.send(keepalive_packet(self.sent))
        except OSError as exc:  # a socket being replaced or not connected yet: next tick
            _log.debug("UDP keepalive not sent: %s", exc)
            return
        self.sent += 1
