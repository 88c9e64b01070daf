"""Heart-rate variability: offline features, a streaming per-beat window, an ANI-like HF index.

Time domain (Task Force 1996), over the RR intervals `rr` (ms) of a window:
    rmssd_ms    sqrt(mean(diff(rr)**2))
    sdnn_ms     std(rr, ddof=1)
    pnn50       100 * count(|diff(rr)| > 50 ms) / len(diff(rr))        (percent)
    mean_hr_bpm 60000 / mean(rr)

Frequency domain, defined the Kubios way (Tarvainen et al., Kubios HRV user's guide):
RR(t) resampled at 4 Hz by cubic spline through the beat times, linear trend removed, Welch
periodogram with 256 s Hann windows and 50% overlap (a record shorter than 256 s is one window
the length of the record), and the PSD (ms^2/Hz) integrated by the trapezoid rule over
    LF 0.04-0.15 Hz, HF 0.15-0.40 Hz  ->  lf_ms2, hf_ms2, lf_hf; hf_peak_hz = argmax of PSD in HF.
(Kubios detrends with smoothness priors; a linear detrend is used here, which matters only
below the LF band.) Records shorter than MIN_FREQ_DURATION_S give NaN frequency features.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit
from scipy.integrate import trapezoid
from scipy.signal import butter, sosfiltfilt

LF_BAND = (0.04, 0.15)
HF_BAND = (0.15, 0.40)
RESAMPLE_HZ = 4.0
WELCH_WINDOW_S = 256.0
MIN_FREQ_DURATION_S = 50.0      # two cycles of the lowest LF frequency

TIME_KEYS = ("rmssd_ms", "sdnn_ms", "pnn50", "mean_hr_bpm")
FREQ_KEYS = ("lf_ms2", "hf_ms2", "lf_hf", "hf_peak_hz")


def _nan_features() -> dict:
    return {k: math.nan for k in TIME_KEYS + FREQ_KEYS}


def _beat_times(rr: np.ndarray, t_s) -> np.ndarray:
    return np.cumsum(rr) / 1000.0 if t_s is None else np.asarray(t_s, dtype=np.float64)


@njit(cache=True)
def _resampled_detrended(t, y, fs, x, w):
    """x[k] = the not-a-knot cubic spline through (t, y) at t[0] + k / fs, less the least-squares
    line through x: scipy's `detrend(CubicSpline(t, y)(grid))` in one pass, without its Python
    overhead (about a millisecond per call). Needs len(t) >= 4; w is (4, len(t)) scratch."""
    m = t.shape[0]
    dx, sl, cp, s = w[0], w[1], w[2], w[3]
    for i in range(m - 1):
        dx[i] = t[i + 1] - t[i]
        sl[i] = (y[i + 1] - y[i]) / dx[i]
    # First derivatives s at the knots: the tridiagonal system of scipy's CubicSpline, with
    # not-a-knot rows at both ends, by forward elimination (cp: reduced upper diagonal, s:
    # reduced right-hand side) and back substitution.
    d = t[2] - t[0]
    cp[0] = d / dx[1]
    s[0] = ((dx[0] + 2.0 * d) * dx[1] * sl[0] + dx[0] ** 2 * sl[1]) / d / dx[1]
    for i in range(1, m - 1):
        den = 2.0 * (dx[i - 1] + dx[i]) - dx[i] * cp[i - 1]
        cp[i] = dx[i - 1] / den
        s[i] = (3.0 * (dx[i] * sl[i - 1] + dx[i - 1] * sl[i]) - dx[i] * s[i - 1]) / den
    d = t[m - 1] - t[m - 3]
    rhs = (dx[m - 2] ** 2 * sl[m - 3] + (2.0 * d + dx[m - 2]) * dx[m - 3] * sl[m - 2]) / d
    s[m - 1] = (rhs - d * s[m - 2]) / (dx[m - 3] - d * cp[m - 2])
    for i in range(m - 2, -1, -1):
        s[i] -= cp[i] * s[i + 1]
    # the Hermite cubic of each interval, evaluated on the grid (the last one extrapolates)
    n = x.shape[0]
    j = 0
    for k in range(n):
        tk = t[0] + k / fs
        while j < m - 2 and tk >= t[j + 1]:
            j += 1
        h = dx[j]
        c = (s[j] + s[j + 1] - 2.0 * sl[j]) / h
        u = tk - t[j]
        x[k] = y[j] + u * (s[j] + u * ((sl[j] - s[j]) / h - c + u * (c / h)))
    mean_k = 0.5 * (n - 1)
    mean_x = 0.0
    for k in range(n):
        mean_x += x[k]
    mean_x /= n
    sxy = 0.0
    sxx = 0.0
    for k in range(n):
        sxy += (k - mean_k) * (x[k] - mean_x)
        sxx += (k - mean_k) ** 2
    slope = sxy / sxx if sxx > 0.0 else 0.0
    for k in range(n):
        x[k] -= mean_x + slope * (k - mean_k)


@lru_cache(maxsize=8)
def _welch_plan(nper: int) -> tuple:
    """What the spectrum of segments of `nper` samples needs beyond the samples: the Hann
    window, its power, the frequency grid and the LF and HF masks and frequencies. Built once
    per length (a window of 1024 cosines and the masks cost more than the FFT), read-only."""
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(nper) / nper)
    f = np.arange(nper // 2 + 1) * (RESAMPLE_HZ / nper)
    lf_m = (f >= LF_BAND[0]) & (f < LF_BAND[1])
    hf_m = (f >= HF_BAND[0]) & (f < HF_BAND[1])
    plan = (win, float(np.dot(win, win)), f, lf_m, hf_m, f[lf_m], f[hf_m])
    for a in plan:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    return plan


def _welch_hann(x: np.ndarray, nper: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy's `welch(x, RESAMPLE_HZ, "hann", nper, nper // 2)`: the mean one-sided periodogram
    (ms^2/Hz) of the mean-removed, Hann-windowed, half-overlapping segments."""
    step = nper - nper // 2
    win, win_power, f = _welch_plan(nper)[:3]
    # the segments as a strided view of x (what sliding_window_view(x, nper)[::step] is,
    # without its argument checks)
    seg = np.lib.stride_tricks.as_strided(x, ((len(x) - nper) // step + 1, nper),
                                          (x.strides[0] * step, x.strides[0]), writeable=False)
    seg = seg - seg.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(seg * win, axis=1)
    p = (spec.real ** 2 + spec.imag ** 2).mean(axis=0) / (RESAMPLE_HZ * win_power)
    p[1:nper // 2 + nper % 2] *= 2.0   # the Nyquist bin of an even length is not doubled
    return f, p


def frequency_features(rr_ms, t_s) -> dict:
    """LF, HF, LF/HF and HF peak of RR intervals `rr_ms` ending at beat times `t_s` (Kubios way)."""
    rr = np.asarray(rr_ms, dtype=np.float64)
    t = np.asarray(t_s, dtype=np.float64)
    ok = np.isfinite(rr) & np.isfinite(t)
    rr, t = rr[ok], t[ok]
    if len(t) > 1:   # the spline needs strictly increasing knots
        keep = np.concatenate(([True], np.diff(t) > 0))
        rr, t = rr[keep], t[keep]
    out = {k: math.nan for k in FREQ_KEYS}
    if len(t) < 4 or t[-1] - t[0] < MIN_FREQ_DURATION_S:
        return out
    n = int(math.floor((t[-1] - t[0]) * RESAMPLE_HZ)) + 1
    x = np.empty(n)
    _resampled_detrended(t, rr, RESAMPLE_HZ, x, np.empty((4, len(t))))
    nper = min(int(WELCH_WINDOW_S * RESAMPLE_HZ), n)
    f, p = _welch_hann(x, nper)
    lf_m, hf_m, f_lf, f_hf = _welch_plan(nper)[3:]
    # numpy's trapezoid is scipy's arithmetic without its array-API dispatch
    lf = float(np.trapezoid(p[lf_m], f_lf))
    hf = float(np.trapezoid(p[hf_m], f_hf))
    out["lf_ms2"] = lf
    out["hf_ms2"] = hf
    out["lf_hf"] = lf / hf if hf > 0 else math.nan
    out["hf_peak_hz"] = float(f_hf[np.argmax(p[hf_m])]) if len(f_hf) else math.nan
    return out


def hrv_features(rr_ms, t_s=None) -> dict:
    """HRV features of one window of RR intervals (ms); `t_s` are the beat times (s), by default
    the cumulative sum of the intervals. Keys and definitions: see the module docstring."""
    rr = np.asarray(rr_ms, dtype=np.float64)
    t = _beat_times(rr, t_s)
    ok = np.isfinite(rr)
    rr, t = rr[ok], t[ok]
    out = _nan_features()
    if len(rr) < 2:
        return out
    d = np.diff(rr)
    out["rmssd_ms"] = float(np.sqrt(np.mean(d * d)))
    out["sdnn_ms"] = float(np.std(rr, ddof=1))
    out["pnn50"] = float(100.0 * np.count_nonzero(np.abs(d) > 50.0) / len(d))
    out["mean_hr_bpm"] = float(60000.0 / np.mean(rr))
    out.update(frequency_features(rr, t))
    return out


# ---- streaming window ---------------------------------------------------------------------
# State layout of the beat ring (float64 array), so the kernel needs no Python objects.
_HEAD, _COUNT, _REF, _S1, _S2, _SD2, _N50, _SINCE_RESYNC = range(8)
_STATE_LEN = 8


@njit(cache=True)
def _ring_resync(st, tbuf, rrbuf):
    """Recompute the running sums from the buffer: bounds float drift from add/remove."""
    cap = tbuf.shape[0]
    n = int(st[_COUNT])
    first = (int(st[_HEAD]) - n) % cap
    ref = rrbuf[first] if n > 0 else 0.0
    s1 = 0.0
    s2 = 0.0
    sd2 = 0.0
    n50 = 0.0
    prev = 0.0
    for k in range(n):
        v = rrbuf[(first + k) % cap]
        c = v - ref
        s1 += c
        s2 += c * c
        if k > 0:
            d = v - prev
            sd2 += d * d
            if abs(d) > 50.0:
                n50 += 1.0
        prev = v
    st[_REF] = ref
    st[_S1] = s1
    st[_S2] = s2
    st[_SD2] = sd2
    st[_N50] = n50
    st[_SINCE_RESYNC] = 0.0


@njit(cache=True)
def _ring_push(st, tbuf, rrbuf, t, rr, window_s):
    """Add one beat, drop beats at or before t - window_s; keep the time-domain sums current."""
    cap = tbuf.shape[0]
    n = int(st[_COUNT])
    head = int(st[_HEAD])
    if n == 0:
        st[_REF] = rr
    ref = st[_REF]
    while n > 0 and (n == cap or tbuf[(head - n) % cap] <= t - window_s):
        first = (head - n) % cap
        c = rrbuf[first] - ref
        st[_S1] -= c
        st[_S2] -= c * c
        if n > 1:
            d = rrbuf[(first + 1) % cap] - rrbuf[first]
            st[_SD2] -= d * d
            if abs(d) > 50.0:
                st[_N50] -= 1.0
        n -= 1
    if n > 0:
        d = rr - rrbuf[(head - 1) % cap]
        st[_SD2] += d * d
        if abs(d) > 50.0:
            st[_N50] += 1.0
    c = rr - ref
    st[_S1] += c
    st[_S2] += c * c
    tbuf[head] = t
    rrbuf[head] = rr
    st[_HEAD] = (head + 1) % cap
    st[_COUNT] = n + 1
    st[_SINCE_RESYNC] += 1.0
    if st[_SINCE_RESYNC] >= cap:
        _ring_resync(st, tbuf, rrbuf)


@njit(cache=True)
def _ring_time_features(st, out):
    """rmssd, sdnn, pnn50, mean HR from the running sums into out[0:4] (NaN below 2 beats)."""
    n = st[_COUNT]
    if n < 2:
        out[:] = np.nan
        return
    mean_c = st[_S1] / n
    var = max((st[_S2] - st[_S1] * mean_c) / (n - 1.0), 0.0)
    out[0] = math.sqrt(max(st[_SD2], 0.0) / (n - 1.0))
    out[1] = math.sqrt(var)
    out[2] = 100.0 * st[_N50] / (n - 1.0)
    out[3] = 60000.0 / (st[_REF] + mean_c)


def _warm_up_kernels() -> None:
    """Compile (or load from the cache) the beat kernels before the loop, on scratch state."""
    st, buf = np.zeros(_STATE_LEN), np.zeros(2)
    _ring_push(st, buf, buf.copy(), 0.0, 1000.0, 1.0)
    _ring_time_features(st, np.zeros(4))


def _unroll(st: np.ndarray, tbuf: np.ndarray, rrbuf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cap = len(tbuf)
    n = int(st[_COUNT])
    idx = (int(st[_HEAD]) - n + np.arange(n)) % cap
    return tbuf[idx], rrbuf[idx]


class StreamingHRV:
    """HRV over the beats of the last `window_s` seconds, updated per beat.

    `update(t_s, rr_ms)` takes the time of the beat that ends the interval and the interval;
    the window holds the beats with t > t_last - window_s. Time-domain features are kept by
    running sums in a numba kernel (O(1) per beat, resynchronised once per buffer length);
    the frequency features are recomputed by `features()` only when the newest beat is at
    least `freq_every_s` later than at the previous computation (the spline + Welch costs
    about a millisecond, far too much per beat, fine every few seconds).
    A beat time that goes back (clock reset, new recording) resets the window.
    """

    def __init__(self, window_s: float = 300.0, freq_every_s: float = 5.0, max_hr_bpm: float = 240.0):
        self.window_s = float(window_s)
        self.freq_every_s = float(freq_every_s)
        cap = int(self.window_s * max_hr_bpm / 60.0) + 8
        self._t = np.zeros(cap)
        self._rr = np.zeros(cap)
        self._st = np.zeros(_STATE_LEN)
        self._time = np.full(4, np.nan)
        _warm_up_kernels()
        self.reset()

    def reset(self) -> None:
        self._st[:] = 0.0
        self._t_last = -math.inf
        self._freq = {k: math.nan for k in FREQ_KEYS}
        self._freq_t = -math.inf
        self._features: dict | None = None

    @property
    def n_beats(self) -> int:
        return int(self._st[_COUNT])

    def update(self, t_s: float, rr_ms: float) -> None:
        if not (math.isfinite(t_s) and math.isfinite(rr_ms)) or rr_ms <= 0:
            return
        if t_s <= self._t_last:
            self.reset()
        self._t_last = t_s
        _ring_push(self._st, self._t, self._rr, t_s, rr_ms, self.window_s)
        self._features = None

    def features(self) -> dict:
        # Only a beat changes them: a tick faster than the heart often comes without one.
        if self._features is None:
            _ring_time_features(self._st, self._time)
            out = dict(zip(TIME_KEYS, self._time.tolist()))
            if self.n_beats and self._t_last - self._freq_t >= self.freq_every_s:
                t, rr = _unroll(self._st, self._t, self._rr)
                self._freq = frequency_features(rr, t)
                self._freq_t = self._t_last
            out.update(self._freq)
            self._features = out
        return self._features.copy()

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """(beat times, RR) currently in the window, oldest first (copies)."""
        return _unroll(self._st, self._t, self._rr)


# ---- ANI-like HF index --------------------------------------------------------------------
class HFIndex:
    """ANI-like parasympathetic index, 0-100 (after Logier et al. 2010, Jeanne et al. 2009).

    Definition used here, every `update_s` of beat time over the last `window_s` (64 s):
      1. RR(t) linearly interpolated at 8 Hz on the window (512 samples);
      2. centred and normalised: x = (RR - mean) / sqrt(sum((RR - mean)^2)), so the index
         depends on the shape of the variability, not its size;
      3. band-passed 0.15-0.40 Hz (4th-order Butterworth, zero-phase inside the window: the
         index uses only past beats, so it is still causal);
      4. upper and lower envelopes through the local maxima and minima (linear), and the area
         between them (s x normalised units) in four 16 s sub-windows; AUCmin = the smallest;
      5. index = 100 * (5.1 * AUCmin + 1.2) / 12.8, clipped to 0-100 (ANI's constants).
    A pure sinusoid in HF gives 89 in theory (85 on the synthetic RR of the tests); an RR series
    with no HF content gives 9-12.
    Differs from the commercial ANI in the filter (theirs is a wavelet) and resampling details.
    NaN until `window_s` of beats has been seen, or with a flat RR series.
    """

    FS = 8.0

    def __init__(self, window_s: float = 64.0, update_s: float = 1.0, max_hr_bpm: float = 240.0):
        self.window_s = float(window_s)
        self.update_s = float(update_s)
        self._n = int(round(self.window_s * self.FS))
        self._sos = butter(4, HF_BAND, btype="bandpass", fs=self.FS, output="sos")
        cap = int((self.window_s + 10.0) * max_hr_bpm / 60.0) + 8
        self._t = np.zeros(cap)
        self._rr = np.zeros(cap)
        self._st = np.zeros(_STATE_LEN)
        _warm_up_kernels()
        self.reset()

    def reset(self) -> None:
        self._st[:] = 0.0
        self._t_first = math.nan
        self._t_last = -math.inf
        self._next = -math.inf
        self.value = math.nan
        self.t_value = math.nan

    def update(self, t_s: float, rr_ms: float) -> float | None:
        """Add a beat; return the new index when an update time has passed, else None."""
        if not (math.isfinite(t_s) and math.isfinite(rr_ms)) or rr_ms <= 0:
            return None
        if t_s <= self._t_last:
            self.reset()
        if not math.isfinite(self._t_first):
            self._t_first = t_s
        self._t_last = t_s
        # keep a few seconds before the window so the interpolation has a left neighbour
        _ring_push(self._st, self._t, self._rr, t_s, rr_ms, self.window_s + 10.0)
        if t_s < self._next or t_s - self._t_first < self.window_s:
            return None
        self._next = (math.floor(t_s / self.update_s) + 1.0) * self.update_s
        self.value = self._compute(t_s)
        self.t_value = t_s
        return self.value

    def _compute(self, t_end: float) -> float:
        t, rr = _unroll(self._st, self._t, self._rr)
        grid = t_end - self.window_s + np.arange(1, self._n + 1) / self.FS
        x = np.interp(grid, t, rr)
        x -= x.mean()
        s = math.sqrt(float(np.dot(x, x)))
        if s <= 0:
            return math.nan
        y = sosfiltfilt(self._sos, x / s)
        dy = np.diff(y)
        i_max = np.flatnonzero((dy[:-1] > 0) & (dy[1:] <= 0)) + 1
        i_min = np.flatnonzero((dy[:-1] < 0) & (dy[1:] >= 0)) + 1
        if len(i_max) == 0 or len(i_min) == 0:
            return 100.0 * 1.2 / 12.8
        k = np.arange(self._n)
        width = np.interp(k, i_max, y[i_max]) - np.interp(k, i_min, y[i_min])
        auc_min = min(float(trapezoid(w, dx=1.0 / self.FS)) for w in np.array_split(width, 4))
        return float(np.clip(100.0 * (5.1 * auc_min + 1.2) / 12.8, 0.0, 100.0))
