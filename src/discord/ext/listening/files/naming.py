"""File names for recordings: safe on every OS, never outside the output directory.

:func:`render_filename` turns a template such as ``"{start:%Y%m%d-%H%M%S}-{user_name}-{user_id}"``
into one safe file name (no separators, no reserved Windows names, at most 255 bytes) and
:func:`unique_path` picks a name nobody uses yet.
"""

from __future__ import annotations

import errno as errno_codes
import os
import string
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Union

__all__ = ("StrPath", "render_filename", "sanitize_filename", "unique_path")

#: What the file classes take as a path.
StrPath = Union[str, "os.PathLike[str]"]


# Characters no file system of the three big OSes accepts in a name (Windows is the strict one).
_ILLEGAL_CHARS: Final = frozenset('/\\:*?"<>|')
# Format characters that joining emoji sequences and some scripts need; every other Cf
# character (bidi overrides that can fake an extension, zero-width spaces...) is removed.
_KEPT_FORMAT_CHARS: Final = frozenset("\u200c\u200d")
_RESERVED_NAMES: Final = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in (*"0123456789", "\u00b9", "\u00b2", "\u00b3")]
)
_MAX_NAME_BYTES: Final = 255


def _truncate_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    # errors="ignore" drops the partial character a byte cut can leave at the end
    return data[:max_bytes].decode("utf-8", errors="ignore")


def sanitize_filename(name: str, *, max_bytes: int = _MAX_NAME_BYTES, replacement: str = "_") -> str:
    """Make ``name`` a single safe file name component.

    Path separators and characters Windows forbids (``/ \\ : * ? " < > |``), control and
    invisible format characters are replaced; leading dots and spaces (hidden files, ``.`` and
    ``..``) and trailing dots and spaces (Windows drops them) are stripped; reserved Windows
    device names (``CON``, ``NUL``, ``COM1``... also with an extension) get a prefix; the result
    is cut to ``max_bytes`` of UTF-8 keeping its extension. An empty result becomes
    ``"unknown"``. The result can never name a parent directory or a path below another one.

    Parameters
    ----------
    name: :class:`str`
        Any text (a display name, a template's output...).
    max_bytes: :class:`int`
        Longest result in UTF-8 bytes (255 is the limit of ext4, NTFS, APFS, btrfs...).
    replacement: :class:`str`
        What replaces each forbidden character. Must itself be safe.
    """
    if max_bytes < 16:
        raise ValueError("max_bytes must leave room for a name (>= 16)")
    if not replacement or any(c in _ILLEGAL_CHARS or unicodedata.category(c)[0] == "C" for c in replacement):
        raise ValueError(f"unsafe replacement {replacement!r}")
    cleaned = _clean_chars(name, replacement)
    stem, dot, suffix = cleaned.rpartition(".")
    if not dot or not stem or len(suffix) > 16 or not suffix.isalnum():
        stem, suffix = cleaned, ""
    else:
        suffix = "." + suffix
    return _assemble(stem, suffix, max_bytes, replacement)


def _clean_chars(name: str, replacement: str) -> str:
    text = unicodedata.normalize("NFC", str(name))
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in _ILLEGAL_CHARS or category in ("Cc", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(replacement)
        elif category == "Cf" and ch not in _KEPT_FORMAT_CHARS:
            continue
        else:
            out.append(ch)
    return "".join(out).strip(" .")


def _assemble(stem: str, suffix: str, max_bytes: int, replacement: str) -> str:
    """Join a cleaned stem and suffix: strip, avoid device names, fit ``max_bytes``."""
    stem = stem.strip(" .")
    if not stem.replace(replacement, "").strip(" ."):
        stem = "unknown"
    if (stem + suffix).split(".")[0].rstrip(" ").upper() in _RESERVED_NAMES:
        stem = replacement + stem
    stem = _truncate_utf8(stem, max_bytes - len(suffix.encode("utf-8"))).rstrip(" .") or "unknown"
    return stem + suffix


class _TemplateFormatter(string.Formatter):
    # Only the fields given to render_filename exist; "{user_id.__class__}"-style attribute
    # walks are refused so a template cannot reach into objects.
    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if "." in field_name or "[" in field_name:
            raise ValueError(f"attribute or index access is not allowed in file name templates: {{{field_name}}}")
        return super().get_field(field_name, args, kwargs)


_FORMATTER: Final = _TemplateFormatter()


def render_filename(
    template: str,
    *,
    user_id: int | None,
    start: datetime,
    ext: str,
    user_name: str | None = None,
    display_name: str | None = None,
    ssrc: int | None = None,
    max_bytes: int = _MAX_NAME_BYTES,
    **fields: Any,
) -> str:
    """Render a file name template into one safe file name.

    Fields: ``{user_id}``, ``{user_name}``, ``{display_name}`` (falls back to the user name),
    ``{start}`` (a :class:`~datetime.datetime`, so ``{start:%Y%m%d-%H%M%S}`` works), ``{ssrc}``,
    ``{ext}`` (without the dot) and any extra keyword given. Missing values render as
    ``unknown``. The extension is appended unless the template already ends with it.

    The whole result goes through :func:`sanitize_filename`: whatever a member puts in their
    name, and whatever the template contains (a ``/`` included), the result is a single name
    inside the output directory.

    Parameters
    ----------
    template: :class:`str`
        A :meth:`str.format` template.
    user_id: Optional[:class:`int`]
        The speaker's id.
    start: :class:`datetime.datetime`
        When the recording started.
    ext: :class:`str`
        The extension, with or without the dot (``"wav"``, ``".flac"``).
    user_name, display_name: Optional[:class:`str`]
        The speaker's user name and display name.
    ssrc: Optional[:class:`int`]
        The RTP source.
    max_bytes: :class:`int`
        Longest name in UTF-8 bytes.
    **fields
        More template fields (``guild_id``, ``channel_id``, ``index``...).

    Raises
    ------
    ValueError
        The template names an unknown field or is malformed.

    Examples
    --------
    >>> render_filename("{start:%Y%m%d}-{user_name}", user_id=1, user_name="../../etc/passwd",
    ...                 start=datetime(2026, 1, 2), ext="wav")
    '20260102-.._.._etc_passwd.wav'
    """
    ext = ext.lstrip(".")
    if not ext or len(ext) > 16 or not ext.isalnum():
        raise ValueError(f"invalid extension {ext!r}")

    def value(v: Any) -> Any:
        return "unknown" if v is None or v == "" else v

    values: dict[str, Any] = {k: value(v) for k, v in fields.items()}
    values.update(
        user_id=value(user_id),
        user_name=value(user_name),
        display_name=value(display_name if display_name else user_name),
        start=start,
        ssrc=value(ssrc),
        ext=ext,
    )
    try:
        rendered = _FORMATTER.vformat(template, (), values)
    except KeyError as exc:
        raise ValueError(f"unknown field {exc} in file name template; known: {', '.join(sorted(values))}") from None
    except (IndexError, AttributeError) as exc:
        raise ValueError(f"bad file name template {template!r}: {exc}") from None
    suffix = "." + ext
    if rendered.lower().endswith(suffix.lower()):
        rendered = rendered[: -len(suffix)]
    # the stem is cut to leave room for the extension: a long name never loses it
    return _assemble(_clean_chars(rendered, "_"), suffix, max_bytes, "_")


def unique_path(directory: StrPath, name: str, *, max_bytes: int = _MAX_NAME_BYTES) -> Path:
    """Return ``directory / name``, or ``directory / "name (n).ext"`` if that exists.

    The name is sanitized first (see :func:`sanitize_filename`), so the result is always
    directly inside ``directory``. Two processes racing for the same name can still collide:
    the check is not atomic.

    Raises
    ------
    FileExistsError
        10000 variants of the name are taken.
    """
    base = Path(directory)
    clean = sanitize_filename(name, max_bytes=max_bytes)
    candidate = base / clean
    if not os.path.lexists(candidate):
        return candidate
    stem, dot, suffix = clean.rpartition(".")
    if not dot or not stem or not suffix.isalnum():
        stem, suffix = clean, ""
    else:
        suffix = "." + suffix
    for n in range(1, 10000):
        tag = f" ({n})"
        room = max_bytes - len(tag.encode()) - len(suffix.encode())
        candidate = base / (_truncate_utf8(stem, room).rstrip(" .") + tag + suffix)
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(errno_codes.EEXIST, "no free variant of the file name", str(base / clean))
