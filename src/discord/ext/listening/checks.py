"""Argument checks shared by the public functions: each says which argument was wrong and why."""

from __future__ import annotations

import math

__all__ = ("check_int", "check_number", "check_seconds", "check_user_id")


def check_number(name: str, value: object, *, positive: bool = False, what: str = "number") -> float:
    """``value`` as a finite, non-negative (``positive``: > 0) float, else TypeError/ValueError
    naming ``name`` (``what`` says what kind of number it is, e.g. "number of seconds")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a {what}, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite {what} {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite, non-negative (``positive``: > 0) number of seconds."""
    return check_number(name, value, positive=positive, what="number of seconds")


def check_text(name: str, value: object) -> str:
    """``value`` if it is a non-empty str, else TypeError."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int within ``low..high``, else TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low}..{high}, got {value!r}")
    return value


def check_user_id(user: object) -> int:
    """The user id of ``user``: an int, or anything with an int ``.id`` (a Member, a User, an Object)."""
    if isinstance(user, int) and not isinstance(user, bool):
        return user
    uid = getattr(user, "id", None)
    if isinstance(uid, int) and not isinstance(uid, bool):
        return uid
    raise TypeError(f"a user must be an int id or have an int .id (a Member, a User, an Object), got {user!r:.100}")
