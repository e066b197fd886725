"""Every touch of discord.py's internals, in one place.

discord.py has no public API for receiving audio: a receiver must read the voice connection's
socket, keys and DAVE session, register a listener on its socket reader thread, and fix two
things that reader does not expect (a socket replaced or closed under it). This module is the
only one in the package that names a private attribute of discord.py; everything else asks
it. It was written against discord.py 2.7.x (:data:`SUPPORTED`), and says so at import when a
different version is installed, because private names are exactly what changes between
releases without notice.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, Final

from discord.state import ConnectionState as ClientConnectionState
from discord.voice_state import VoiceConnectionState

import discord

__all__ = (
    "SUPPORTED",
    "ConnectionState",
    "SocketReaderView",
    "add_guild",
    "add_socket_listener",
    "cache_member",
    "check_version",
    "client_state",
    "connection",
    "dave_state",
    "next_send_nonce",
    "parse_voice_server_update",
    "parse_voice_state_update",
    "recover_dave",
    "remove_socket_listener",
    "route_voice_websocket",
    "set_up_offline",
    "socket_reader",
    "transport_key",
    "voice_socket",
)

_log = logging.getLogger(__name__)

#: The discord.py releases this module was written and tested against: ``>= 2.7.1, < 2.8``.
SUPPORTED: Final = ((2, 7, 1), (2, 8, 0))

SocketListener = Callable[[bytes], None]


def _version_tuple(text: str) -> tuple[int, int, int]:
    numbers = [int(n) for n in re.findall(r"\d+", text)[:3]]
    numbers += [0] * (3 - len(numbers))
    return numbers[0], numbers[1], numbers[2]


def check_version(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed discord.py) is in :data:`SUPPORTED`.

    Outside it a :class:`RuntimeWarning` says so: receiving may still work, but the private
    attributes it relies on are not known to be there.
    """
    text = discord.__version__ if version is None else version
    low, high = SUPPORTED
    ok = low <= _version_tuple(text) < high
    if not ok:
        warnings.warn(
            f"discord-ext-listening was written for discord.py >= {'.'.join(map(str, low))}, "
            f"< {'.'.join(map(str, high))}; discord.py {text} is installed, whose internals "
            "(voice socket reader, keys, DAVE session) may differ",
            RuntimeWarning,
            stacklevel=2,
        )
    return ok


check_version()


# -- the connection ----------------------------------------------------------------------------


def connection(vc: discord.VoiceClient) -> VoiceConnectionState:
    """discord.py's connection state of a voice client."""
    return vc._connection


def voice_socket(vc: discord.VoiceClient) -> socket.socket | None:
    """The connection's UDP socket while it is connected and open, else ``None``."""
    state = vc._connection
    sock = getattr(state, "socket", None)
    if not state.is_connected() or not isinstance(sock, socket.socket) or sock.fileno() == -1:
        return None
    return sock


def transport_key(vc: discord.VoiceClient) -> tuple[str | None, bytes | None]:
    """The transport encryption mode and secret key of the current voice session.

    discord.py stores a new list on every SESSION_DESCRIPTION; ``(None, None)`` before the first.
    """
    state = vc._connection
    key = getattr(state, "secret_key", None)
    mode = getattr(state, "mode", None)
    if not key or not mode:
        return None, None
    return str(mode), bytes(key)


def dave_state(vc: discord.VoiceClient) -> tuple[Any, int]:
    """The connection's ``davey.DaveSession`` (or ``None``) and its DAVE protocol version."""
    state = vc._connection
    return getattr(state, "dave_session", None), int(getattr(state, "dave_protocol_version", 0) or 0)


def recover_dave(vc: discord.VoiceClient, transition_id: int) -> Coroutine[Any, Any, None]:
    """discord.py's own recovery after an invalid commit: op 31, then a fresh key package."""
    return vc._connection._recover_from_invalid_commit(transition_id)


def next_send_nonce(vc: discord.VoiceClient) -> int:
    """The next outgoing transport nonce, counted the way discord.py counts its own."""
    nonce = vc._incr_nonce
    vc.checked_add("_incr_nonce", 1, 4294967295)
    return nonce


# -- the socket reader thread ------------------------------------------------------------------


def add_socket_listener(vc: discord.VoiceClient, callback: SocketListener) -> None:
    """Have discord.py's socket reader thread call ``callback(datagram)``."""
    vc._connection.add_socket_listener(callback)


def remove_socket_listener(vc: discord.VoiceClient, callback: SocketListener) -> None:
    """Undo :func:`add_socket_listener` (a no-op if it was not registered)."""
    vc._connection.remove_socket_listener(callback)


class SocketReaderView:
    """What a listener running on discord.py's socket reader thread may ask of that thread.

    A listener that reads the socket itself in batches (instead of one callback per datagram)
    must give the thread back as soon as discord.py wants it: when the reader is stopped or
    paused, or the socket was replaced.
    """

    __slots__ = ("_end", "_reader", "_running", "_state")

    def __init__(self, state: VoiceConnectionState, reader: Any) -> None:
        self._state = state
        self._reader = reader
        self._end = reader._end
        self._running = reader._running

    def listeners(self) -> list[SocketListener]:
        """Every listener registered now (discord.py's own, such as IP discovery, included)."""
        return list(self._reader._callbacks)

    def must_yield(self, sock: socket.socket) -> bool:
        """Whether the reader was stopped or paused, or ``sock`` is no longer the connection's."""
        return self._end.is_set() or not self._running.is_set() or getattr(self._state, "socket", None) is not sock


def socket_reader(vc: discord.VoiceClient) -> tuple[SocketReaderView, socket.socket] | None:
    """The reader thread's view and the socket it reads, or ``None`` when discord.py's
    reader is not the one this module knows (then: one datagram per callback, as delivered)."""
    state = vc._connection
    reader = getattr(state, "_socket_reader", None)
    sock = getattr(state, "socket", None)
    if not isinstance(sock, socket.socket) or not all(
        hasattr(reader, name) for name in ("_callbacks", "_end", "_running")
    ):
        return None
    return SocketReaderView(state, reader), sock


def _reader_waker(sock: Any) -> Callable[[], None]:
    """Something that wakes a thread blocked in ``select()`` on ``sock`` once it is closed.

    Closing a socket does not wake a ``select()`` waiting on it in another thread, and
    discord.py's reader waits up to 30 s there: a reconnect (close codes 4006, 4009...) that
    replaced the socket under a reader stuck on the old one made IP discovery on the new
    socket time out until then. A duplicate of the descriptor keeps the old socket alive past
    discord.py's close; shutting it down wakes the reader, which goes on with the new socket.
    """
    try:
        fd = os.dup(sock.fileno()) if os.name == "posix" and sock else -1
    except (OSError, ValueError, AttributeError):
        fd = -1
    if fd < 0:
        return lambda: None

    def wake() -> None:
        s = socket.socket(fileno=fd)
        try:
            if sock.fileno() == -1:  # only a socket discord.py closed: one it kept stays usable
                s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # ENOTCONN still wakes the waiters on Linux
        finally:
            s.close()

    return wake


class ConnectionState(VoiceConnectionState):
    """discord.py's connection state; wakes its socket reader when it closes or replaces a socket.

    Discord sends no RTCP BYE when a session ends, so nothing else would wake the reader.
    """

    def _create_socket(self, *args: Any, **kwargs: Any) -> None:
        # On a move discord.py opens a new socket without closing the old one, and its reader
        # sleeps in select() on the old one, to which Discord never sends again: IP discovery
        # on the new socket then waits out select's 30 s. Shutting the abandoned socket down
        # wakes the reader, which then finds the new one.
        old = getattr(self, "socket", None)
        super()._create_socket(*args, **kwargs)
        if isinstance(old, socket.socket) and old is not self.socket and old.fileno() != -1:
            try:
                old.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # ENOTCONN still wakes the waiters on Linux
            old.close()

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        wake = _reader_waker(getattr(self, "socket", None))
        try:
            await super().disconnect(*args, **kwargs)
        finally:
            wake()

    async def soft_disconnect(self, *args: Any, **kwargs: Any) -> None:
        wake = _reader_waker(getattr(self, "socket", None))
        try:
            await super().soft_disconnect(*args, **kwargs)
        finally:
            wake()


# -- a token-less client for the local voice server (testing/) --------------------------------
# The local voice server drives a real discord.Client without logging in: it builds the cache
# READY and GUILD_CREATE would have built and feeds voice events through discord.py's own
# parsers, so the voice client under test runs exactly the code a real bot runs.


def client_state(client: discord.Client) -> ClientConnectionState[Any]:
    """The client's connection state: its cache and its gateway event parsers."""
    return client._connection


async def set_up_offline(client: discord.Client) -> None:
    """What ``Client.login()`` does before any network traffic: bind to the running loop."""
    await client._async_setup_hook()


def route_voice_websocket(client: discord.Client, ws_connect: Callable[..., Any]) -> None:
    """Make this client's voice websockets dial through ``ws_connect`` (same signature as
    ``HTTPClient.ws_connect``); an attribute of this client's HTTP client only."""
    client.http.ws_connect = ws_connect  # type: ignore[method-assign]


def add_guild(client: discord.Client, payload: dict[str, Any]) -> None:
    """Cache a guild from a GUILD_CREATE payload and mark the client ready."""
    client._connection._add_guild_from_data(payload)  # type: ignore[arg-type]
    client._ready.set()  # READY has "arrived": wait_until_ready() returns


def cache_member(guild: discord.Guild, member: discord.Member) -> None:
    """Add a member to a guild's cache, as GUILD_MEMBER_ADD would."""
    guild._add_member(member)


def parse_voice_state_update(client: discord.Client, data: dict[str, Any]) -> None:
    """Deliver a VOICE_STATE_UPDATE through the client's own parser."""
    client._connection.parse_voice_state_update(data)  # type: ignore[arg-type]


def parse_voice_server_update(client: discord.Client, data: dict[str, Any]) -> None:
    """Deliver a VOICE_SERVER_UPDATE through the client's own parser."""
    client._connection.parse_voice_server_update(data)  # type: ignore[arg-type]
