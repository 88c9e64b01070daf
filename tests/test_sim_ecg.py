"""The synthetic ECG: beats where the patient put them, exact tiling, and realistic enough that
NeuroKit2 finds the beats and the RR intervals the patient's RR stream carries."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.ecg_synth import ECGSynthesizer
from sim.patient import VirtualPatient

QUIET = dict(white_mv=0, wander_mv=0, drift_mv=0, hum_mv=0, emg_per_min=0,
             lead_off_per_hour=0, resp_amp_mod=0, beat_jitter=0)


def _beats(seed, n=400, mean=800.0):
    rng = np.random.default_rng(seed)
    rr = rng.normal(mean, 60.0, n)
    rr[::37] *= 0.65                           # premature beats
    return np.cumsum(rr) / 1000.0 + 0.5, rr


def _render_chunks(synth, edges, bt, rr):
    ts, xs = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        m = (bt > a) & (bt <= b)
        t, x = synth.render(a, b, bt[m], rr[m])
        ts.append(t)
        xs.append(x)
    return np.concatenate(ts), np.concatenate(xs)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(0.001, 99.999), min_size=1, max_size=60), st.integers(0, 3))
def test_chunking_does_not_change_a_sample(cuts, seed):
    bt, rr = _beats(seed, 150)
    edges = np.array([0.0, *sorted(cuts), 100.0])
    t1, x1 = _render_chunks(ECGSynthesizer(500, seed, emg_per_min=6, lead_off_per_hour=60),
                            np.array([0.0, 100.0]), bt, rr)
    t2, x2 = _render_chunks(ECGSynthesizer(500, seed, emg_per_min=6, lead_off_per_hour=60),
                            edges, bt, rr)
    assert np.array_equal(t1, t2) and np.array_equal(x1, x2)


def test_grid_is_absolute_and_lags_by_delay():
    s = ECGSynthesizer(250, 0)
    t, _ = s.render(10.0, 11.0, [], [])
    assert len(t) == 250
    assert np.allclose(t * 250, np.round(t * 250), atol=1e-6)
    assert t[0] == pytest.approx(10.0 - s.delay, abs=1 / 250)
    assert 0.2 < s.delay < 0.5
    with pytest.raises(ValueError):
        s.render(5.0, 6.0, [], [])
    with pytest.raises(ValueError):
        ECGSynthesizer(2000, 0)


@pytest.mark.parametrize("rr_ms", [400.0, 1000.0, 1800.0])
def test_r_peak_is_at_the_beat_time(rr_ms):
    fs = 1000.0
    bt = 1.0 + np.arange(12) * rr_ms / 1000 + np.linspace(0, 0.001, 12)  # off the grid
    t, x = ECGSynthesizer(fs, 1, **QUIET).render(0.0, bt[-1] + 2.0, bt, np.full(12, rr_ms))
    for b in bt:
        i = int(np.argmax(np.where(np.abs(t - b) < 0.1, x, -np.inf)))
        y0, y1, y2 = x[i - 1:i + 2]
        frac = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)           # parabolic vertex
        assert abs(t[i] + frac / fs - b) < 2e-4


def test_premature_beats_are_ventricular_and_peak_on_time():
    rr = np.array([900.0, 900, 900, 540, 1260, 900, 900])
    bt = np.cumsum(rr) / 1000
    s = ECGSynthesizer(1000.0, 0, **QUIET)
    t, x = s.render(0.0, 8.0, bt, rr)
    assert s.counters["premature_beats"] == 1
    peaks = [int(np.argmax(np.where(np.abs(t - b) < 0.1, x, -np.inf))) for b in bt]
    assert np.abs(t[peaks] - bt).max() <= 0.001
    # The PVC's own waves: the difference from the same strip without it.
    keep = np.arange(len(bt)) != 3
    own = x - ECGSynthesizer(1000.0, 0, **QUIET).render(0.0, 8.0, bt[keep], rr[keep])[1]
    p_wave = (t > bt[3] - 0.25) & (t < bt[3] - 0.13)
    assert np.abs(own[p_wave]).max() < 0.01                  # no P wave
    t_wave = (t > bt[3] + 0.15) & (t < bt[3] + 0.5)
    assert own[t_wave].min() < -0.2 and own[t_wave].max() < 0.01   # an inverted T


def test_same_seed_same_output_and_synthesizers_do_not_share_noise():
    bt, rr = _beats(2, 60)
    a, b, c = (ECGSynthesizer(500, 7) for _ in range(3))
    other = ECGSynthesizer(500, 8)
    xa = _render_chunks(a, np.arange(0, 41.0, 1.0), bt, rr)[1]
    xs = []
    for lo in range(40):                        # interleaved with another synthesizer
        m = (bt > lo) & (bt <= lo + 1)
        xs.append(b.render(lo, lo + 1, bt[m], rr[m])[1])
        other.render(lo, lo + 1, bt[m], rr[m])
    assert np.array_equal(xa, np.concatenate(xs))
    xo = _render_chunks(c, np.array([0.0, 40.0]), bt, rr)[1]
    assert np.array_equal(xa, xo)
    assert not np.allclose(xa, _render_chunks(ECGSynthesizer(500, 8), np.array([0.0, 40.0]),
                                              bt, rr)[1])


@pytest.mark.parametrize("bpm", [9.0, 18.0])
def test_baseline_breathes_at_the_given_rate(bpm):
    s = ECGSynthesizer(250, 0, **{**QUIET, "wander_mv": 0.1})
    _, x = s.render(0.0, 300.0, [], [], resp_bpm=bpm)
    f = np.fft.rfftfreq(len(x), 1 / 250)
    peak = f[np.argmax(np.abs(np.fft.rfft(x - x.mean())))]
    assert peak == pytest.approx(bpm / 60, rel=0.15)


def test_lead_off_is_a_flat_line_near_zero():
    s = ECGSynthesizer(500, 3, lead_off_per_hour=120, lead_off_s=3.0)
    bt, rr = _beats(3, 700)
    t, x = _render_chunks(s, np.arange(0, 501.0, 10.0), bt, rr)
    assert s.counters["lead_off_gaps"] >= 3 and len(s.lead_off) >= 3
    for a, b in s.lead_off:
        seg = x[(t >= a) & (t < b)]
        assert len(seg) > 0.5 * 500 and np.abs(seg).max() < 0.01
    ended = sum(b - a for a, b in s.lead_off)
    assert ended - 1e-9 <= s.counters["lead_off_s"] <= ended + 1.7 * 3.0   # + one still open


def _match(det, truth, tol=0.15):
    """Greedy one-to-one matching: F1 and, per true beat, the detected time (NaN if missed)."""
    det = np.sort(det)
    found = np.full(len(truth), np.nan)
    j = 0
    for i, tt in enumerate(truth):
        while j < len(det) and det[j] < tt - tol:
            j += 1
        if j < len(det) and abs(det[j] - tt) <= tol:
            found[i] = det[j]
            j += 1
    tp = int(np.isfinite(found).sum())
    return 2 * tp / (len(det) + len(truth)), found


def _patient_beats(seed, seconds):
    p = VirtualPatient("fibromyalgia", seed)
    out = [p.advance(float(t)) for t in np.arange(5.0, seconds + 5.0, 5.0)]
    return (np.concatenate([o.beat_t for o in out]), np.concatenate([o.rr_ms for o in out]))


@pytest.mark.parametrize("fs", [500.0, 250.0])
def test_neurokit_finds_the_beats_and_their_rr(fs):
    nk = pytest.importorskip("neurokit2")
    seconds = 240.0
    bt, rr = _patient_beats(4, seconds)
    s = ECGSynthesizer(fs, 4, emg_per_min=3, lead_off_per_hour=30)
    edges = np.arange(0.0, seconds + 1.0, 1.0)
    t, x = _render_chunks(s, edges, bt, rr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, info = nk.ecg_peaks(nk.ecg_clean(x, sampling_rate=fs), sampling_rate=fs)
    det = t[info["ECG_R_Peaks"]]
    # Score away from the ends and from lead-off gaps (and the settling after them).
    keep_t = (bt > t[0] + 1) & (bt < t[-1] - 1)
    keep_d = (det > t[0] + 1) & (det < t[-1] - 1)
    for a, b in s.lead_off:
        keep_t &= ~((bt > a - 0.5) & (bt < b + 2.0))
        keep_d &= ~((det > a - 0.5) & (det < b + 2.0))
    f1, found = _match(det[keep_d], bt[keep_t])
    assert keep_t.sum() > 200 and f1 >= 0.99
    # RR between consecutive detected beats against the RR the patient streams for them
    at = np.full(len(bt), np.nan)
    at[keep_t] = found
    rr_ecg = np.diff(at) * 1000.0
    both = np.isfinite(rr_ecg)
    assert both.sum() > 200
    assert np.median(np.abs(rr_ecg[both] - rr[1:][both])) < 5.0
    assert np.nanmedian(np.abs(at - bt)) <= 1.0 / fs + 1e-9


def test_patient_ecg_tiles_and_matches_its_beats():
    p = VirtualPatient("fibromyalgia", 5, ecg_fs=500.0)
    outs = [p.advance(t) for t in np.arange(0.5, 30.01, 0.5)]
    t = np.concatenate([o.ecg_t for o in outs])
    x = np.concatenate([o.ecg for o in outs])
    bt = np.concatenate([o.beat_t for o in outs])
    assert np.allclose(np.diff(t), 1 / 500.0)
    assert t[-1] < 30.0 and t[-1] > 29.0
    for b in bt[(bt > t[0] + 0.5) & (bt < t[-1] - 0.5)]:
        win = np.abs(t - b) < 0.1
        assert abs(t[win][np.argmax(x[win])] - b) <= 0.004
