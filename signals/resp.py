"""Online respiration: rate (breaths/min), phase, and exhalation onsets for gated stimulation.

Per sample, in one numba kernel (state in preallocated arrays, no allocation):
  1. NaN samples are replaced by the last valid value (an IIR must never see a NaN);
  2. causal running median over `median_s` (80 ms): removes the few-sample spikes of ICU
     impedance channels; it adds about half its length (~40 ms) of delay on slopes;
  3. causal Butterworth band-pass `band` (0.1-1 Hz, 2nd order per edge), started from the
     step-response steady state of the first value so that the DC offset gives no transient.
     A band-pass has zero phase at its centre (~0.32 Hz = 19 breaths/min), so the filter
     moves breath peaks little at ordinary rates (a slight lead below, a lag above);
  4. turning points with hysteresis: during inspiration the running maximum is tracked; the
     signal falling `hysteresis` x RMS below it confirms an exhalation onset at the time of that
     maximum (end-inspiration), and the minimum is tracked the same way for inspiration.
     RMS is an exponential mean square of the band-passed signal (`rms_tau_s`), so the
     threshold adapts to the amplitude; noise bumps smaller than the threshold are ignored;
  5. an onset closer than max(`min_breath_s`, `refractory` x mean breath period) to the
     previous one is not reported (artefact bursts on ICU channels otherwise double-count).
Convention: inspiration makes the signal rise (impedance pneumography, belts); for a sensor
with the other polarity pass `invert=True`.

Delay (what gating sees): an onset is known only once the signal has fallen by the hysteresis,
so it is reported after the true end-inspiration. Measured on the synthetic breathing of
tests/test_resp_eda.py (12-20 breaths/min, inspiration 40 % of the cycle, 5 % noise): median
0.36-0.39 s from true onset to detection (p95 0.42-0.46 s) at 25, 125 and 500 Hz, with the
onset time itself (the maximum) within ~20 ms median. Nearly all of it is the hysteresis fall
time: hysteresis=0.2 gives ~0.29 s but counts more noise bumps as breaths on noisy ICU data.
A 1 s burst from the detection still falls inside a 2-3 s exhalation.

Rate: 60 * (n - 1) / (t_last - t_first) over the exhalation onsets within the last
`rate_window_s` of data time; NaN with fewer than two onsets in the window (apnoea, no signal).
"""
from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np

from signals.chunk import one_channel
from numba import njit
from scipy.signal import butter, sosfilt_zi

# kernel state layout (float64 array)
(_LAST, _HAVE, _MED_HEAD, _MED_N, _MS, _PHASE, _EXT_V, _EXT_T, _WARM, _LAST_ON, _PERIOD) = range(11)
_STATE_LEN = 11
_NONE = np.zeros(0)   # `process` returns fresh views of it: cheaper than a copy
# parameter layout
(_P_MS_ALPHA, _P_HYST, _P_WARM_N, _P_SIGN, _P_MIN_BREATH, _P_REFRACT) = range(6)


@njit(cache=True)
def _median_push(ring, srt, st, v):
    """Insert v into the running median window (ring = arrival order, srt = sorted)."""
    w = ring.shape[0]
    n = int(st[_MED_N])
    head = int(st[_MED_HEAD])
    if n == w:
        old = ring[head]
        j = 0
        while srt[j] != old:
            j += 1
        while j < n - 1:
            srt[j] = srt[j + 1]
            j += 1
        n -= 1
    j = n
    while j > 0 and srt[j - 1] > v:
        srt[j] = srt[j - 1]
        j -= 1
    srt[j] = v
    n += 1
    ring[head] = v
    st[_MED_HEAD] = (head + 1) % w
    st[_MED_N] = n
    return srt[n // 2]


@njit(cache=True)
def _sos_step(sos, zi, x):
    """One sample through cascaded biquads (transposed direct form II)."""
    for s in range(sos.shape[0]):
        y = sos[s, 0] * x + zi[s, 0]
        zi[s, 0] = sos[s, 1] * x - sos[s, 4] * y + zi[s, 1]
        zi[s, 1] = sos[s, 2] * x - sos[s, 5] * y
        x = y
    return x


@njit(cache=True)
def _resp_kernel(x, t, sos, zi, zi_unit, ring, srt, st, par, y_out, on_t, det_t):
    """Process a chunk; write filtered samples to y_out and exhalation onsets (time of the
    maximum, time of detection) to on_t/det_t. Returns the number of onsets found."""
    k = 0
    for i in range(x.shape[0]):
        v = x[i]
        if math.isnan(v) or math.isinf(v):
            if st[_HAVE] == 0.0:
                y_out[i] = np.nan
                continue
            v = st[_LAST]
        st[_LAST] = v
        m = _median_push(ring, srt, st, v * par[_P_SIGN])
        if st[_HAVE] == 0.0:
            st[_HAVE] = 1.0
            for s in range(zi.shape[0]):
                zi[s, 0] = zi_unit[s, 0] * m
                zi[s, 1] = zi_unit[s, 1] * m
        y = _sos_step(sos, zi, m)
        y_out[i] = y
        st[_MS] += par[_P_MS_ALPHA] * (y * y - st[_MS])
        if st[_WARM] < par[_P_WARM_N]:
            st[_WARM] += 1.0
            st[_EXT_V] = y
            st[_EXT_T] = t[i]
            continue
        h = par[_P_HYST] * math.sqrt(st[_MS])
        if st[_PHASE] >= 0.0:  # inspiration (or not yet known): track the maximum
            if y >= st[_EXT_V]:
                st[_EXT_V] = y
                st[_EXT_T] = t[i]
            elif y < st[_EXT_V] - h:
                gap = st[_EXT_T] - st[_LAST_ON]
                if st[_PHASE] > 0.0 and gap >= max(par[_P_MIN_BREATH], par[_P_REFRACT] * st[_PERIOD]):
                    on_t[k] = st[_EXT_T]
                    det_t[k] = t[i]
                    k += 1
                    if math.isfinite(st[_LAST_ON]):
                        st[_PERIOD] = gap if st[_PERIOD] == 0.0 else st[_PERIOD] + 0.3 * (gap - st[_PERIOD])
                    st[_LAST_ON] = st[_EXT_T]
                st[_PHASE] = -1.0
                st[_EXT_V] = y
                st[_EXT_T] = t[i]
        else:  # exhalation: track the minimum
            if y <= st[_EXT_V]:
                st[_EXT_V] = y
                st[_EXT_T] = t[i]
            elif y > st[_EXT_V] + h:
                st[_PHASE] = 1.0
                st[_EXT_V] = y
                st[_EXT_T] = t[i]
    return k


class RespirationProcessor:
    """Streaming respiration processor (see the module docstring for the method and delay).

    `process(x, t)` takes samples (n,) or (n, channels) (column `channel` is used) and their
    LSL time stamps; it returns the exhalation onset times (s, time of end-inspiration) found in
    this chunk, and keeps `detected_t` (when each was found), `rate_bpm`, `phase`
    ("inspiration", "exhalation" or "unknown"). A change of channel count resets the state;
    a new sampling rate needs a new processor (`fs` is fixed).
    """

    def __init__(self, fs: float, band: tuple[float, float] = (0.1, 1.0), order: int = 2,
                 median_s: float = 0.08, hysteresis: float = 0.3, rms_tau_s: float = 15.0,
                 warmup_s: float = 2.0, rate_window_s: float = 60.0, min_breath_s: float = 1.2,
                 refractory: float = 0.4, channel: int = 0, invert: bool = False):
        if not 4.0 <= fs <= 10000.0:
            raise ValueError(f"respiration sampling rate {fs} Hz is out of range")
        self.fs = float(fs)
        self.channel = int(channel)
        self.rate_window_s = float(rate_window_s)
        hi = min(band[1], 0.45 * self.fs)
        self._sos = np.ascontiguousarray(butter(order, (band[0], hi), btype="bandpass",
                                                fs=self.fs, output="sos"))
        self._zi_unit = np.ascontiguousarray(sosfilt_zi(self._sos))
        self._zi = np.zeros_like(self._zi_unit)
        w = max(3, int(round(median_s * self.fs)) | 1)
        self._ring = np.zeros(w)
        self._srt = np.zeros(w)
        self._st = np.zeros(_STATE_LEN)
        self._par = np.array([1.0 - math.exp(-1.0 / (rms_tau_s * self.fs)), hysteresis,
                              warmup_s * self.fs, -1.0 if invert else 1.0, min_breath_s, refractory])
        self._y = np.zeros(0)
        self._on = np.zeros(0)
        self._det = np.zeros(0)
        self.reset()
        self.process(np.zeros(0), np.zeros(0))   # compile (or load the cache) before the loop

    def reset(self) -> None:
        self._st[:] = 0.0
        self._st[_LAST_ON] = -math.inf
        self._zi[:] = 0.0
        self._onsets: list[float] = []
        self._n_channels: int | None = None
        self._t_now = -math.inf
        self._n_last = 0
        self.detected_t = np.zeros(0)

    @property
    def phase(self) -> str:
        p = self._st[_PHASE]
        return "inspiration" if p > 0 else "exhalation" if p < 0 else "unknown"

    @property
    def rate_bpm(self) -> float:
        on = self._onsets   # increasing: the kernel spaces onsets by at least min_breath_s
        i = bisect_right(on, self._t_now - self.rate_window_s)
        n = len(on) - i
        if n < 2 or on[-1] <= on[i]:
            return math.nan
        return 60.0 * (n - 1) / (on[-1] - on[i])

    @property
    def filtered(self) -> np.ndarray:
        """Band-passed samples of the last chunk (a view, overwritten by the next call)."""
        return self._y[: self._n_last]

    def process(self, x, t) -> np.ndarray:
        x, t = one_channel(self, x, t)
        n = len(x)
        if len(self._y) < n:
            self._y = np.empty(max(n, 2 * len(self._y)))
            self._on = np.empty_like(self._y)
            self._det = np.empty_like(self._y)
        self._n_last = n
        k = _resp_kernel(x, t, self._sos, self._zi, self._zi_unit, self._ring, self._srt,
                         self._st, self._par, self._y, self._on, self._det)
        if n:
            self._t_now = float(t[-1])
        if not k:   # most chunks hold no onset: fresh views of one empty array, no copies
            self.detected_t = _NONE.view()
            return _NONE.view()
        onsets = self._on[:k].copy()
        self.detected_t = self._det[:k].copy()
        self._onsets.extend(onsets.tolist())
        cut = self._t_now - self.rate_window_s
        while self._onsets and self._onsets[0] <= cut:
            self._onsets.pop(0)
        return onsets
