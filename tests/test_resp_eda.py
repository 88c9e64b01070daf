import math

import numpy as np
import pytest
from scipy.signal import butter, filtfilt, find_peaks

from signals.eda import EDAProcessor
from signals.resp import RespirationProcessor


def _run_resp(proc, x, t, sizes):
    """Feed in chunks of the given sizes (cycled); return onsets, detection times, the
    processor's rate at each multiple of 60 s, and the band-passed signal."""
    onsets, detected, rates, filtered = [], [], {}, []
    i, k, minute = 0, 0, math.floor(t[0] / 60.0)
    while i < len(x):
        n = sizes[k % len(sizes)]
        k += 1
        onsets.extend(proc.process(x[i:i + n], t[i:i + n]))
        detected.extend(proc.detected_t)
        filtered.append(proc.filtered.copy())
        i += n
        now = math.floor(t[min(i, len(t)) - 1] / 60.0)
        if now > minute:
            minute = now
            rates[now * 60.0] = proc.rate_bpm
    return np.array(onsets), np.array(detected), rates, np.concatenate(filtered)


def _offline_rate(x, fs, t_end, window_s=60.0):
    """Independent count: zero-phase band-pass, peaks with a prominence threshold."""
    x = np.where(np.isnan(x), np.nanmedian(x), x)
    b, a = butter(2, (0.1, 1.0), btype="bandpass", fs=fs)
    y = filtfilt(b, a, x)
    peaks, _ = find_peaks(y, prominence=0.3 * np.std(y), distance=int(1.0 * fs))
    tp = peaks / fs
    q = tp[(tp > t_end - window_s) & (tp <= t_end)]
    return 60.0 * (len(q) - 1) / (q[-1] - q[0])


def test_resp_rate_mimic_matches_offline_count(shared_data):
    d = np.load(shared_data / "icu" / "mimic_03700181.npz")
    x, fs = d["resp"].astype(np.float64), float(d["fs_resp"])
    assert np.isnan(x).sum() == 4
    t = np.arange(len(x)) / fs
    _, _, rates, _ = _run_resp(RespirationProcessor(fs), x, t, [25])
    assert len(rates) >= 9
    for t_end, ours in rates.items():
        ref = _offline_rate(x, fs, t_end)
        assert abs(ours - ref) < 1.0, (t_end, ours, ref)
    assert 16.0 < np.median(list(rates.values())) < 20.0    # "about 18 breaths/min"


def test_resp_same_answer_whatever_the_chunking(shared_data):
    d = np.load(shared_data / "icu" / "mimic_03700181.npz")
    x, fs = d["resp"].astype(np.float64)[:20000], float(d["fs_resp"])
    t = 1000.0 + np.arange(len(x)) / fs
    ref = _run_resp(RespirationProcessor(fs), x, t, [len(x)])
    for sizes in ([1, 2, 3, 500], [37], [125, 0, 9]):
        got = _run_resp(RespirationProcessor(fs), x, t, sizes)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[3], ref[3])


def test_resp_v102s_spikes_and_nans(shared_data):
    d = np.load(shared_data / "icu" / "challenge2015_v102s.npz")
    x, fs = d["resp"].astype(np.float64), float(d["fs"])
    t = np.arange(len(x)) / fs
    x[:50] = np.nan                        # a stream that starts with NaNs, too
    onsets, _, rates, _ = _run_resp(RespirationProcessor(fs), x, t, [250])
    print(f"\nv102s rates per minute: {[round(r, 1) for r in rates.values()]}")
    assert all(6.0 < r < 40.0 for r in rates.values())
    assert np.all(np.diff(onsets) > 1.0)


def _synthetic_breathing(fs, dur_s=300.0, seed=0):
    """Asymmetric breaths (inspiration 40 % of the cycle), 12-20 breaths/min, noise, drift;
    true exhalation onsets are the ends of inspiration."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(dur_s * fs)) / fs
    x = np.zeros_like(t)
    onsets, t0 = [], 1.0
    while t0 < dur_s:
        period = rng.uniform(3.0, 5.0)
        ti = 0.4 * period
        if t0 + ti < dur_s - 1.0:
            onsets.append(t0 + ti)
        m = (t >= t0) & (t < t0 + ti)
        x[m] = 0.5 - 0.5 * np.cos(np.pi * (t[m] - t0) / ti)
        m = (t >= t0 + ti) & (t < t0 + period)
        x[m] = 0.5 + 0.5 * np.cos(np.pi * (t[m] - t0 - ti) / (period - ti))
        t0 += period
    x += 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 0.01 * t) + 2.0
    return t, x, np.array(onsets)


@pytest.mark.parametrize("fs", [25.0, 125.0, 500.0])
def test_exhalation_onset_delay_on_synthetic_breathing(fs):
    t, x, true_on = _synthetic_breathing(fs)
    onsets, detected, _, _ = _run_resp(RespirationProcessor(fs), x, t, [int(fs // 10)])
    true_on = true_on[true_on > 3.0]          # after the 2 s warm-up
    nearest = true_on[np.argmin(np.abs(onsets[:, None] - true_on[None, :]), axis=1)]
    delay = detected - nearest
    print(f"\nfs {fs:g}: {len(onsets)}/{len(true_on)} onsets, onset error median "
          f"{np.median(onsets - nearest) * 1000:.0f} ms (max {np.abs(onsets - nearest).max() * 1000:.0f}), detection delay median "
          f"{np.median(delay) * 1000:.0f} ms (p95 {np.percentile(delay, 95) * 1000:.0f} ms)")
    assert abs(len(onsets) - len(true_on)) <= 1
    assert len(np.unique(nearest)) == len(nearest)
    # the time of the maximum, on a rounded noisy top
    assert np.median(np.abs(onsets - nearest)) < 0.1 and np.all(np.abs(onsets - nearest) < 0.4)
    assert 0.0 < np.median(delay) < 0.5 and np.all(delay < 0.8)


def test_resp_phase_rate_and_channel_change():
    fs = 50.0
    t, x, _ = _synthetic_breathing(fs, dur_s=90.0)
    p = RespirationProcessor(fs)
    assert p.phase == "unknown" and math.isnan(p.rate_bpm)
    p.process(x[:, None], t)
    assert p.phase in ("inspiration", "exhalation")
    assert 12.0 < p.rate_bpm < 20.0
    p.process(np.zeros((5, 2)), t[-1] + np.arange(1, 6) / fs)    # format change: reset
    assert math.isnan(p.rate_bpm)
    assert len(p.process(np.full(100, np.nan), t[-1] + 1 + np.arange(100) / fs)) == 0


def _synthetic_eda(fs, dur_s=300.0, seed=1):
    """Tonic drift + Bateman-shaped SCRs (rise 0.75 s, decay 4 s) of known onset and amplitude."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(dur_s * fs)) / fs
    tonic = 4.0 + 0.6 * t / dur_s + 0.15 * np.sin(2 * np.pi * t / 120.0)
    slots = np.arange(15.0, dur_s - 15.0, 12.0)
    n = min(14, len(slots))
    onsets = np.sort(rng.choice(slots, n, replace=False) + rng.uniform(0.0, 3.0, n))
    amps = rng.uniform(0.05, 0.8, len(onsets))
    peak = np.exp(-1.54 / 4.0) - np.exp(-1.54 / 0.75)
    phasic = np.zeros_like(t)
    for on, a in zip(onsets, amps):
        s = t[t > on] - on
        phasic[t > on] += a * (np.exp(-s / 4.0) - np.exp(-s / 0.75)) / peak
    return t, tonic + phasic + 0.003 * rng.standard_normal(len(t)), tonic, onsets, amps


def _run_eda(proc, x, t, n):
    events, tonic = [], np.empty_like(x)
    for i in range(0, len(x), n):
        events += proc.process(x[i:i + n], t[i:i + n])
        tonic[i:i + n] = proc.tonic_trace
    return events, tonic


@pytest.mark.parametrize("fs", [4.0, 32.0, 1000.0])
def test_eda_scrs_and_tonic(fs):
    t, x, true_tonic, onsets, amps = _synthetic_eda(fs)
    events, tonic = _run_eda(EDAProcessor(fs), x, t, max(1, int(fs / 4)))
    assert len(events) == len(onsets)
    ev_on = np.array([e.data["onset_t"] for e in events])
    for on, a in zip(onsets, amps):
        e = events[int(np.argmin(np.abs(ev_on - on)))]
        assert e.kind == "eda.scr" and e.t == e.data["onset_t"]
        assert abs(e.data["onset_t"] - on) < 1.0
        assert 1.0 <= e.data["detected_t"] - on <= 3.0          # reported 1-3 s after onset
        assert e.data["amplitude_uS"] == pytest.approx(a, rel=0.3, abs=0.03)
    m = t > 30.0
    err = np.abs(tonic[m] - true_tonic[m])
    print(f"\nEDA fs {fs:g}: tonic error median {np.median(err):.3f} max {err.max():.3f} µS")
    assert np.median(err) < 0.08 and err.max() < 0.2


def test_eda_same_answer_whatever_the_chunking_and_nans():
    fs = 32.0
    t, x, *_ = _synthetic_eda(fs, dur_s=120.0)
    x[100:110] = np.nan
    x[0] = np.nan
    ref, ref_tonic = _run_eda(EDAProcessor(fs), x, t, len(x))
    for n in (1, 7, 333):
        got, tonic = _run_eda(EDAProcessor(fs), x, t, n)
        assert [e.to_dict() for e in got] == [e.to_dict() for e in ref]
        np.testing.assert_array_equal(tonic, ref_tonic)
    assert np.isfinite(ref_tonic[1:]).all()
