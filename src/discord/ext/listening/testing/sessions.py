"""The bot's voice sessions on the server side: gateway and session control.

:class:`SessionControl` answers the main gateway's op 4 (join, move, leave), creates and
ends the bot's voice sessions, authenticates IDENTIFY and RESUME on the voice websocket,
announces the call when a session is established, and performs what a moderator or a
crashing voice server does to the bot (close codes, kick, move, a new transport key).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

from .bot_media import BotMedia
from .calls import BotSessions, Call, EmulatorError, Hooks, Ssrcs
from .dave_messages import E2EERequired
from .dave_routing import DaveRouting
from .gateway import GatewayClose, VoiceGatewayConnection, VoiceGatewayServer, VoiceSession
from .harness import ClientHarness
from .members import Presence
from .settings import EmulatorSettings

__all__ = ("SessionControl",)

_log = logging.getLogger(__name__)

#: Close codes after which the session cannot be resumed (the emulator forgets it).
_TERMINAL_CLOSE_CODES = frozenset({4004, 4006, 4009, 4011, 4012, 4014, 4016, 4017, 4020, 4021, 4022})


class SessionControl:
    """The bot's voice sessions: created, authenticated, announced, moved and ended.

    Parameters
    ----------
    sessions: :class:`.calls.BotSessions`
        The registry it keeps.
    calls: dict[:class:`int`, :class:`.calls.Call`]
        The guild's calls by channel id.
    gateway: :class:`.gateway.VoiceGatewayServer`
        The voice websocket server (its endpoint goes into VOICE_SERVER_UPDATE).
    media: :class:`.bot_media.BotMedia`
        Media to and from the bot (keys, addresses, BYE).
    presence: :class:`.members.Presence`
        Announces who is in the call.
    dave: Optional[:class:`.dave_routing.DaveRouting`]
        The DAVE routing; ``None`` without DAVE.
    harness: Callable[[], :class:`.harness.ClientHarness`]
        The client harness (dispatches the main gateway's events).
    settings: :class:`.settings.EmulatorSettings`
        The ids of the guild and the bot; ``require_dave`` (close with 4017 when a client
        without DAVE identifies), ``answer_delay`` (how long op 4 waits for its answer),
        ``resume_session_description`` (SESSION_DESCRIPTION again after RESUMED).
    rng: :class:`random.Random`
        Draws session keys.
    ssrcs: :class:`.calls.Ssrcs`
        Hands out the sessions' SSRCs.
    hooks: :class:`.calls.Hooks`
        The emulator's task runner, its state-change signal and whether it is closed.
    """

    def __init__(
        self,
        sessions: BotSessions,
        calls: dict[int, Call],
        *,
        gateway: VoiceGatewayServer,
        media: BotMedia,
        presence: Presence,
        dave: DaveRouting | None,
        harness: Callable[[], ClientHarness],
        settings: EmulatorSettings,
        rng: random.Random,
        ssrcs: Ssrcs,
        hooks: Hooks,
    ) -> None:
        self.sessions = sessions
        self.calls = calls
        self.gateway = gateway
        self.media = media
        self.presence = presence
        self.dave = dave
        self._harness = harness
        self.guild_id = settings.guild_id
        self.bot_user_id = settings.bot_user_id
        self.require_dave = settings.require_dave
        self.answer_delay = settings.answer_delay
        self.resume_session_description = settings.resume_session_description
        self._rng = rng
        self._ssrcs = ssrcs
        self._hooks = hooks

    # -- the main gateway (op 4) ----------------------------------------------------------------

    async def on_voice_state_request(
        self, guild_id: int, channel_id: int | None, self_mute: bool, self_deaf: bool
    ) -> None:
        """Op 4 from the bot's client (the harness calls this)."""
        if int(guild_id) != self.guild_id:
            _log.warning("op 4 for unknown guild %s ignored", guild_id)
            return
        if self._hooks.closed and channel_id is not None:
            return
        # Answer later, from a task: discord.py sends op 4 and only then starts waiting.
        self._hooks.spawn(self._answer_voice_state(channel_id, self_mute, self_deaf), "op4")

    async def _answer_voice_state(self, channel_id: int | None, self_mute: bool, self_deaf: bool) -> None:
        await asyncio.sleep(self.answer_delay)
        harness = self._harness()
        main_session_id = self.sessions.main_session_id
        if channel_id is None:
            session = self.sessions.current
            if session is not None:
                await self.end(session, why="bot left")
            self.sessions.channel_id = None
            harness.dispatch_voice_state(
                self.bot_user_id, None, main_session_id, self_mute=self_mute, self_deaf=self_deaf
            )
            return
        channel_id = int(channel_id)
        if channel_id not in self.calls:
            _log.warning("op 4 for unknown channel %s: no answer (discord.py will time out)", channel_id)
            return
        session = self.sessions.current
        if session is not None and not session.closed and self.sessions.channel_id == channel_id:
            # Re-join of the channel it is in (discord.py does this to resume after 4015).
            # VOICE_SERVER_UPDATE first: discord.py, still "connected", then expects the
            # voice state update to complete its handshake; the other order leaves it waiting.
            harness.dispatch_voice_server(session.token, self.gateway.endpoint)
            await asyncio.sleep(0)
            harness.dispatch_voice_state(
                self.bot_user_id, channel_id, main_session_id, self_mute=self_mute, self_deaf=self_deaf
            )
            return
        await self.join(channel_id, self_mute=self_mute, self_deaf=self_deaf)

    async def join(self, channel_id: int, *, self_mute: bool = False, self_deaf: bool = False) -> None:
        """Put the bot in ``channel_id`` with a fresh voice session (join or move)."""
        old = self.sessions.current
        old_connection = old.connection if old is not None else None
        if old is not None:
            await self.end(old, why="moved")
        session = VoiceSession(
            guild_id=self.guild_id,
            channel_id=channel_id,
            user_id=self.bot_user_id,
            session_id=self.sessions.main_session_id,
            token=secrets.token_hex(8),
            ssrc=self._ssrcs.new(),
            secret_key=self._rng.randbytes(32),
            dave_version=0,
        )
        self.sessions.all.append(session)
        self.sessions.current = session
        self.sessions.channel_id = channel_id
        self.calls[channel_id].session = session
        harness = self._harness()
        harness.dispatch_voice_state(
            self.bot_user_id, channel_id, self.sessions.main_session_id, self_mute=self_mute, self_deaf=self_deaf
        )
        await asyncio.sleep(0)
        harness.dispatch_voice_server(session.token, self.gateway.endpoint)
        if old_connection is not None and not old_connection.closed:
            # The old voice server drops the bot; discord.py reconnects to the new one.
            await asyncio.sleep(max(self.answer_delay, 0.01))
            await old_connection.close(4014, "Moved")
        self._hooks.notify()

    async def end(self, session: VoiceSession, *, why: str) -> None:
        """The session ends: no more media to it, the bot leaves its DAVE group."""
        if session.closed:
            return
        session.closed = True
        _log.debug("voice session %s ends: %s", session.token, why)
        call = self.calls[session.channel_id]
        if call.session is session:
            call.session = None
        if self.sessions.current is session:
            self.sessions.current = None
        self.media.goodbye(session, "session ended")
        self.media.forget(session)
        if self.dave is not None and session.dave_version:
            await self.dave.bot_leave(call)
        self._hooks.notify()

    # -- what a moderator or a voice server does ---------------------------------------------------

    async def close_voice(self, code: int, reason: str) -> None:
        """:meth:`.VoiceServerEmulator.close_voice`."""
        if not (code == 1000 or 3000 <= code <= 4999):
            raise ValueError(f"close code must be 1000 or 3000..4999, got {code!r}")
        session = self.sessions.current
        if session is None or session.connection is None or session.connection.closed:
            raise EmulatorError("the bot has no open voice websocket to close")
        if code in _TERMINAL_CLOSE_CODES:
            await self.end(session, why=f"closed with {code}")
        await session.connection.close(code, reason)

    async def kick(self) -> None:
        """:meth:`.VoiceServerEmulator.kick_bot`."""
        session = self.sessions.current
        if session is None:
            raise EmulatorError("the bot is not in voice")
        connection = session.connection
        await self.end(session, why="kicked")
        self.sessions.channel_id = None
        self._harness().dispatch_voice_state(self.bot_user_id, None, self.sessions.main_session_id)
        await asyncio.sleep(self.answer_delay)
        if connection is not None:
            await connection.close(4014, "Disconnected")

    async def move(self, channel_id: int) -> None:
        """:meth:`.VoiceServerEmulator.move_bot` (the channel checked)."""
        if self.sessions.current is None:
            raise EmulatorError("the bot is not in voice; connect() it first")
        if self.sessions.channel_id == channel_id:
            raise EmulatorError(f"the bot is already in channel {channel_id}")
        await self.join(channel_id)

    async def new_session_key(self) -> bytes:
        """:meth:`.VoiceServerEmulator.new_session_key`."""
        session = self.sessions.current
        if session is None or not session.established or session.connection is None:
            raise EmulatorError("the bot has no established voice session")
        session.secret_key = self._rng.randbytes(32)
        self.media.establish(session)
        # discord.py re-creates its DAVE session on this SESSION_DESCRIPTION and sends a new
        # key package, which the group server takes as a reset: nothing to route before.
        await session.connection.send_session_description()
        return session.secret_key

    # -- the voice gateway (GatewayHandler) -------------------------------------------------------

    def _find(self, server_id: Any, session_id: Any, token: Any) -> VoiceSession:
        if str(server_id) != str(self.guild_id):
            raise GatewayClose(4011, "Server not found")
        for session in reversed(self.sessions.all):
            if session.token == token:
                if session.closed:
                    raise GatewayClose(4006, "Session is no longer valid")
                if session.session_id != session_id:
                    raise GatewayClose(4004, "Authentication failed")
                return session
        raise GatewayClose(4004, "Authentication failed")

    def authenticate(self, identify: dict[str, Any]) -> VoiceSession:
        """IDENTIFY names one of the bot's sessions; it gets DAVE if both sides can."""
        session = self._find(identify.get("server_id"), identify.get("session_id"), identify.get("token"))
        if str(identify.get("user_id")) != str(self.bot_user_id):
            raise GatewayClose(4004, "Authentication failed")
        # A session may be identified again on a new websocket; the newer one replaces the
        # older (the gateway closes that one with 4006).
        max_dave = identify.get("max_dave_protocol_version") or 0
        if self.dave is not None and max_dave >= 1:
            session.dave_version = 1
        elif self.require_dave:
            raise GatewayClose(4017, "E2EE/DAVE protocol required")
        else:
            session.dave_version = 0
        return session

    def authenticate_resume(self, resume: dict[str, Any]) -> VoiceSession:
        """RESUME names a live, identified session."""
        session = self._find(resume.get("server_id"), resume.get("session_id"), resume.get("token"))
        if not session.identified:
            raise GatewayClose(4006, "Session is no longer valid")
        return session

    async def on_protocol_selected(self, session: VoiceSession) -> None:
        """The session is established: media keys, the call's announcement, DAVE for the bot."""
        self.media.establish(session)
        await self.presence.announce(session)
        if self.dave is not None and session.dave_version:
            try:
                await self.dave.bot_join(self.calls[session.channel_id], session)
            except E2EERequired as exc:
                raise GatewayClose(exc.close_code, "E2EE/DAVE protocol required") from None
        self._hooks.notify()

    async def on_resumed(self, session: VoiceSession) -> None:
        """The session continues on a new websocket (which waits for a key again)."""
        if self.resume_session_description and session.established and session.connection is not None:
            await session.connection.send_session_description()
        self._hooks.notify()

    async def on_dave_message(self, session: VoiceSession, op: int, data: Any) -> None:
        """A DAVE message from the bot."""
        if self.dave is None or not session.dave_version:
            raise GatewayClose(4020, f"DAVE op {op} on a session without DAVE")
        if session.closed:
            return
        await self.dave.from_bot(self.calls[session.channel_id], op, data)
        self._hooks.notify()

    async def on_connection_closed(self, session: VoiceSession | None, connection: VoiceGatewayConnection) -> None:
        """A websocket ended; the session stays resumable."""
        if session is not None and session.connection is connection:
            session.connection = None
            if not connection.closed_by_server:
                # discord.py closes its websocket right before it closes or replaces its
                # UDP socket (disconnect, reconnect): the last moment a BYE can wake it.
                self.media.goodbye(session, "websocket closed")
        self._hooks.notify()
