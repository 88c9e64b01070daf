import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.events import Event
from signals.ratings import classify_marker, parse_rating


@pytest.mark.parametrize("value, expected", [
    (6, 6.0), (6.5, 6.5), (0, 0.0), (10, 10.0), (-0.0, 0.0), (np.float32(3.5), 3.5),
    ("6", 6.0), ("NRS:6", 6.0), ("nrs=6.5", 6.5), (" Pain: 7 ", 7.0), ("7/10", 7.0),
    ("6,5", 6.5), ("NRS 4", 4.0), (b"NRS:2", 2.0), (["5"], 5.0), (np.array([8.0]), 8.0),
])
def test_valid_ratings(value, expected):
    v, ev = parse_rating(value, 12.5, "ratings")
    assert ev is None and v == expected and math.copysign(1.0, v) == 1.0


@pytest.mark.parametrize("value", [
    11, -1, "10.5", "NRS:-2", float("nan"), float("inf"), "", "six", "NRS:", "6 7", None, True,
    "1e1", "٣", object(), [1, 2], {"nrs": 5},
])
def test_rejected_ratings_are_events(value):
    v, ev = parse_rating(value, 3.0, "ratings")
    assert v is None
    assert isinstance(ev, Event) and ev.kind == "rating.rejected" and ev.t == 3.0
    ev.to_json()     # publishable as is


def test_side_effect_and_operator_markers():
    v, ev = parse_rating("SIDE_EFFECT: hoarseness", 1.0, "ratings")
    assert v is None and ev.kind == "side_effect.reported" and ev.data["what"] == "hoarseness"
    assert parse_rating("STOP", 1.0, "ratings") == (None, None)
    assert classify_marker("stop ") == ("operator", "STOP")
    assert classify_marker("RESUME") == ("operator", "RESUME")
    assert classify_marker("side effect=cough") == ("side_effect", "cough")
    assert classify_marker("SIDE_EFFECT") == ("side_effect", "")
    assert classify_marker("NRS:6") == ("rating", 6.0)
    assert classify_marker("NRS:12") == ("rating", 12.0)        # range is parse_rating's job
    assert classify_marker(4.0) == ("rating", 4.0)
    assert classify_marker("STOPPED")[0] == "unknown"
    assert classify_marker("hello") == ("unknown", "hello")


_anything = st.one_of(st.text(), st.floats(), st.integers(), st.binary(), st.none(),
                      st.booleans(), st.lists(st.text(), max_size=2),
                      st.from_regex(r"(?i)\s*(nrs|pain)?\s*[:=]?\s*[+-]?\d{0,3}([.,]\d{0,3})?\s*"))


@settings(max_examples=400, deadline=None)
@given(_anything)
def test_parse_rating_never_raises_and_stays_in_range(value):
    v, ev = parse_rating(value, 0.0, "ratings")
    if v is not None:
        assert ev is None and isinstance(v, float) and 0.0 <= v <= 10.0
    else:
        assert ev is None or ev.kind in ("rating.rejected", "side_effect.reported")
        if ev is not None:
            ev.to_json()
    kind, _ = classify_marker(value)
    assert kind in ("rating", "side_effect", "operator", "unknown")
