"""Online skin conductance (EDA, µS): tonic level, phasic part, skin-conductance responses.

Per sample, in one numba kernel:
  1. NaN/inf samples are replaced by the last valid value;
  2. causal 2nd-order Butterworth low-pass at `lowpass_hz` (1 Hz, below 0.4 fs at 4 Hz input),
     started at the first value; SCRs rise over 1-3 s so nothing of them is lost;
  3. tonic = asymmetric follower (a running lower envelope): it falls towards the signal with a
     short time constant `tonic_down_s` and rises with a long one `tonic_up_s`, so an SCR barely
     lifts it while a slow change of level is followed; phasic = low-passed - tonic;
  4. SCR detection on the slope d of the low-passed signal: an onset candidate is the latest
     sample with d <= `slope_low` (µS/s); when d rises above `slope_on` a response is rising;
     its peak is confirmed when d turns negative, and it counts as an SCR if the trough-to-peak
     amplitude is at least `min_amplitude` (µS). Overlapping SCRs are measured from the trough
     between them (the usual trough-to-peak convention).
An SCR is reported at its peak, i.e. its rise time (1-3 s) plus ~0.3 s of low-pass delay after
its onset; the event's `t` is the onset, `data` has onset, peak, amplitude and detection times.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.signal import butter, sosfilt_zi

from signals.chunk import one_channel
from signals.events import Event
from signals.resp import _sos_step

(_LAST, _HAVE, _TONIC, _YPREV, _RISING, _ON_T, _ON_Y, _PK_T, _PK_Y) = range(9)
_STATE_LEN = 9
(_P_FS, _P_A_UP, _P_A_DOWN, _P_SLOPE_ON, _P_SLOPE_LOW, _P_MIN_AMP) = range(6)


@njit(cache=True)
def _eda_kernel(x, t, sos, zi, zi_unit, st, par, tonic_out, phasic_out, ev):
    """Process a chunk; per-sample tonic/phasic into the outputs, SCRs into rows of ev
    (onset_t, peak_t, amplitude, detected_t). Returns the number of SCRs."""
    k = 0
    for i in range(x.shape[0]):
        v = x[i]
        if math.isnan(v) or math.isinf(v):
            if st[_HAVE] == 0.0:
                tonic_out[i] = np.nan
                phasic_out[i] = np.nan
                continue
            v = st[_LAST]
        st[_LAST] = v
        if st[_HAVE] == 0.0:
            st[_HAVE] = 1.0
            for s in range(zi.shape[0]):
                zi[s, 0] = zi_unit[s, 0] * v
                zi[s, 1] = zi_unit[s, 1] * v
            st[_TONIC] = v
            st[_YPREV] = v
            st[_ON_T] = t[i]
            st[_ON_Y] = v
        y = _sos_step(sos, zi, v)
        a = par[_P_A_DOWN] if y < st[_TONIC] else par[_P_A_UP]
        st[_TONIC] += a * (y - st[_TONIC])
        tonic_out[i] = st[_TONIC]
        phasic_out[i] = y - st[_TONIC]
        d = (y - st[_YPREV]) * par[_P_FS]
        st[_YPREV] = y
        if st[_RISING] == 0.0:
            if d <= par[_P_SLOPE_LOW]:
                st[_ON_T] = t[i]
                st[_ON_Y] = y
            elif d > par[_P_SLOPE_ON]:
                st[_RISING] = 1.0
                st[_PK_T] = t[i]
                st[_PK_Y] = y
        else:
            if y > st[_PK_Y]:
                st[_PK_T] = t[i]
                st[_PK_Y] = y
            if d < 0.0:
                amp = st[_PK_Y] - st[_ON_Y]
                if amp >= par[_P_MIN_AMP]:
                    ev[k, 0] = st[_ON_T]
                    ev[k, 1] = st[_PK_T]
                    ev[k, 2] = amp
                    ev[k, 3] = t[i]
                    k += 1
                st[_RISING] = 0.0
                st[_ON_T] = t[i]
                st[_ON_Y] = y
    return k


class EDAProcessor:
    """Streaming EDA processor (method in the module docstring).

    `process(x, t)` takes samples in µS, (n,) or (n, channels) (column `channel`), and LSL time
    stamps, and returns the SCR events ("eda.scr") completed in this chunk. `tonic` and `phasic`
    are the latest values (µS); `tonic_trace` / `phasic_trace` are the per-sample values of the
    last chunk (views, overwritten by the next call). A change of channel count resets the state.
    """

    def __init__(self, fs: float, lowpass_hz: float = 1.0, tonic_up_s: float = 30.0,
                 tonic_down_s: float = 1.0, slope_on: float = 0.02, slope_low: float = 0.01,
                 min_amplitude: float = 0.02, channel: int = 0, source: str = "eda"):
        if not 2.0 <= fs <= 10000.0:
            raise ValueError(f"EDA sampling rate {fs} Hz is out of range")
        self.fs = float(fs)
        self.channel = int(channel)
        self.source = source
        fc = min(lowpass_hz, 0.4 * self.fs)
        self._sos = np.ascontiguousarray(butter(2, fc, btype="lowpass", fs=self.fs, output="sos"))
        self._zi_unit = np.ascontiguousarray(sosfilt_zi(self._sos))
        self._zi = np.zeros_like(self._zi_unit)
        self._st = np.zeros(_STATE_LEN)
        self._par = np.array([self.fs, 1.0 - math.exp(-1.0 / (tonic_up_s * self.fs)),
                              1.0 - math.exp(-1.0 / (tonic_down_s * self.fs)),
                              slope_on, slope_low, min_amplitude])
        self._tonic = np.zeros(0)
        self._phasic = np.zeros(0)
        self._ev = np.zeros((0, 4))
        self.reset()
        self.process(np.zeros(0), np.zeros(0))   # compile (or load the cache) before the loop

    def reset(self) -> None:
        self._st[:] = 0.0
        self._zi[:] = 0.0
        self._n_channels: int | None = None
        self._n_last = 0

    @property
    def tonic(self) -> float:
        return float(self._st[_TONIC]) if self._st[_HAVE] else math.nan

    @property
    def phasic(self) -> float:
        return float(self._st[_YPREV] - self._st[_TONIC]) if self._st[_HAVE] else math.nan

    @property
    def tonic_trace(self) -> np.ndarray:
        return self._tonic[: self._n_last]

    @property
    def phasic_trace(self) -> np.ndarray:
        return self._phasic[: self._n_last]

    def process(self, x, t) -> list[Event]:
        x, t = one_channel(self, x, t)
        n = len(x)
        if len(self._tonic) < n:
            m = max(n, 2 * len(self._tonic))
            self._tonic = np.empty(m)
            self._phasic = np.empty(m)
            self._ev = np.empty((m, 4))
        self._n_last = n
        k = _eda_kernel(x, t, self._sos, self._zi, self._zi_unit, self._st, self._par,
                        self._tonic, self._phasic, self._ev)
        return [Event(float(on), "eda.scr", self.source, f"SCR {amp:.3f} µS",
                      {"onset_t": float(on), "peak_t": float(pk), "amplitude_uS": float(amp),
                       "detected_t": float(det)})
                for on, pk, amp, det in self._ev[:k]]
