import math

import numpy as np
import pytest
from scipy.interpolate import CubicSpline
from scipy.signal import detrend, welch

from signals.hrv import HFIndex, StreamingHRV, hrv_features


def _mitdb_rr(shared_data, record):
    d = np.load(shared_data / "mitdb" / f"{record}.npz")
    b = d["beats"].astype(np.float64) / float(d["fs"])
    return b[1:], np.diff(b) * 1000.0   # beat times (s), RR (ms)


def _synthetic_rr(dur_s=600.0, lf=(0.1, 40.0), hf=(0.25, 30.0), seed=0):
    """Beats of a heart whose RR follows 1000 ms + LF and HF sinusoids (ms), plus 2 ms noise."""
    rng = np.random.default_rng(seed)
    t, ts, rrs = 0.0, [], []
    while t < dur_s:
        rr = (1000.0 + lf[1] * math.sin(2 * math.pi * lf[0] * t)
              + hf[1] * math.sin(2 * math.pi * hf[0] * t) + 2.0 * rng.standard_normal())
        t += rr / 1000.0
        ts.append(t)
        rrs.append(rr)
    return np.array(ts), np.array(rrs)


def _reference_freq(t, rr):
    """Independent Kubios-style reference: 4 Hz cubic spline, detrend, Welch 256 s / 50 %."""
    fs = 4.0
    grid = np.arange(t[0], t[-1], 1.0 / fs)
    x = detrend(CubicSpline(t, rr)(grid))
    nper = min(1024, len(x))
    f, p = welch(x, fs=fs, window="hann", nperseg=nper, noverlap=nper // 2)
    band = lambda lo, hi: np.trapezoid(p[(f >= lo) & (f < hi)], f[(f >= lo) & (f < hi)])
    lf, hf = band(0.04, 0.15), band(0.15, 0.40)
    hfm = (f >= 0.15) & (f < 0.40)
    return {"lf_ms2": lf, "hf_ms2": hf, "lf_hf": lf / hf, "hf_peak_hz": f[hfm][np.argmax(p[hfm])]}


def test_frequency_features_equal_scipy_pipeline():
    """The one-pass kernel is scipy's CubicSpline + linear detrend + Welch, to rounding."""
    for seed, n_beats in ((0, 5), (1, 80), (2, 340), (3, 700)):
        t, rr = _synthetic_rr(dur_s=n_beats * 1.0, seed=seed)
        n = int(math.floor((t[-1] - t[0]) * 4.0)) + 1
        x = detrend(CubicSpline(t, rr)(t[0] + np.arange(n) / 4.0), type="linear")
        nper = min(1024, n)
        f, p = welch(x, fs=4.0, window="hann", nperseg=nper, noverlap=nper // 2)
        got = hrv_features(rr, t)
        if t[-1] - t[0] < 50.0:
            assert math.isnan(got["lf_ms2"])
            continue
        for k, (lo, hi) in (("lf_ms2", (0.04, 0.15)), ("hf_ms2", (0.15, 0.40))):
            band = (f >= lo) & (f < hi)
            assert got[k] == pytest.approx(np.trapezoid(p[band], f[band]), rel=1e-9), (seed, k)


@pytest.mark.parametrize("record", ["100", "121"])
def test_time_domain_equals_numpy(shared_data, record):
    t, rr = _mitdb_rr(shared_data, record)
    f = hrv_features(rr, t)
    d = np.diff(rr)
    assert f["rmssd_ms"] == pytest.approx(np.sqrt(np.mean(d ** 2)), rel=1e-9)
    assert f["sdnn_ms"] == pytest.approx(np.sqrt(np.sum((rr - rr.mean()) ** 2) / (len(rr) - 1)), rel=1e-9)
    assert f["pnn50"] == pytest.approx(100.0 * np.mean(np.abs(d) > 50.0), rel=1e-9)
    assert f["mean_hr_bpm"] == pytest.approx(60000.0 / rr.mean(), rel=1e-9)


@pytest.mark.parametrize("record", ["100", "121"])
def test_frequency_domain_matches_scipy_reference_on_mitdb(shared_data, record):
    t, rr = _mitdb_rr(shared_data, record)
    for sel in (slice(None), t > t[-1] - 300.0):       # whole 30 min, and the last 5 min
        ours = hrv_features(rr[sel], t[sel])
        ref = _reference_freq(t[sel], rr[sel])
        for k in ("lf_ms2", "hf_ms2", "lf_hf"):
            assert ours[k] == pytest.approx(ref[k], rel=0.10), (record, k)


def test_neurokit2_loose_agreement(shared_data):
    nk = pytest.importorskip("neurokit2")
    for record in ("100", "121"):
        d = np.load(shared_data / "mitdb" / f"{record}.npz")
        t, rr = _mitdb_rr(shared_data, record)
        ours = hrv_features(rr, t)
        theirs = nk.hrv_frequency(d["beats"], sampling_rate=int(d["fs"]), show=False).iloc[0]
        print(f"\nmitdb {record}: ours LF {ours['lf_ms2']:.1f} ms2 HF {ours['hf_ms2']:.1f} ms2 "
              f"LF/HF {ours['lf_hf']:.3f} | NeuroKit2 LF {theirs['HRV_LF']:.3g} HF {theirs['HRV_HF']:.3g} "
              f"LF/HF {theirs['HRV_LFHF']:.3f}")
        # packages differ in interpolation, PSD method and units: only the balance is compared
        assert 0.5 < ours["lf_hf"] / theirs["HRV_LFHF"] < 2.0
        assert (ours["lf_hf"] < 1.0) == (theirs["HRV_LFHF"] < 1.0)


def test_synthetic_lf_hf_modulation():
    t, rr = _synthetic_rr()
    ours = hrv_features(rr, t)
    ref = _reference_freq(t, rr)
    for k in ("lf_ms2", "hf_ms2", "lf_hf"):
        assert ours[k] == pytest.approx(ref[k], rel=0.10)
    assert ours["hf_peak_hz"] == pytest.approx(0.25, abs=0.02)
    # a sinusoid of amplitude A ms carries A^2/2 ms^2
    assert ours["lf_ms2"] == pytest.approx(40.0 ** 2 / 2, rel=0.25)
    assert ours["hf_ms2"] == pytest.approx(30.0 ** 2 / 2, rel=0.25)


def test_short_or_bad_input_gives_nan_not_error():
    assert all(math.isnan(v) for v in hrv_features([]).values())
    f = hrv_features([800.0, 810.0, np.nan, 790.0])
    assert f["mean_hr_bpm"] == pytest.approx(60000.0 / 800.0)
    assert math.isnan(f["lf_ms2"])     # 2.4 s of beats: too short for the LF band


def test_streaming_equals_offline_on_same_window(shared_data):
    t, rr = _mitdb_rr(shared_data, "121")
    s_every = StreamingHRV(window_s=300.0, freq_every_s=0.0)
    s_default = StreamingHRV(window_s=300.0)
    checks = set(np.linspace(10, len(t) - 1, 12).astype(int))
    for i in range(len(t)):
        s_every.update(t[i], rr[i])
        s_default.update(t[i], rr[i])
        if i in checks:
            w = (t > t[i] - 300.0) & (t <= t[i])
            ref = hrv_features(rr[w], t[w])
            got = s_every.features()
            for k, v in ref.items():
                if math.isnan(v):
                    assert math.isnan(got[k]), k
                else:
                    assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (i, k)
            fd = s_default.features()
            for k in ("rmssd_ms", "sdnn_ms", "pnn50", "mean_hr_bpm"):
                assert fd[k] == pytest.approx(ref[k], rel=1e-9), (i, k)


def test_streaming_resets_when_time_goes_back():
    s = StreamingHRV(window_s=60.0)
    for k in range(100):
        s.update(100.0 + k, 1000.0)
    s.update(5.0, 800.0)
    assert s.n_beats == 1


def test_hf_index_follows_respiratory_share():
    def run(lf_amp, hf_amp):
        t, rr = _synthetic_rr(dur_s=200.0, lf=(0.1, lf_amp), hf=(0.25, hf_amp), seed=3)
        h = HFIndex()
        out = [(a, v) for a, r in zip(t, rr) if (v := h.update(a, r)) is not None]
        times = np.array([a for a, _ in out])
        assert times[0] >= t[0] + 64.0
        # one value per 1 s tick of the beat clock
        assert np.all(np.diff(np.floor(times)) >= 1.0) and np.all(np.diff(times) < 2.5)
        return np.median([v for _, v in out])

    hf_only, mixed, lf_only = run(1.0, 40.0), run(40.0, 20.0), run(40.0, 1.0)
    print(f"\nHF index: HF only {hf_only:.1f}, mixed {mixed:.1f}, LF only {lf_only:.1f}")
    assert hf_only > 70.0 and lf_only < 30.0 and lf_only < mixed < hf_only
