"""A real :class:`discord.Client` wired to the local voice server, with no token and no network.

Everything on discord.py's side is the unmodified library: the client's
:class:`~discord.state.ConnectionState`, the guild, channels, members, voice states,
``VoiceChannel.connect()`` and the whole :class:`~discord.VoiceClient` handshake. Only
Discord's side is replaced:

* the main gateway: :class:`FakeMainGateway` is set as ``client.ws``. discord.py sends
  voice-state updates (op 4) through ``client.ws.voice_state(...)``
  (``Guild.change_voice_state``), and the emulator answers with ``VOICE_STATE_UPDATE`` /
  ``VOICE_SERVER_UPDATE`` parsed by the client's own ``parse_*`` handlers, exactly as if
  they had arrived from Discord;
* the voice websocket transport: discord.py always dials ``wss://{endpoint}/?v=8`` with
  ``client.http.ws_connect``. That one bound method of this client instance is replaced
  so that ``wss://127.0.0.1:PORT`` becomes ``ws://127.0.0.1:PORT`` (no TLS locally);
  every other byte goes through aiohttp and discord.py unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from discord.gateway import DiscordClientWebSocketResponse

import discord

from .. import _discord, opus

if TYPE_CHECKING:
    from discord.state import ConnectionState
    from discord.types.user import User as UserPayload

__all__ = ("ClientHarness", "FakeMainGateway", "VoiceStateRequest")

_log = logging.getLogger(__name__)

#: Called by :class:`FakeMainGateway` for every op 4 the client sends.
VoiceStateRequest = Callable[[int, int | None, bool, bool], Awaitable[None]]

_JOINED_AT = "2024-01-01T00:00:00+00:00"


class FakeMainGateway:
    """Stands in for :class:`discord.gateway.DiscordWebSocket` (the main gateway) of the client.

    Only what the voice code path touches is implemented: ``voice_state`` (op 4), plus the
    attributes :meth:`discord.Client.close` and ``client.latency`` read.

    Parameters
    ----------
    on_voice_state: Callable
        ``await on_voice_state(guild_id, channel_id, self_mute, self_deaf)`` for each op 4.
    """

    shard_id: int | None = None
    latency: float = 0.0

    def __init__(self, on_voice_state: VoiceStateRequest) -> None:
        self._on_voice_state = on_voice_state
        self.open: bool = True
        #: Every op 4 payload the client sent, in order (tests read it).
        self.voice_state_requests: list[dict[str, Any]] = []

    async def voice_state(
        self,
        guild_id: int,
        channel_id: int | None,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> None:
        """Receive op 4 exactly as ``discord.gateway.DiscordWebSocket.voice_state`` would send it."""
        payload = {"guild_id": guild_id, "channel_id": channel_id, "self_mute": self_mute, "self_deaf": self_deaf}
        _log.debug("main gateway op 4: %s", payload)
        self.voice_state_requests.append(payload)
        if not self.open:
            # The real gateway would be gone; discord.py would get no answer and time out.
            return
        await self._on_voice_state(guild_id, channel_id, self_mute, self_deaf)

    def is_ratelimited(self) -> bool:
        """The fake gateway never rate-limits."""
        return False

    async def close(self, code: int = 4000) -> None:
        """Mark the gateway closed (called by :meth:`discord.Client.close`)."""
        self.open = False


def user_payload(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    """A Discord user object as the API sends it."""
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": None,
        "bot": bot,
    }


def member_payload(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    """A Discord guild member object as the API sends it."""
    return {
        "user": user_payload(user_id, name, bot=bot),
        "roles": [],
        "joined_at": _JOINED_AT,
        "deaf": False,
        "mute": False,
        "flags": 0,
    }


def voice_channel_payload(channel_id: int, guild_id: int, name: str, position: int) -> dict[str, Any]:
    """A guild voice channel object (type 2)."""
    return {
        "id": str(channel_id),
        "type": 2,
        "guild_id": str(guild_id),
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "bitrate": 64000,
        "user_limit": 0,
        "parent_id": None,
        "nsfw": False,
        "rtc_region": None,
        "video_quality_mode": 1,
    }


class ClientHarness:
    """Owns one unmodified :class:`discord.Client` attached to the emulator.

    Parameters
    ----------
    guild_id, channel_ids: :class:`int`
        The guild and the voice channels (the first is the default one) it contains.
    bot_user_id: :class:`int`
        The client's own user id.
    bot_name: :class:`str`
        The client's user name.
    ws_host: :class:`str`
        The host whose ``wss://`` URLs are redirected to plain ``ws://`` (the emulator's).
    on_voice_state: Callable
        Receives every op 4 the client sends on the main gateway.
    """

    def __init__(
        self,
        *,
        guild_id: int,
        channel_ids: tuple[int, ...],
        bot_user_id: int,
        bot_name: str,
        ws_host: str,
        on_voice_state: VoiceStateRequest,
    ) -> None:
        if not channel_ids:
            raise ValueError("the harness needs at least one voice channel id")
        self.guild_id = guild_id
        self.channel_ids = channel_ids
        self.bot_user_id = bot_user_id
        self.bot_name = bot_name
        self._ws_host = ws_host
        self.gateway = FakeMainGateway(on_voice_state)
        self._session: aiohttp.ClientSession | None = None
        self.client: discord.Client = discord.Client(
            intents=discord.Intents(guilds=True, voice_states=True, members=True)
        )
        #: Voice websocket URLs the client dialled (before the ``ws://`` rewrite).
        self.dialled: list[str] = []

    @property
    def state(self) -> ConnectionState:
        """The client's connection state (its cache and event parsers)."""
        return _discord.client_state(self.client)

    @property
    def guild(self) -> discord.Guild:
        """The emulated guild as the client sees it."""
        guild = self.client.get_guild(self.guild_id)
        if guild is None:  # pragma: no cover - set up in start()
            raise RuntimeError("the harness has not been started")
        return guild

    async def start(self) -> None:
        """Set the client up as if it had logged in and received READY + GUILD_CREATE."""
        # Loads libopus into discord.opus so the bot can encode what it plays.
        opus.load_for_discord()
        client = self.client
        # What Client.login()/connect() do before any network traffic: bind asyncio objects
        # to the running loop.
        await _discord.set_up_offline(client)
        state = self.state
        payload = cast("UserPayload", user_payload(self.bot_user_id, self.bot_name, bot=True))
        state.user = discord.ClientUser(state=state, data=payload)
        client.ws = self.gateway  # type: ignore[assignment]
        self._session = aiohttp.ClientSession(ws_response_class=DiscordClientWebSocketResponse)
        # Instance attribute on this client's HTTPClient only: the voice websocket dials here.
        _discord.route_voice_websocket(client, self._ws_connect)

        channels = [
            voice_channel_payload(cid, self.guild_id, "General" if i == 0 else f"Voice {i + 1}", i)
            for i, cid in enumerate(self.channel_ids)
        ]
        guild_payload: dict[str, Any] = {
            "id": str(self.guild_id),
            "name": "Listening test guild",
            "owner_id": str(self.bot_user_id),
            "roles": [
                {
                    "id": str(self.guild_id),
                    "name": "@everyone",
                    "permissions": str(discord.Permissions.voice().value | discord.Permissions.general().value),
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "channels": channels,
            "members": [member_payload(self.bot_user_id, self.bot_name, bot=True)],
            "voice_states": [],
            "member_count": 1,
            "large": False,
            "features": [],
            "emojis": [],
            "stickers": [],
            "threads": [],
        }
        _discord.add_guild(client, guild_payload)
        _log.debug("harness client ready: guild %s with channels %s", self.guild_id, self.channel_ids)

    async def _ws_connect(self, url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        """``HTTPClient.ws_connect`` for this client: same options, ``wss://`` -> ``ws://`` locally."""
        self.dialled.append(url)
        parts = urlsplit(url)
        if parts.scheme == "wss" and parts.hostname == self._ws_host:
            url = urlunsplit(("ws", parts.netloc, parts.path, parts.query, parts.fragment))
        else:
            raise ConnectionError(f"the test client may only dial the local voice server, not {url!r}")
        if self._session is None or self._session.closed:
            raise ConnectionError("the harness HTTP session is closed")
        # Mirrors discord.http.HTTPClient.ws_connect (timeouts, autoclose=False, compression).
        return await self._session.ws_connect(
            url,
            max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=30.0),
            autoclose=False,
            compress=compress,
        )

    def add_member(self, user_id: int, name: str) -> discord.Member:
        """Add a member to the guild cache (as GUILD_MEMBER_ADD would) and return it."""
        guild = self.guild
        member = guild.get_member(user_id)
        if member is None:
            member = discord.Member(data=member_payload(user_id, name), guild=guild, state=self.state)  # type: ignore[arg-type]
            _discord.cache_member(guild, member)
        return member

    def dispatch_voice_state(
        self,
        user_id: int,
        channel_id: int | None,
        session_id: str,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> None:
        """Deliver a VOICE_STATE_UPDATE through the client's own parser."""
        member = self.guild.get_member(user_id)
        data: dict[str, Any] = {
            "guild_id": str(self.guild_id),
            "channel_id": None if channel_id is None else str(channel_id),
            "user_id": str(user_id),
            "session_id": session_id,
            "deaf": False,
            "mute": False,
            "self_deaf": self_deaf,
            "self_mute": self_mute,
            "self_video": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }
        if member is not None:
            data["member"] = member_payload(user_id, member.name, bot=member.bot)
        _log.debug("dispatch VOICE_STATE_UPDATE user=%s channel=%s", user_id, channel_id)
        _discord.parse_voice_state_update(self.client, data)

    def dispatch_voice_server(self, token: str, endpoint: str | None) -> None:
        """Deliver a VOICE_SERVER_UPDATE through the client's own parser."""
        data = {"token": token, "guild_id": str(self.guild_id), "endpoint": endpoint}
        _log.debug("dispatch VOICE_SERVER_UPDATE endpoint=%s", endpoint)
        _discord.parse_voice_server_update(self.client, data)

    async def close(self) -> None:
        """Close the client (disconnects any voice client) and the HTTP session."""
        try:
            if not self.client.is_closed():
                await asyncio.wait_for(self.client.close(), timeout=10)
        except (TimeoutError, Exception):  # teardown must go on whatever happened
            _log.warning("closing the harness client failed", exc_info=True)
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None
