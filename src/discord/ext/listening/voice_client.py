"""``listening.VoiceClient``: discord.py's VoiceClient that can also hear the channel."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from discord.voice_state import VoiceConnectionState

import discord

from . import _discord
from . import pool as _pool
from .checks import check_user_id
from .keepalive import KEEPALIVE_INTERVAL, UDPKeepalive
from .session import ListeningSession
from .sink import AudioSink
from .ssrc import SSRCMap
from .stats import ListenStats
from .stream import Subscription
from .transport import AES_GCM, XCHACHA20, TransportCipher, transport_cipher

if TYPE_CHECKING:
    from .pcm import PCMFormat
    from .pool import AudioProcessPool
    from .stream import AfterDuration, AfterSilence

__all__ = ("VoiceClient",)

_log = logging.getLogger(__name__)

AfterCallback = Callable[..., Coroutine[Any, Any, Any]]


_DISCORD_PY_MODES = tuple(m for m in discord.VoiceClient.supported_modes if m not in (AES_GCM, XCHACHA20))


def _log_recovery_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.warning("DAVE recovery failed: %r", task.exception())


class VoiceClient(discord.VoiceClient):
    """A :class:`discord.VoiceClient` that can listen as well as speak.

    Connect with ``await channel.connect(cls=listening.VoiceClient)``, then call
    :meth:`listen` with a sink. Everything :class:`discord.VoiceClient` does still works,
    including playing audio while listening.

    On top of discord.py's modes it negotiates ``aead_aes256_gcm_rtpsize`` first (Discord's
    preferred mode, and the cheaper one to decrypt) and encrypts outgoing audio in it.

    While connected (listening or not, playing or not) it sends a small UDP keepalive every
    :attr:`keepalive_interval` seconds: Discord stops sending media to an address that stays
    silent, and discord.py sends nothing while it does not play.

    Attributes
    ----------
    keepalive_interval: :class:`float`
        Seconds between UDP keepalives (class attribute; 5 by default, as Discord's clients).
    """

    keepalive_interval: float = KEEPALIVE_INTERVAL

    # discord.py's type lists the modes it can encrypt itself; AES-GCM is ours.
    supported_modes = (AES_GCM, XCHACHA20, *_DISCORD_PY_MODES)  # type: ignore[arg-type]

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        self._ssrc_map = SSRCMap()
        self._listening: ListeningSession | None = None
        self._present: set[int] = set()  # members in the call, for join / leave events
        self._last_session: ListeningSession | None = None
        self._send_cipher: TransportCipher | None = None
        self._send_cipher_key: Any = None
        # The last DAVE transition the gateway named (op 21/22), for op 31 in a recovery.
        self._dave_transition_id = 0
        super().__init__(client, channel)
        self._keepalive = UDPKeepalive(self.loop, self._keepalive_socket, interval=self.keepalive_interval)

    # -- connection plumbing -------------------------------------------------------------

    def create_connection_state(self) -> VoiceConnectionState:
        return _discord.ConnectionState(self, hook=self._on_gateway_message)

    async def connect(
        self, *, reconnect: bool, timeout: float, self_deaf: bool = False, self_mute: bool = False
    ) -> None:
        await super().connect(reconnect=reconnect, timeout=timeout, self_deaf=self_deaf, self_mute=self_mute)
        # From now until cleanup(), listening or not: Discord forgets a silent address.
        self._keepalive.start()

    def _keepalive_socket(self) -> socket.socket | None:
        return _discord.voice_socket(self)

    @property
    def keepalives_sent(self) -> int:
        """UDP keepalives sent on this connection (one every 5 s while connected)."""
        return self._keepalive.sent

    async def _on_gateway_message(self, ws: Any, msg: dict[str, Any]) -> None:
        # discord.py awaits this after its own handling of every JSON voice gateway message.
        op = msg.get("op")
        data = msg.get("d")
        before = self._ssrc_map.connected_users
        self._ssrc_map.update_from_gateway(op, data)  # type: ignore[arg-type]
        if op in (11, 13):
            self._members_changed(before, self._ssrc_map.connected_users)
        if op in (21, 22) and isinstance(data, dict) and isinstance(data.get("transition_id"), int):
            self._dave_transition_id = data["transition_id"]
        # Keys and the DAVE session change only on JSON messages (SESSION_DESCRIPTION, DAVE
        # transitions and epochs), each handled by discord.py right before this hook.
        self._update_receiver()

    def _members_changed(self, before: frozenset[int], after: frozenset[int]) -> None:
        """Members joined (op 11) or left (op 13) the call: events, while listening."""
        session = self._listening
        if session is None or session.done:
            return
        for user_id in sorted(before - after):
            self._present.discard(user_id)
            session.member_left(user_id)
            self.client.dispatch("voice_member_leave", session._user(user_id))
        for user_id in sorted(after - before - self._present):
            self._present.add(user_id)
            self.client.dispatch("voice_member_join", session._user(user_id))

    def _update_receiver(self) -> None:
        session = self._listening
        if session is not None:
            session.receiver.set_transport(*_discord.transport_key(self))
            session.receiver.set_dave(*_discord.dave_state(self))
            session.wake()  # held packets may now have their key or owner

    @property
    def dave_protocol_version(self) -> int:
        """The DAVE (end-to-end encryption) protocol version of the call; 0 without DAVE."""
        return _discord.dave_state(self)[1]

    @property
    def dave_epoch(self) -> int | None:
        """The MLS epoch of the bot's DAVE group, or ``None`` outside one."""
        session = _discord.dave_state(self)[0]
        return None if session is None else session.epoch

    def _recover_dave(self) -> None:
        """Re-key DAVE as a client that failed a transition does: op 31, then a new key package.

        The voice server removes the bot's old leaf and adds it back with fresh keys, so a
        bot whose MLS state went wrong (frames of one sender failing on and on) hears again.
        Event loop thread.
        """
        if _discord.dave_state(self)[0] is None or not self.is_connected():
            return
        task = self.loop.create_task(_discord.recover_dave(self, self._dave_transition_id))
        task.add_done_callback(_log_recovery_failure)

    def _encrypt_aead_aes256_gcm_rtpsize(self, header: bytes, data: bytes) -> bytes:
        key = self.secret_key
        if self._send_cipher is None or self._send_cipher_key is not key:
            self._send_cipher = transport_cipher(AES_GCM, bytes(key))
            self._send_cipher_key = key
        counter = _discord.next_send_nonce(self)
        return self._send_cipher.encrypt(bytes(header), bytes(data), counter)

    def cleanup(self) -> None:
        # discord.py calls this when the connection ends for good (disconnect, kick); a
        # reconnect does not. Listening ends with it.
        self._keepalive.stop()
        session = self._listening
        if session is not None:
            session.stop(reason="disconnected")
        super().cleanup()

    # -- listening -----------------------------------------------------------------------

    def listen(
        self,
        sink: AudioSink,
        processing_pool: AudioProcessPool | None = None,
        *,
        decode: bool = True,
        after: AfterCallback | None = None,
        jitter_depth: float = 0.06,
        sink_queue_size: int = 5000,
        **kwargs: Any,
    ) -> None:
        """Start receiving audio into ``sink``.

        Parameters
        ----------
        sink: :class:`AudioSink`
            Receives every user's frames (in order per user) and RTCP packets, on a
            dedicated thread.
        processing_pool: Optional[:class:`AudioProcessPool`]
            The pool whose worker processes decode Opus. Defaults to the process-wide pool
            from :func:`init_audio_processing_pool` (created on first use).
        decode: :class:`bool`
            ``False`` hands sinks the Opus packets instead of PCM (no decoding at all: the
            cheapest way to record many speakers, e.g. into :class:`OggOpusAudioFile`).
        after: Optional[Callable[..., Coroutine]]
            A coroutine function awaited once when listening ends for any reason, as
            ``await after(sink, error, **kwargs)``; ``error`` is ``None`` unless listening
            ended because of an exception.
        jitter_depth: :class:`float`
            Seconds a packet may wait for the ones before it (reordering tolerance); also the
            added latency after a loss, and of the first packet after a pause or a network
            stall (which waits for the rest of a stall's late burst, to keep its place).
        sink_queue_size: :class:`int`
            Frames buffered for a slow sink before frames are dropped (and counted).
        **kwargs
            Passed to ``after``.

        Raises
        ------
        discord.ClientException
            Not connected, or already listening.
        TypeError
            ``sink`` is not an :class:`AudioSink`, or ``after`` is not a coroutine function.
        """
        if not self.is_connected():
            raise discord.ClientException("Not connected to voice.")
        if not isinstance(sink, AudioSink):
            raise TypeError(f"sink must be an AudioSink, not {type(sink).__name__}")
        if after is not None and not asyncio.iscoroutinefunction(after):
            raise TypeError("after must be a coroutine function (async def), called as after(sink, error, **kwargs)")
        if self._listening is not None and not self._listening.done:
            raise discord.ClientException("Already listening.")
        if self._last_session is not None and not self._last_session.cleaned_up:
            raise discord.ClientException(
                "The previous listen() is still cleaning up; await wait_for_listen_ready() first."
            )
        if processing_pool is None and decode:
            processing_pool = _pool.get_default_pool()
        session = ListeningSession(
            self,
            sink,
            processing_pool if decode else None,
            ssrc_map=self._ssrc_map,
            decode=decode,
            after=after,
            after_kwargs=kwargs,
            jitter_depth=jitter_depth,
            sink_queue_size=sink_queue_size,
        )
        self._listening = self._last_session = session
        # Who is in the call already: the voice gateway names them (op 11) only shortly after
        # the connection, possibly once listening has begun; they are not joining.
        self._present = set(getattr(self.channel, "voice_states", {})) | self._ssrc_map.connected_users
        self._update_receiver()
        session.start()

    def stop_listening(self) -> None:
        """Stop listening; the sink's ``cleanup`` and ``after`` run once everything is flushed."""
        session = self._listening
        if session is not None:
            session.stop()

    def pause_listening(self) -> None:
        """Pause: packets arriving while paused are dropped; the recording timeline keeps
        running, so the paused span becomes silence in time-aligned outputs."""
        if self._listening is not None:
            self._listening.pause()

    def resume_listening(self) -> None:
        """Resume after :meth:`pause_listening`."""
        if self._listening is not None:
            self._listening.resume()

    def is_listening(self) -> bool:
        """Whether a :meth:`listen` is running (paused or not)."""
        return self._listening is not None and not self._listening.done

    def is_listening_paused(self) -> bool:
        """Whether listening is paused."""
        return self.is_listening() and self._listening.paused  # type: ignore[union-attr]

    async def wait_for_listen_ready(self, timeout: float | None = None) -> None:
        """Wait until a new :meth:`listen` cannot collide with the last one.

        Returns once the previous session has stopped, flushed and cleaned up its sink
        (immediately if there was none).

        Raises
        ------
        asyncio.TimeoutError
            ``timeout`` seconds passed first.
        """
        session = self._last_session
        if session is not None:
            await asyncio.wait_for(session.wait_cleaned_up(), timeout)

    @property
    def listen_stats(self) -> ListenStats | None:
        """Counters of the current (or last) listening session, or ``None``."""
        session = self._last_session
        return session.stats if session is not None else None

    @property
    def listen_position(self) -> int | None:
        """The current sample on the timeline of the listening session, or ``None``.

        Sample 0 is the moment :meth:`listen` started, at 48 kHz, the same axis as
        :attr:`AudioFrame.position` and every file of a recording: use it to mark an event
        (a chat message, a command) at the point of the recording where it happened.
        ``None`` when not listening.
        """
        return self._listening.position() if self.is_listening() else None  # type: ignore[union-attr]

    def subscribe(
        self,
        user: Any,
        *,
        end: AfterSilence | AfterDuration | None = None,
        format: PCMFormat | None = None,
        max_queue: int = 500,
    ) -> Subscription:
        """One member's audio on the event loop, beside whatever sink :meth:`listen` feeds.

        ::

            vc.listen(listening.AudioFileSink(listening.WaveAudioFile, "recordings"))
            async for frame in vc.subscribe(member, end=listening.AfterSilence(1.0)):
                ...  # frame.audio: a numpy array in ``format``

        Parameters
        ----------
        user: Union[:class:`discord.abc.Snowflake`, :class:`int`]
            The member (or user id) to follow.
        end: Union[:class:`AfterSilence`, :class:`AfterDuration`, None]
            End once the member has been silent that long after speaking, or that long after
            now; ``None`` (the default): when :meth:`Subscription.close` is called. It also
            ends when the member leaves the call or listening stops.
        format: Optional[:class:`PCMFormat`]
            The frames' PCM shape (48 kHz stereo int16 by default).
        max_queue: :class:`int`
            Frames that may wait for the consumer; past it new ones are dropped and counted.

        Returns
        -------
        :class:`Subscription`
            An async iterator of :class:`StreamFrame`.

        Raises
        ------
        RuntimeError
            Not listening.
        TypeError, ValueError
            A bad argument.
        """
        session = self._listening
        if session is None or session.done:
            raise RuntimeError("not listening: call listen() before subscribe()")
        sub = Subscription(
            check_user_id(user), end=end, format=format, max_queue=max_queue, position=session.position()
        )
        sub._detach = session.remove_tap
        session.add_tap(sub)
        return sub

    def is_speaking(self, member: Any) -> bool:
        """Whether ``member`` (or a user id) is sending audio now, as far as listening hears;
        ``False`` when not listening."""
        session = self._listening
        return session is not None and not session.done and check_user_id(member) in session.speaking

    @property
    def speaking_members(self) -> list[discord.Member | discord.Object]:
        """The members sending audio now (a :class:`discord.Object` for a member not cached);
        empty when not listening."""
        session = self._listening
        if session is None or session.done:
            return []
        return [session._user(uid) for uid in sorted(session.speaking)]

    @property
    def ssrc_map(self) -> SSRCMap:
        """Who owns which SSRC in this call, as far as the voice gateway said."""
        return self._ssrc_map

    @staticmethod
    def init_audio_processing_pool(max_processes: int, **kwargs: Any) -> AudioProcessPool:
        """Same as :func:`discord.ext.listening.init_audio_processing_pool`."""
        return _pool.init_audio_processing_pool(max_processes, **kwargs)
