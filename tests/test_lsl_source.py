"""LSL inputs against real outlets on loopback; every test has its own names and source_ids."""
import time

import numpy as np
import pylsl
import pytest

from signals.clock import LSLClock
from signals.lsl_source import LSLInlet, LSLSource, StreamSpec, resolve_stream

pytestmark = pytest.mark.lsl


def outlet(name, sid, *, type_="ECG", nch=1, fs=100.0, fmt="float32"):
    return pylsl.StreamOutlet(pylsl.StreamInfo(name, type_, nch, fs, fmt, sid))


def pull_until(inlet, pred, timeout, push=None):
    """Pull (pushing with `push` each round) until pred(chunks, events) or the timeout."""
    chunks, events = [], []
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if push is not None:
            push()
        chunk, ev = inlet.pull(pylsl.local_clock())
        if chunk is not None:
            chunks.append(chunk)
        events += ev
        if pred(chunks, events):
            break
        time.sleep(0.01)
    return chunks, events


def kinds(events):
    return [e.kind for e in events]


def test_lost_then_recovered_selects_channel(uid):
    name, sid = f"ecg-{uid}", f"sid-{uid}"
    out = outlet(name, sid, nch=2)
    spec = StreamSpec("ecg", name=name, type="ECG", source_id=sid, channel=1)
    inlet = LSLInlet(spec, resolve_stream(spec, 2.0, 0.1), stall_s=0.2, lost_s=0.5)
    try:
        counter = iter(range(10**6))

        def push():
            k = next(counter)
            out.push_sample([-1.0, float(k)])

        chunks, events = pull_until(inlet, lambda c, e: sum(map(len, c)) >= 20, 3.0, push)
        data = np.concatenate([c.data for c in chunks])
        assert data.shape[1] == 1 and data.dtype == np.float64
        assert np.all(np.diff(data[:, 0]) == 1)          # channel 1, in order, none lost
        assert events == []

        out = None
        _, events = pull_until(inlet, lambda c, e: "stream.lost" in kinds(e), 3.0)
        assert kinds(events) == ["stream.stall", "stream.lost"]
        assert inlet.state == "lost"

        out = outlet(name, sid, nch=2)                   # same source_id: liblsl reconnects
        chunks, events = pull_until(inlet, lambda c, e: len(c) > 0, 5.0, push)
        assert kinds(events)[:1] == ["stream.recovered"]
        assert chunks and chunks[0].data[0, 0] >= 0
        assert inlet.state == "ok"
    finally:
        del inlet
        out = None


def test_marker_stream_loss_judged_by_visibility(uid):
    name, sid = f"op-{uid}", f"sid-{uid}"
    out = outlet(name, sid, type_="Markers", fs=0.0, fmt="string")
    spec = StreamSpec("operator", name=name, source_id=sid)
    inlet = LSLInlet(spec, resolve_stream(spec, 2.0, 0.1), lost_s=0.5)
    try:
        out.push_sample(["STOP"])
        chunks, events = pull_until(inlet, lambda c, e: len(c) > 0, 2.0)
        assert chunks[0].data == ["STOP"] and events == []
        # Silence is normal for markers: no stall while the outlet is alive.
        _, events = pull_until(inlet, lambda c, e: bool(e), 0.8)
        assert events == []
        out = None
        _, events = pull_until(inlet, lambda c, e: bool(e), 5.0)
        assert kinds(events) == ["stream.lost"]
    finally:
        del inlet
        out = None


def test_timestamps_stay_sender_stamps_in_local_domain(uid):
    """On one host time_correction is ~0, so the inlet returns the stamps as pushed: stamps
    offset into the future (or past) come back offset by the same amount and are reported as
    skew, not silently moved; stamps going back are a clock reset."""
    name, sid = f"ecg-{uid}", f"sid-{uid}"
    out = outlet(name, sid)
    spec = StreamSpec("ecg", name=name, source_id=sid)
    inlet = LSLInlet(spec, resolve_stream(spec, 2.0, 0.1))
    try:
        assert abs(inlet.offset) < 0.01
        t0 = pylsl.local_clock()
        out.push_chunk(np.arange(10, dtype=np.float32)[:, None], t0)   # stamp of the last sample
        chunks, events = pull_until(inlet, lambda c, e: sum(map(len, c)) >= 10, 2.0)
        ts = np.concatenate([c.timestamps for c in chunks])
        np.testing.assert_allclose(ts, t0 + (np.arange(10) - 9) / 100.0, atol=0.002)
        assert events == []

        out.push_chunk(np.zeros((10, 1), np.float32), t0 + 5.0)       # 5 s in the future
        chunks, events = pull_until(inlet, lambda c, e: sum(map(len, c)) >= 10, 2.0)
        assert abs(chunks[-1].timestamps[-1] - (t0 + 5.0)) < 0.002
        skew = [e for e in events if e.kind == "clock.skew"]
        assert len(skew) == 1 and 3.5 < skew[0].data["skew_s"] < 5.0
        assert "stream.gap" in kinds(events)                           # 5 s jump forward

        out.push_chunk(np.zeros((10, 1), np.float32), t0 + 0.5)       # back 4.5 s
        chunks, events = pull_until(inlet, lambda c, e: sum(map(len, c)) >= 10, 2.0)
        reset = [e for e in events if e.kind == "clock.reset"]
        assert len(reset) == 1 and reset[0].data["via"] == "timestamps"
        assert reset[0].data["t_before"] - reset[0].data["t_after"] == pytest.approx(4.59, abs=0.01)
        assert "clock.skew" not in kinds(events)                       # back within 1 s of now
    finally:
        del inlet
        out = None


def test_gap_in_regular_stream(uid):
    name, sid = f"ecg-{uid}", f"sid-{uid}"
    out = outlet(name, sid, fs=250.0)
    spec = StreamSpec("ecg", type="ECG", source_id=sid)
    inlet = LSLInlet(spec, resolve_stream(spec, 2.0, 0.1))
    try:
        t0 = pylsl.local_clock() - 1.0
        out.push_chunk(np.zeros((50, 1), np.float32), t0)
        out.push_chunk(np.zeros((50, 1), np.float32), t0 + 0.7)        # ~0.5 s missing
        _, events = pull_until(inlet, lambda c, e: "stream.gap" in kinds(e), 2.0)
        gap = [e for e in events if e.kind == "stream.gap"]
        assert len(gap) == 1 and gap[0].data["gap_s"] == pytest.approx(0.7 - 49 / 250, abs=0.002)
    finally:
        del inlet
        out = None


def test_ambiguous_name_refused_and_pinning_resolves(uid):
    name = f"ecg-{uid}"
    a = outlet(name, f"devA-{uid}")
    b = outlet(name, f"devB-{uid}")
    try:
        with pytest.raises(RuntimeError) as err:
            resolve_stream(StreamSpec("ecg", name=name, type="ECG"), 2.0, 0.5)
        msg = str(err.value)
        assert f"devA-{uid}" in msg and f"devB-{uid}" in msg
        assert "source_id" in msg and "host=" in msg and "'ecg'" in msg
        info = resolve_stream(StreamSpec("ecg", name=name, source_id=f"devB-{uid}"), 2.0, 0.1)
        assert info.source_id() == f"devB-{uid}"
    finally:
        del a, b


def test_not_found_names_role_name_and_type(uid):
    with pytest.raises(RuntimeError, match=rf"'resp'.*name='resp-{uid}'.*type='Resp'"):
        resolve_stream(StreamSpec("resp", name=f"resp-{uid}", type="Resp"), 0.2)


def test_source_polls_all_roles(uid):
    ecg = outlet(f"ecg-{uid}", f"e-{uid}", nch=3, fs=250.0, fmt="double64")
    op = outlet(f"op-{uid}", f"o-{uid}", type_="Markers", fs=0.0, fmt="string")
    src = LSLSource([StreamSpec("ecg", name=f"ecg-{uid}", channel=2),
                     StreamSpec("operator", name=f"op-{uid}", type="Markers")],
                    LSLClock(), resolve_timeout=2.0, settle_s=0.1)
    try:
        ecg.push_chunk(np.tile([[0.0, 1.0, 2.0]], (25, 1)))
        op.push_sample(["RESUME"])
        got, events = {}, []
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end and (len(got.get("ecg", [])) < 25 or "operator" not in got):
            chunks, ev = src.poll()
            events += ev
            for c in chunks:
                got.setdefault(c.role, []).extend(c.data if c.role == "operator" else c.data[:, 0])
            time.sleep(0.01)
        assert got["operator"] == ["RESUME"]
        assert got["ecg"] == [2.0] * 25
        assert events == []
    finally:
        src.close()
        del src, ecg, op
