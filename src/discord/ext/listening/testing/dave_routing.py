"""The emulator's DAVE routing: each call's group server, its in-process members and the bot.

Every call with DAVE participants has a :class:`.dave_server.DaveGroupServer`. Simulated
members are :class:`.dave_member.LocalDaveMember` objects routed in-process
(:func:`.dave_member.deliver`); what is addressed to the bot goes out on its websocket, and
what the bot sends comes in through :meth:`DaveRouting.from_bot`. Transitions that members
never confirm are forced after :data:`.dave_server.TRANSITION_TIMEOUT`, as Discord does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .calls import Call, Hooks
from .dave_member import LocalDaveMember, deliver
from .dave_messages import DaveBinaryMessage, DaveJsonMessage, DaveMessage, DaveProtocolError, message_from_frame
from .dave_server import TRANSITION_TIMEOUT, DaveGroupServer
from .gateway import VoiceSession

if TYPE_CHECKING:
    from .members import SimulatedMember
    from .settings import EmulatorSettings

__all__ = ("DaveRouting",)

_log = logging.getLogger(__name__)


class DaveRouting:
    """DAVE between the group servers of the calls, the simulated members and the bot.

    Parameters
    ----------
    settings: :class:`.settings.EmulatorSettings`
        ``bot_user_id``, and ``require_dave``: group servers refuse participants without
        DAVE (close code 4017).
    members_in: Callable[[int], list[SimulatedMember]]
        The simulated members in a channel now.
    hooks: :class:`.calls.Hooks`
        Runs the transition timeouts as background tasks; signals state changes.
    """

    def __init__(
        self,
        *,
        settings: EmulatorSettings,
        members_in: Callable[[int], list[SimulatedMember]],
        hooks: Hooks,
    ) -> None:
        self.bot_user_id = settings.bot_user_id
        self.require_dave = settings.require_dave
        self._members_in = members_in
        self._hooks = hooks
        #: The DAVE messages routed, ``(direction, user_id, op)``; for tests and logs.
        self.log: list[tuple[str, int, int]] = []
        #: DAVE messages the group server or a simulated member rejected, with the error.
        self.errors: list[tuple[DaveMessage, Exception]] = []
        #: Seconds the DAVE messages to the bot spend on their way (a fault, see
        #: ``VoiceServerEmulator.delay_dave_to_bot``); they still arrive in order.
        self.bot_delay = 0.0
        self._bot_chain: asyncio.Task[Any] | None = None

    def group(self, call: Call) -> DaveGroupServer:
        """The call's group server (created on first use)."""
        if call.dave is None:
            call.dave = DaveGroupServer(call.channel_id, require_e2ee=self.require_dave)
        return call.dave

    def _local_members(self, call: Call) -> dict[int, LocalDaveMember]:
        return {m.user_id: m.dave for m in self._members_in(call.channel_id) if m.dave is not None}

    async def route(self, call: Call, messages: list[DaveMessage]) -> None:
        """Run ``messages`` through the in-process members; send the bot its share."""
        group = self.group(call)
        trace: list[DaveMessage] = []

        def on_error(message: DaveMessage, exc: Exception) -> None:
            # A member's davey session refusing something ends its websocket in discord.py;
            # here it must not take the emulator down, and the other messages still flow.
            self.errors.append((message, exc))
            _log.warning("DAVE op %s for/from %s failed: %s", message.op, message.user_id, exc)

        try:
            external = deliver(group, self._local_members(call), messages, trace=trace, on_error=on_error)
        except RuntimeError:  # a protocol loop: the bound in deliver() fired
            _log.exception("DAVE routing ran away in channel %s", call.channel_id)
            external = []
        for message in trace:
            self.log.append(("client" if message.from_client else "server", message.user_id, message.op))
        for message in external:
            await self._send_to_bot(call, message)
        self._arm_timeouts(call)
        self._hooks.notify()

    async def _send_to_bot(self, call: Call, message: DaveMessage) -> None:
        chain = self._bot_chain
        if self.bot_delay > 0 or (chain is not None and not chain.done()):
            # Behind the ones still on their way: a websocket keeps its order.
            due = asyncio.get_running_loop().time() + self.bot_delay
            self._bot_chain = self._hooks.spawn(self._send_later(chain, due, call, message), "dave-to-bot")
            return
        await self._deliver_to_bot(call, message)

    async def _send_later(self, before: asyncio.Task[Any] | None, due: float, call: Call, message: DaveMessage) -> None:
        if before is not None:
            await asyncio.wait([before])
        delay = due - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        await self._deliver_to_bot(call, message)

    async def _deliver_to_bot(self, call: Call, message: DaveMessage) -> None:
        session = call.session
        if message.user_id != self.bot_user_id or session is None or session.connection is None:
            _log.debug("DAVE op %s for %s has no live connection: dropped", message.op, message.user_id)
            return
        if isinstance(message, DaveBinaryMessage):
            await session.connection.send_binary(message.op, message.payload)
        elif isinstance(message, DaveJsonMessage):
            await session.connection.send_json(message.op, dict(message.data))

    def _arm_timeouts(self, call: Call) -> None:
        """Force transitions that members never confirm, as Discord does after a timeout."""
        group = call.dave
        if group is None:
            return
        armed = call.armed_transitions
        for transition_id in group.pending_transitions:
            if transition_id in armed:
                continue
            armed.add(transition_id)

            async def fire(tid: int = transition_id) -> None:
                await asyncio.sleep(TRANSITION_TIMEOUT)
                armed.discard(tid)
                if tid in group.pending_transitions and call.dave is group:
                    await self.route(call, group.execute_transition(tid))

            self._hooks.spawn(fire(), f"dave-transition-{transition_id}")

    # -- who joins and leaves ------------------------------------------------------------------

    async def member_join(self, call: Call, member: SimulatedMember) -> None:
        """A simulated member joined: it becomes a group participant with a fresh DAVE session."""
        group = self.group(call)
        member.dave = LocalDaveMember(member.user_id, call.channel_id)
        out = group.add_participant(member.user_id, member.dave.max_protocol_version)
        out = list(out) + member.dave.session_description(group.protocol_version)
        await self.route(call, out)

    async def member_leave(self, call: Call, member: SimulatedMember) -> None:
        """A simulated member left: it is removed from the group."""
        group = self.group(call)
        local = member.dave
        member.dave = None
        if local is not None and member.user_id in group.participants:
            await self.route(call, group.remove_participant(member.user_id))

    async def bot_join(self, call: Call, session: VoiceSession) -> None:
        """The bot's session chose its protocol: it joins the group (or raises E2EERequired)."""
        group = self.group(call)
        if self.bot_user_id in group.participants:  # a previous session that never said goodbye
            await self.route(call, group.remove_participant(self.bot_user_id))
        await self.route(call, group.add_participant(self.bot_user_id, session.max_dave_version))

    async def bot_leave(self, call: Call) -> None:
        """The bot's session ended: it leaves the group."""
        group = call.dave
        if group is not None and self.bot_user_id in group.participants:
            await self.route(call, group.remove_participant(self.bot_user_id))

    # discord.py answers SESSION_DESCRIPTION with a fresh key package (op 26); the group
    # server treats that as the member resetting its MLS state and re-adds it: a new key or
    # a resumed session needs nothing from the routing until that key package arrives.

    async def from_bot(self, call: Call, op: int, data: Any) -> None:
        """A DAVE message from the bot (JSON ``data`` or binary bytes)."""
        group = self.group(call)
        self.log.append(("client", self.bot_user_id, op))
        try:
            message: DaveMessage
            if isinstance(data, (bytes, bytearray)):
                message = DaveBinaryMessage(self.bot_user_id, op, bytes(data))
            else:
                message = message_from_frame(self.bot_user_id, {"op": op, "d": data})
            out = group.handle(message)
        except DaveProtocolError as exc:
            # Discord ignores (or closes on) bad DAVE input; the emulator logs and goes on.
            _log.warning("DAVE op %s from the bot rejected: %s", op, exc)
            return
        await self.route(call, out)

    def decrypt_from_bot(self, session: VoiceSession, frame: bytes) -> tuple[bytes, str | None]:
        """The bot's DAVE frame opened by a member of its call, or the frame and why not."""
        error = "no member in the call can decrypt (no ready DAVE session)"
        for member in self._members_in(session.channel_id):
            if member.dave is None or member.dave.session is None:
                continue
            try:
                return bytes(member.dave.decrypt(self.bot_user_id, frame)), None
            except ValueError as exc:
                error = f"{member.name}: {exc}"
        return frame, error

    def settled(self, call: Call, bot_session: Any) -> bool:
        """Whether ``call``'s group settled with the bot (its davey session ``bot_session``) in it."""
        group = call.dave
        if group is not None and set(group.participants) == {self.bot_user_id} and not group.pending_transitions:
            # Alone in the call there is no group to join (DAVE's sole-member state): the bot
            # holds a key package and sends unencrypted until somebody joins.
            return group.has_key_package(self.bot_user_id)
        if bot_session is None or not bot_session.ready:
            return False
        if group is None or not group.established or group.pending_transitions or group.pending_members:
            return False
        if self.bot_user_id not in group.members or bot_session.epoch != group.epoch:
            return False
        for member in self._members_in(call.channel_id):
            if member.dave is None or not member.dave.ready or member.dave.epoch != group.epoch:
                return False
        return True
