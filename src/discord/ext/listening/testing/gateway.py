"""The voice websocket ("voice gateway") of the local voice server, on aiohttp.web.

One :class:`VoiceGatewayServer` listens on ``127.0.0.1`` and speaks Discord's voice gateway
protocol v8 (docs/architecture.md, "Protocol facts") to an unmodified discord.py client:

* HELLO (op 8) is the first frame of every connection;
* IDENTIFY (0) -> READY (2); SELECT_PROTOCOL (1) -> SESSION_DESCRIPTION (4);
* HEARTBEAT (3) -> HEARTBEAT_ACK (6) echoing ``t``; the client's ``seq_ack`` is tracked;
* RESUME (7) -> RESUMED (9), keeping the :class:`VoiceSession` (key, SSRC, sequence);
* SPEAKING (5), CLIENTS_CONNECT (11), CLIENT_CONNECT (12), CLIENT_DISCONNECT (13);
* DAVE: JSON 21/22/24 and binary 25/27/29/30 server->client framed ``>H seq | u8 op |
  payload``; binary 26/28 client->server framed ``u8 op | payload``; JSON 23/31.

Every JSON frame the server sends inside a session carries ``seq`` and binary frames carry
the same counter, so discord.py's ``seq_ack`` can be checked. What a session *means*
(who is in the call, DAVE, media) is decided by a :class:`GatewayHandler`, the emulator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

__all__ = (
    "GatewayClose",
    "GatewayEvent",
    "GatewayHandler",
    "Op",
    "VoiceGatewayConnection",
    "VoiceGatewayServer",
    "VoiceSession",
)

_log = logging.getLogger(__name__)

_BINARY_HEADER = struct.Struct(">HB")


class Op:
    """Voice gateway opcodes (the numbers discord.py's ``DiscordVoiceWebSocket`` uses)."""

    IDENTIFY = 0
    SELECT_PROTOCOL = 1
    READY = 2
    HEARTBEAT = 3
    SESSION_DESCRIPTION = 4
    SPEAKING = 5
    HEARTBEAT_ACK = 6
    RESUME = 7
    HELLO = 8
    RESUMED = 9
    CLIENTS_CONNECT = 11
    CLIENT_CONNECT = 12
    CLIENT_DISCONNECT = 13
    DAVE_PREPARE_TRANSITION = 21
    DAVE_EXECUTE_TRANSITION = 22
    DAVE_TRANSITION_READY = 23
    DAVE_PREPARE_EPOCH = 24
    MLS_EXTERNAL_SENDER = 25
    MLS_KEY_PACKAGE = 26
    MLS_PROPOSALS = 27
    MLS_COMMIT_WELCOME = 28
    MLS_ANNOUNCE_COMMIT_TRANSITION = 29
    MLS_WELCOME = 30
    MLS_INVALID_COMMIT_WELCOME = 31


#: JSON ops a client may send. Op 12 is accepted because discord.py has a sender for it.
_CLIENT_JSON_OPS = frozenset(
    {
        Op.IDENTIFY,
        Op.SELECT_PROTOCOL,
        Op.HEARTBEAT,
        Op.SPEAKING,
        Op.RESUME,
        Op.CLIENT_CONNECT,
        Op.DAVE_TRANSITION_READY,
        Op.MLS_INVALID_COMMIT_WELCOME,
    }
)
_CLIENT_BINARY_OPS = frozenset({Op.MLS_KEY_PACKAGE, Op.MLS_COMMIT_WELCOME})
_SERVER_BINARY_OPS = frozenset(
    {Op.MLS_EXTERNAL_SENDER, Op.MLS_PROPOSALS, Op.MLS_ANNOUNCE_COMMIT_TRANSITION, Op.MLS_WELCOME}
)


class GatewayClose(Exception):
    """Raised by a :class:`GatewayHandler` to close the connection with a voice close code.

    Parameters
    ----------
    code: :class:`int`
        The websocket close code (4001..4022 are Discord's voice codes).
    reason: :class:`str`
        Human-readable reason, sent in the close frame.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(eq=False)
class VoiceSession:
    """Server-side state of one voice session of the bot; survives a RESUME.

    Attributes
    ----------
    session_id, token: :class:`str`
        What VOICE_STATE_UPDATE / VOICE_SERVER_UPDATE gave the client; checked on IDENTIFY
        and RESUME.
    seq: :class:`int`
        The last sequence number the server put on a frame (shared by JSON and binary).
    seq_ack: :class:`int`
        The last ``seq_ack`` the client reported (HEARTBEAT or RESUME); -1 before any.
    """

    guild_id: int
    channel_id: int
    user_id: int
    session_id: str
    token: str
    ssrc: int
    secret_key: bytes
    dave_version: int
    mode: str | None = None
    identified: bool = False
    established: bool = False  # SESSION_DESCRIPTION sent
    closed: bool = False
    client_address: tuple[str, int] | None = None  # from SELECT_PROTOCOL
    seq: int = 0
    seq_ack: int = -1
    max_dave_version: int = 0
    connection: VoiceGatewayConnection | None = None
    resumes: int = 0

    def next_seq(self) -> int:
        """Advance and return the server sequence number (16 bits on binary frames)."""
        self.seq = (self.seq + 1) & 0xFFFF
        return self.seq


@dataclass(frozen=True)
class GatewayEvent:
    """One frame seen on the voice gateway, for tests to inspect.

    ``direction`` is ``"recv"`` (client -> server) or ``"send"``; ``data`` is the JSON
    ``d`` or the binary payload; ``seq`` is the server sequence number of sent frames.
    """

    time: float
    direction: str
    op: int
    data: Any
    seq: int | None = None
    binary: bool = False
    connection_id: int = 0


class GatewayHandler(Protocol):
    """What the emulator decides for the voice gateway. Every hook may raise :class:`GatewayClose`."""

    modes: tuple[str, ...]

    @property
    def udp_port(self) -> int:
        """The UDP port READY announces."""

    def authenticate(self, identify: dict[str, Any]) -> VoiceSession:
        """Find the session an IDENTIFY names (server_id, user_id, session_id, token)."""

    def authenticate_resume(self, resume: dict[str, Any]) -> VoiceSession:
        """Find the session a RESUME names (server_id, session_id, token)."""

    async def on_protocol_selected(self, session: VoiceSession) -> None:
        """SESSION_DESCRIPTION has been sent: the session is established."""

    async def on_resumed(self, session: VoiceSession) -> None:
        """RESUMED has been sent on a new connection of an existing session."""

    async def on_client_speaking(self, session: VoiceSession, data: dict[str, Any]) -> None:
        """The client sent SPEAKING (op 5)."""

    async def on_dave_message(self, session: VoiceSession, op: int, data: Any) -> None:
        """The client sent a DAVE message: JSON 23/31 (``data`` a dict) or binary 26/28 (bytes)."""

    async def on_connection_closed(self, session: VoiceSession | None, connection: VoiceGatewayConnection) -> None:
        """A websocket ended (for whatever reason)."""


class VoiceGatewayConnection:
    """One voice websocket from the client to the server.

    Parameters
    ----------
    server: :class:`VoiceGatewayServer`
        The server that accepted it.
    ws: :class:`aiohttp.web.WebSocketResponse`
        The prepared websocket.
    connection_id: :class:`int`
        Sequential id, for logs and :class:`GatewayEvent`.
    """

    def __init__(self, server: VoiceGatewayServer, ws: web.WebSocketResponse, connection_id: int) -> None:
        self.server = server
        self.ws = ws
        self.id = connection_id
        self.session: VoiceSession | None = None
        self._send_lock = asyncio.Lock()
        self.close_code: int | None = None
        #: Whether the server (rather than the client) started the closing handshake.
        self.closed_by_server = False

    def __repr__(self) -> str:
        return f"<VoiceGatewayConnection id={self.id} session={self.session and self.session.session_id}>"

    @property
    def closed(self) -> bool:
        """Whether the websocket is closing or closed."""
        return self.ws.closed or self.close_code is not None

    def _record(self, direction: str, op: int, data: Any, seq: int | None, binary: bool) -> None:
        self.server.record(GatewayEvent(time.monotonic(), direction, op, data, seq, binary, self.id))

    async def send_json(self, op: int, data: Any, *, seq: bool = True) -> None:
        """Send a JSON frame; inside a session it carries the next ``seq``.

        Frames to a closed websocket are dropped (logged): the client would not see them.
        """
        async with self._send_lock:
            if self.closed:
                _log.debug("drop op %s to closed connection %s", op, self.id)
                return
            message: dict[str, Any] = {"op": op, "d": data}
            number: int | None = None
            if seq and self.session is not None:
                number = self.session.next_seq()
                message["seq"] = number
            self._record("send", op, data, number, False)
            try:
                await self.ws.send_str(json.dumps(message))
            except (ConnectionError, RuntimeError) as exc:
                _log.debug("send op %s on connection %s failed: %s", op, self.id, exc)

    async def send_binary(self, op: int, payload: bytes) -> None:
        """Send a DAVE binary frame ``>H seq | u8 op | payload``."""
        if op not in _SERVER_BINARY_OPS:
            raise ValueError(f"op {op} is not a server->client binary DAVE opcode")
        if self.session is None:
            raise RuntimeError("binary DAVE frames are only sent inside an identified session")
        async with self._send_lock:
            if self.closed:
                _log.debug("drop binary op %s to closed connection %s", op, self.id)
                return
            number = self.session.next_seq()
            self._record("send", op, bytes(payload), number, True)
            try:
                await self.ws.send_bytes(_BINARY_HEADER.pack(number, op) + bytes(payload))
            except (ConnectionError, RuntimeError) as exc:
                _log.debug("send binary op %s on connection %s failed: %s", op, self.id, exc)

    async def close(self, code: int, reason: str = "") -> None:
        """Close the websocket with ``code`` (e.g. 4015: discord.py resumes; 4014: moved/kicked).

        Returns once the close frame is out; waiting for the client's answer is bounded by
        the server's close timeout (discord.py does not answer a close before it reacts).
        """
        if self.close_code is not None:
            return
        self.close_code = code
        self.closed_by_server = True
        self._record("send", -1, {"close": code, "reason": reason}, None, False)
        _log.debug("closing voice connection %s with %s (%s)", self.id, code, reason)
        try:
            await self.ws.close(code=code, message=reason.encode()[:120])
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            _log.debug("closing connection %s: %s", self.id, exc)

    async def run(self) -> None:
        """Serve the connection until it closes: HELLO, then one frame at a time."""
        await self.send_json(Op.HELLO, {"heartbeat_interval": self.server.heartbeat_interval_ms, "v": 8}, seq=False)
        try:
            async for msg in self.ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await self._on_binary(msg.data)
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    _log.debug("voice connection %s error: %s", self.id, self.ws.exception())
                    break
                if self.close_code is not None:
                    break
        except GatewayClose as exc:
            await self.close(exc.code, exc.reason)
        finally:
            if self.close_code is None:
                self.close_code = self.ws.close_code or 1006
            self._record("recv", -1, {"closed": self.close_code}, None, False)

    async def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
            op = int(message["op"])
            data = message.get("d")
        except (ValueError, KeyError, TypeError):
            raise GatewayClose(4002, "Failed to decode payload") from None
        self._record("recv", op, data, None, False)
        if op not in _CLIENT_JSON_OPS:
            raise GatewayClose(4001, f"Unknown opcode {op}")
        if op == Op.HEARTBEAT:
            await self._on_heartbeat(data)
            return
        if op == Op.IDENTIFY:
            await self._on_identify(data)
            return
        if op == Op.RESUME:
            await self._on_resume(data)
            return
        session = self.session
        if session is None:
            raise GatewayClose(4003, "Not authenticated")
        handler = self.server.handler
        if op == Op.SELECT_PROTOCOL:
            await self._on_select_protocol(session, data)
        elif op == Op.SPEAKING:
            await handler.on_client_speaking(session, data if isinstance(data, dict) else {})
        elif op in (Op.DAVE_TRANSITION_READY, Op.MLS_INVALID_COMMIT_WELCOME):
            if not isinstance(data, dict):
                raise GatewayClose(4020, f"op {op} needs an object")
            await handler.on_dave_message(session, op, data)
        # op 12 from a client (video announce) is accepted and ignored: no video here.

    async def _on_binary(self, frame: bytes) -> None:
        if not frame:
            raise GatewayClose(4002, "Empty binary frame")
        op, payload = frame[0], bytes(frame[1:])
        self._record("recv", op, payload, None, True)
        if op not in _CLIENT_BINARY_OPS:
            raise GatewayClose(4001, f"Unknown binary opcode {op}")
        if self.session is None:
            raise GatewayClose(4003, "Not authenticated")
        await self.server.handler.on_dave_message(self.session, op, payload)

    async def _on_heartbeat(self, data: Any) -> None:
        # v8 sends {"t": ms, "seq_ack": n}; older clients sent the bare nonce.
        if isinstance(data, dict):
            nonce = data.get("t")
            if self.session is not None and isinstance(data.get("seq_ack"), int):
                self.session.seq_ack = data["seq_ack"]
        else:
            nonce = data
        await self.send_json(Op.HEARTBEAT_ACK, {"t": nonce}, seq=False)

    async def _on_identify(self, data: Any) -> None:
        if self.session is not None:
            raise GatewayClose(4005, "Already authenticated")
        if not isinstance(data, dict):
            raise GatewayClose(4002, "IDENTIFY needs an object")
        session = self.server.handler.authenticate(data)
        self._adopt(session)
        session.identified = True
        session.max_dave_version = int(data.get("max_dave_protocol_version") or 0)
        await self.send_json(
            Op.READY,
            {
                "ssrc": session.ssrc,
                "ip": self.server.host,
                "port": self.server.handler.udp_port,
                "modes": list(self.server.handler.modes),
                "heartbeat_interval": self.server.heartbeat_interval_ms,
                "experiments": [],
            },
        )

    async def _on_resume(self, data: Any) -> None:
        if self.session is not None:
            raise GatewayClose(4005, "Already authenticated")
        if not isinstance(data, dict):
            raise GatewayClose(4002, "RESUME needs an object")
        session = self.server.handler.authenticate_resume(data)
        if isinstance(data.get("seq_ack"), int):
            session.seq_ack = data["seq_ack"]
        self._adopt(session)
        session.resumes += 1
        await self.send_json(Op.RESUMED, None)
        await self.server.handler.on_resumed(session)

    def _adopt(self, session: VoiceSession) -> None:
        previous = session.connection
        session.connection = self
        self.session = session
        if previous is not None and previous is not self and not previous.closed:
            # A session has one live websocket; the newer one wins (as on Discord).
            asyncio.get_running_loop().create_task(previous.close(4006, "Session replaced"))

    async def _on_select_protocol(self, session: VoiceSession, data: Any) -> None:
        try:
            if data["protocol"] != "udp":
                raise GatewayClose(4012, f"Unknown protocol {data['protocol']!r}")
            inner = data["data"]
            mode = inner["mode"]
            address = (str(inner["address"]), int(inner["port"]))
        except (KeyError, TypeError, ValueError):
            raise GatewayClose(4020, "SELECT_PROTOCOL is missing protocol/data/address/port/mode") from None
        if mode not in self.server.handler.modes:
            raise GatewayClose(4016, f"Unknown encryption mode {mode!r}")
        session.mode = mode
        session.client_address = address
        await self.send_session_description()
        session.established = True
        await self.server.handler.on_protocol_selected(session)

    async def send_session_description(self) -> None:
        """Send SESSION_DESCRIPTION (op 4) with the session's current key and DAVE version."""
        session = self.session
        if session is None or session.mode is None:
            raise RuntimeError("no protocol selected on this connection yet")
        await self.send_json(
            Op.SESSION_DESCRIPTION,
            {
                "mode": session.mode,
                "secret_key": list(session.secret_key),
                "dave_protocol_version": session.dave_version,
                "audio_codec": "opus",
                "video_codec": None,
                "media_session_id": session.session_id,
            },
        )


class VoiceGatewayServer:
    """The voice websocket server (aiohttp.web) on ``host`` with a random free port.

    Parameters
    ----------
    handler: :class:`GatewayHandler`
        Decides sessions, DAVE and media (the emulator).
    host: :class:`str`
        Address to bind; only loopback makes sense for tests.
    heartbeat_interval_ms: :class:`float`
        Sent in HELLO and READY (discord.py heartbeats every ``min(interval, 5 s)``).
    max_events: :class:`int`
        How many :class:`GatewayEvent` records to keep (oldest dropped).
    """

    def __init__(
        self,
        handler: GatewayHandler,
        *,
        host: str = "127.0.0.1",
        heartbeat_interval_ms: float = 13750.0,
        max_events: int = 20000,
    ) -> None:
        if heartbeat_interval_ms <= 0:
            raise ValueError(f"heartbeat_interval_ms must be positive, got {heartbeat_interval_ms!r}")
        self.handler = handler
        self.host = host
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.port: int = 0
        self.events: list[GatewayEvent] = []
        self._max_events = max_events
        self._event_waiters: list[asyncio.Event] = []
        self.connections: list[VoiceGatewayConnection] = []
        self._next_id = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def endpoint(self) -> str:
        """The ``host:port`` VOICE_SERVER_UPDATE names (discord.py adds ``wss://`` and ``/?v=8``)."""
        return f"{self.host}:{self.port}"

    def record(self, event: GatewayEvent) -> None:
        """Keep ``event`` (bounded) and wake :meth:`wait_for`."""
        self.events.append(event)
        if len(self.events) > self._max_events:
            del self.events[: len(self.events) - self._max_events]
        for waiter in self._event_waiters:
            waiter.set()

    async def wait_for(self, direction: str, op: int, *, after: int = 0, timeout: float = 10.0) -> GatewayEvent:
        """Wait until a frame with ``op`` in ``direction`` is recorded at index >= ``after``.

        Raises
        ------
        asyncio.TimeoutError
            Not seen within ``timeout`` seconds.
        """
        waiter = asyncio.Event()
        self._event_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    # Events may be trimmed; ``after`` counts from the start of what is kept.
                    for event in self.events[after:]:
                        if event.direction == direction and event.op == op:
                            return event
                    waiter.clear()
                    await waiter.wait()
        finally:
            self._event_waiters.remove(waiter)

    async def start(self) -> None:
        """Bind and serve."""
        app = web.Application()
        app.router.add_get("/", self._handle)
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        # aiohttp keeps the asyncio.Server as an AbstractServer, which does not declare sockets.
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        self.port = sockets[0].getsockname()[1]
        _log.debug("voice gateway listening on ws://%s", self.endpoint)

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        # Short close timeout: discord.py reads with autoclose=False and answers a close frame
        # only when it gets round to it; the server must not hang on that.
        ws = web.WebSocketResponse(timeout=2.0, autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self._next_id += 1
        connection = VoiceGatewayConnection(self, ws, self._next_id)
        self.connections.append(connection)
        _log.debug("voice connection %s opened (query %s)", connection.id, request.query_string)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await connection.run()
        except Exception:
            _log.exception("voice connection %s failed", connection.id)
            await connection.close(4000, "Internal emulator error")
        finally:
            if task is not None:
                self._tasks.discard(task)
            try:
                await self.handler.on_connection_closed(connection.session, connection)
            except Exception:
                _log.exception("on_connection_closed failed")
            if not ws.closed:
                await connection.close(connection.close_code or 1000)
            self.connections.remove(connection)
        return ws

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        for connection in list(self.connections):
            await connection.close(1001, "Emulator shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
