"""DAVE (end-to-end encryption) on receive, sans-I/O: recognising frames and opening them.

A DAVE frame ends with ``supplemental size (1 byte) | FA FA``; the supplemental section
(tag, nonce, unencrypted ranges, size, magic) is ``supplemental size`` bytes long. Opus
silence frames are sent in the clear even under DAVE. :class:`DaveReceiver` decrypts with
the session discord.py keeps (davey) and decides what waits (key or owner not there yet),
what is dropped for good (a dead epoch), who owns an SSRC no SPEAKING named, and when the
bot's DAVE state needs a re-key.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Final

import davey

from .opus import SILENCE_FRAME
from .ssrc import SSRCMap
from .stats import DropReason, ListenStats

__all__ = (
    "FAILURE_LIMIT",
    "MAGIC",
    "DaveReceiver",
    "SenderState",
    "is_dave_frame",
    "is_silence",
)

_log = logging.getLogger(__name__)

MAGIC: Final = b"\xfa\xfa"
_MIN_SUPPLEMENTAL: Final = 8 + 1 + 1 + 2  # truncated tag, 1-byte nonce, size byte, magic


def is_dave_frame(payload: bytes) -> bool:
    """Whether ``payload`` is shaped like a DAVE frame (magic marker and a sane size byte)."""
    n = len(payload)
    if n < _MIN_SUPPLEMENTAL or payload[-2:] != MAGIC:
        return False
    size = payload[-3]
    return _MIN_SUPPLEMENTAL <= size <= n


def is_silence(payload: bytes) -> bool:
    """Whether ``payload`` is the 3-byte Opus silence frame."""
    return payload == SILENCE_FRAME


# -- DAVE decryption on receive ------------------------------------------------------------

#: ValueError texts from davey meaning "the key is not here yet" (worth holding and retrying).
#: "NoValidCryptorFound" is not one of them: the bot holds keys for the sender, but none of
#: the frame's epoch. libdave clients switch keys only at op 22, after the bot reported ready
#: for the new epoch, so such a frame was sealed under an epoch the bot no longer (or never)
#: holds, and no later message brings that key back.
RETRYABLE: Final = ("NoDecryptorForUser", "NoDecryptor", "MissingKey")
#: Consecutive undecryptable frames of one sender after which the bot's DAVE state is taken
#: to be broken and a recovery is asked for (discord.js re-initialises at 36).
FAILURE_LIMIT: Final = 36
#: Seconds before the same sender may ask for another recovery (one re-key takes a round trip
#: through the voice server and every member).
RECOVERY_COOLDOWN: Final = 10.0
#: Seconds between two attempts to find the owner of an unmapped SSRC by trial decryption,
#: and how many candidate users one attempt tries at most.
INFER_INTERVAL: Final = 0.1
INFER_CANDIDATES: Final = 64
_AUDIO: Final = davey.MediaType.audio


@dataclass(slots=True)
class SenderState:
    """DAVE bookkeeping of one SSRC: failures in a row, the last recovery, the last owner search."""

    failures: int = 0
    recovery_at: float = float("-inf")
    infer_at: float = float("-inf")


class DaveReceiver:
    """Opens the DAVE frames of one connection, in order, and says what to do with the rest.

    Parameters
    ----------
    ssrc_map: :class:`~discord.ext.listening.ssrc.SSRCMap`
        Who owns which SSRC (an owner found by key is recorded there).
    stats: :class:`~discord.ext.listening.stats.ListenStats`
        Where ``ssrcs_inferred`` and ``dave_recoveries`` are counted.
    """

    def __init__(self, ssrc_map: SSRCMap, stats: ListenStats) -> None:
        self._map = ssrc_map
        self._stats = stats
        self.session: Any = None
        self.e2ee = False
        self._recoveries: list[int] = []
        self._lock = threading.Lock()

    def set_session(self, session: Any, protocol_version: int) -> None:
        """The connection's ``davey.DaveSession`` (or ``None``) and DAVE protocol version."""
        self.session = session
        self.e2ee = session is not None and bool(protocol_version)

    def needs_opening(self, payload: bytes) -> bool:
        """Whether a payload must go through DAVE: a DAVE frame, or clear audio under DAVE
        (allowed only while davey's passthrough is on during a transition, which it knows)."""
        return is_dave_frame(payload) or (self.e2ee and not is_silence(payload))

    def open(
        self, state: SenderState, ssrc: int, user_id: int | None, payload: bytes, now: float, may_wait: bool
    ) -> tuple[int, bytes] | DropReason | None:
        """Decrypt one frame of ``ssrc`` (owned by ``user_id`` if known).

        Returns
        -------
        ``(user_id, opus)`` when it opened; ``None`` when it may still open later and may
        wait (owner or key on its way); the :class:`~discord.ext.listening.stats.DropReason`
        to count it under when it never will.
        """
        session = self.session
        if user_id is None and session is not None and is_dave_frame(payload):
            found = self._infer_owner(state, ssrc, session, payload, now)
            if found is not None:
                return found
        if user_id is None or session is None:
            if may_wait:
                return None  # the SPEAKING (op 5) or the MLS welcome is on its way
            return DropReason.unknown_ssrc if user_id is None else DropReason.undecryptable
        try:
            opus = session.decrypt(user_id, _AUDIO, payload)
        except ValueError as exc:
            text = str(exc)
            if may_wait and any(tag in text for tag in RETRYABLE):
                return None  # the key for this user arrives with the next commit/welcome
            _log.debug("DAVE frame of user %s on SSRC %d not decryptable: %s", user_id, ssrc, text)
            if "Unencrypted" in text:
                return DropReason.unencrypted
            self._failed(state, user_id, now)
            return DropReason.undecryptable
        state.failures = 0
        return user_id, opus

    def _infer_owner(
        self, state: SenderState, ssrc: int, session: Any, frame: bytes, now: float
    ) -> tuple[int, bytes] | None:
        """Find whose frame this is by trying the keys of members with no known SSRC.

        Discord names an SSRC's owner only in SPEAKING (op 5), which may come after the first
        packets or, for a member who was speaking before the bot connected, not at all. A
        DAVE frame authenticates under its sender's key only (AES-GCM), so the one member
        whose key opens it is its owner: then the SSRC is mapped and its audio flows.
        Bounded: one attempt per :data:`INFER_INTERVAL` per SSRC, :data:`INFER_CANDIDATES`
        users at most; a wrong key fails without touching the real sender's state.
        """
        if now - state.infer_at < INFER_INTERVAL:
            return None
        state.infer_at = now
        for user_id in self._map.unmapped_users()[:INFER_CANDIDATES]:
            try:
                opus = session.decrypt(user_id, _AUDIO, frame)
            except ValueError:
                continue
            self._map.set_audio(ssrc, user_id)
            self._stats.ssrcs_inferred += 1
            _log.info("SSRC %d belongs to user %s (its DAVE key opened the frame; no SPEAKING named it)", ssrc, user_id)
            return user_id, opus
        return None

    def _failed(self, state: SenderState, user_id: int, now: float) -> None:
        """One more undecryptable frame of ``user_id``; after too many in a row, ask for a re-key."""
        state.failures += 1
        if state.failures < FAILURE_LIMIT or now - state.recovery_at < RECOVERY_COOLDOWN:
            return
        state.failures = 0
        state.recovery_at = now
        self._stats.dave_recoveries += 1
        with self._lock:
            self._recoveries.append(user_id)
        _log.warning(
            "%d DAVE frames of user %s in a row could not be decrypted: asking for a new DAVE session",
            FAILURE_LIMIT,
            user_id,
        )

    def take_recoveries(self) -> list[int]:
        """Users whose frames kept failing since the last call: the DAVE state needs a re-key.

        The caller (which owns the voice connection) re-initialises the DAVE session: the
        voice server then re-adds the bot to the group with fresh keys.
        """
        if not self._recoveries:  # the common case, without the lock
            return []
        with self._lock:
            out, self._recoveries = self._recoveries, []
        return out
