"""Marker parsing: pain ratings (NRS 0-10), side-effect reports, operator commands.

Markers arrive as floats or strings from people and devices, so nothing here may raise:
a bad rating becomes a "rating.rejected" event for the operator, never an exception.

Recognised forms (case-insensitive, surrounding spaces ignored):
  rating       6 | 6.5 | 6,5 | NRS:6 | nrs=6.5 | pain: 7 | rating 3 | 7/10   (plain decimals)
  side effect  SIDE_EFFECT:<what>  (also SIDE-EFFECT / SIDE EFFECT, ':' or '=')
  operator     STOP | RESUME       (not ratings: the safety supervisor handles them)
"""
from __future__ import annotations

import math
import re
from numbers import Real

import numpy as np

from signals.events import Event

NRS_MIN, NRS_MAX = 0.0, 10.0
OPERATOR_COMMANDS = ("STOP", "RESUME")

_RATING = re.compile(
    r"(?:(?:nrs|pain|rating)\s*[:=]?\s*)?([+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+))\s*(?:/\s*10)?",
    re.IGNORECASE | re.ASCII)
_SIDE_EFFECT = re.compile(r"side[_\- ]?effect\s*(?:[:=]\s*(.*))?", re.IGNORECASE | re.DOTALL)
_MAX_SHOWN = 80     # characters of a bad marker quoted in an event


def _as_text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return None


def _unwrap(value):
    """A one-channel LSL sample may arrive as [x] or a 1-element array."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(-1)[0]
    return value


def classify_marker(text) -> tuple[str, object]:
    """("rating", float) | ("side_effect", str what) | ("operator", "STOP"|"RESUME") |
    ("unknown", original). A rating's value is not range-checked here (parse_rating does)."""
    try:
        value = _unwrap(text)
        if isinstance(value, Real) and not isinstance(value, bool):
            return "rating", float(value)
        s = _as_text(value)
        if s is None:
            return "unknown", text
        s = s.strip()
        if s.upper() in OPERATOR_COMMANDS:
            return "operator", s.upper()
        m = _SIDE_EFFECT.fullmatch(s)
        if m:
            return "side_effect", (m.group(1) or "").strip()
        m = _RATING.fullmatch(s)
        if m:
            return "rating", float(m.group(1).replace(",", "."))
        return "unknown", text
    except Exception:  # noqa: BLE001 - markers come from outside; never raise
        return "unknown", text


def _shown(value) -> str:
    try:
        r = repr(value)
    except Exception:  # noqa: BLE001
        r = f"<unprintable {type(value).__name__}>"
    return r if len(r) <= _MAX_SHOWN else r[: _MAX_SHOWN - 3] + "..."


def parse_rating(value, t, source) -> tuple[float | None, Event | None]:
    """A pain rating from a marker: (value in [0, 10], None) when valid; (None, Event) with kind
    "rating.rejected" when unreadable or out of range, or "side_effect.reported" for a
    SIDE_EFFECT marker; (None, None) for operator STOP/RESUME, which are not ratings and are
    handled by the safety supervisor (route markers with classify_marker first)."""
    try:
        kind, payload = classify_marker(value)
        if kind == "operator":
            return None, None
        if kind == "side_effect":
            what = str(payload)[:_MAX_SHOWN]
            return None, Event(t, "side_effect.reported", source,
                               f"side effect reported: {what or 'unspecified'}", {"what": what})
        if kind == "rating":
            v = float(payload)
            if math.isfinite(v) and NRS_MIN <= v <= NRS_MAX:
                return v + 0.0, None  # + 0.0 turns -0.0 into 0.0
            reason = f"rating {v!r} outside {NRS_MIN:g}-{NRS_MAX:g}"
        else:
            reason = "not a rating"
    except Exception as exc:  # noqa: BLE001 - never raise on outside input
        reason = f"unreadable ({type(exc).__name__})"
    shown = _shown(value)
    return None, Event(t, "rating.rejected", source, f"rating rejected: {reason}: {shown}",
                       {"value": shown, "reason": reason})
