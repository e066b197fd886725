"""Which user an SSRC belongs to, kept up to date from the voice gateway's messages.

Discord tells a receiver who owns an audio SSRC through SPEAKING (op 5): at connection start
for members with a speaking state, and when a member starts speaking (possibly after its first
packets). CLIENTS_CONNECT (op 11) lists user ids only; CLIENT_CONNECT (op 12) comes for members
with video and may carry an ``audio_ssrc`` too; CLIENT_DISCONNECT (op 13) says who left. The map is written from the event loop and read from discord.py's socket
thread, so every access takes a lock, and a ``version`` counter lets the receiver notice
changes (to retry packets that waited for their owner) without comparing dicts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ("SSRCMap",)

_log = logging.getLogger(__name__)

#: Bound on mappings kept: a channel holds at most a few hundred members, each with an audio
#: SSRC and a few video ones; anything beyond this is a hostile or broken server.
MAX_ENTRIES = 4096


class SSRCMap:
    """Thread-safe SSRC -> user id map with video SSRCs kept apart.

    Attributes
    ----------
    version: :class:`int`
        Incremented on every change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._audio: dict[int, int] = {}
        self._video: dict[int, int] = {}
        # Users in the call, in order of arrival (a dict keeps it).
        self._connected: dict[int, None] = {}
        self.version = 0

    def __repr__(self) -> str:
        return f"<SSRCMap audio={len(self._audio)} video={len(self._video)} version={self.version}>"

    def user_for(self, ssrc: int) -> int | None:
        """The user id owning an audio SSRC, or ``None`` if not (yet) known."""
        return self._audio.get(ssrc)  # a dict read is atomic under the GIL

    def ssrc_for(self, user_id: int) -> int | None:
        """The audio SSRC of a user, or ``None``."""
        with self._lock:
            for ssrc, uid in self._audio.items():
                if uid == user_id:
                    return ssrc
        return None

    def unmapped_users(self) -> list[int]:
        """Users in the call (op 11) with no known audio SSRC, newest first.

        The candidates for an SSRC whose owner no SPEAKING named; the newest are the likeliest
        (a member who just joined speaks before Discord's op 5 reaches the bot).
        """
        with self._lock:
            mapped = set(self._audio.values())
            return [u for u in reversed(self._connected) if u not in mapped]

    def is_video(self, ssrc: int) -> bool:
        """Whether the SSRC belongs to a video (or screen share) stream."""
        return ssrc in self._video

    @property
    def connected_users(self) -> frozenset[int]:
        """User ids the server said are in the call (op 11/12, minus op 13)."""
        return frozenset(self._connected)

    def set_audio(self, ssrc: int, user_id: int) -> None:
        """Record that ``ssrc`` carries ``user_id``'s audio (replacing an older owner)."""
        if not (0 < ssrc <= 0xFFFFFFFF):
            return  # 0 means "no stream" in op 12
        with self._lock:
            if self._audio.get(ssrc) == user_id:
                return
            if ssrc not in self._audio and len(self._audio) >= MAX_ENTRIES:
                _log.warning("SSRC map full (%d entries); ignoring SSRC %d", MAX_ENTRIES, ssrc)
                return
            # A user has one audio SSRC at a time: forget the old one so a reused number
            # cannot attribute someone else's audio to them.
            for old in [s for s, u in self._audio.items() if u == user_id and s != ssrc]:
                del self._audio[old]
            self._audio[ssrc] = user_id
            self._video.pop(ssrc, None)
            self._connected.setdefault(user_id)
            self.version += 1

    def set_video(self, ssrc: int, user_id: int) -> None:
        """Record a video SSRC so its packets are never fed to an Opus decoder."""
        if not (0 < ssrc <= 0xFFFFFFFF) or ssrc in self._audio:
            return
        with self._lock:
            if len(self._video) < MAX_ENTRIES:
                self._video[ssrc] = user_id
                self.version += 1

    def remove_user(self, user_id: int) -> list[int]:
        """Forget every SSRC of a user who left; returns the audio SSRCs removed."""
        with self._lock:
            gone = [s for s, u in self._audio.items() if u == user_id]
            for s in gone:
                del self._audio[s]
            for s in [s for s, u in self._video.items() if u == user_id]:
                del self._video[s]
            self._connected.pop(user_id, None)
            self.version += 1
        return gone

    def clear(self) -> None:
        """Forget everything (a new voice session)."""
        with self._lock:
            self._audio.clear()
            self._video.clear()
            self._connected.clear()
            self.version += 1

    def update_from_gateway(self, op: int, data: Mapping[str, Any] | None) -> None:
        """Apply one voice gateway message (ops 5, 11, 12, 13; others are ignored).

        Malformed fields are ignored with a debug log: the gateway is trusted but a bad
        field must not break listening.
        """
        if not isinstance(data, Mapping):
            return
        try:
            if op == 5:
                self.set_audio(int(data["ssrc"]), int(data["user_id"]))
            elif op == 11:
                with self._lock:
                    for u in data.get("user_ids", ()):
                        uid = int(u)
                        self._connected.pop(uid, None)
                        self._connected[uid] = None
                    self.version += 1
            elif op == 12:
                user_id = int(data["user_id"])
                audio = int(data.get("audio_ssrc") or 0)
                if audio:
                    self.set_audio(audio, user_id)
                video = int(data.get("video_ssrc") or 0)
                if video:
                    self.set_video(video, user_id)
                for stream in data.get("streams") or ():
                    for key in ("ssrc", "rtx_ssrc"):
                        if stream.get(key):
                            self.set_video(int(stream[key]), user_id)
                with self._lock:
                    self._connected.setdefault(user_id)
            elif op == 13:
                self.remove_user(int(data["user_id"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            _log.debug("ignoring malformed voice gateway op %s: %r", op, data)
