"""ECG waveform synthesised beat by beat from R-peak times, for the virtual patient.

After ECGSYN (McSharry et al., IEEE TBME 2003): each beat is a sum of Gaussian P, Q, R, S and
T waves placed on the beat's phase, with ECGSYN's angles and widths (at RR = 1 s) turned into
times. P moves weakly and T with the square root of RR (Bazett-like QT); the QRS keeps its
width, as it does in a heart. The R wave is nudged so that the summed waveform peaks exactly at
the given beat time, which is the truth a detector is scored against.

Premature beats (RR under 80% of the last normal RR, like the patient's ectopic beats) get a
ventricular shape: no P wave, a wide QRS and an inverted T.

Noise a rig sees: respiratory baseline wander and amplitude modulation, slow electrode drift,
mains hum, bursts of muscle (EMG) noise and rare lead-off gaps. During a gap the amplifier
sends a flat line at 0 mV with a little noise (what most LSL amplifier apps send when an
electrode comes off; NaN would break downstream filters and rail values depend on the device),
and on reconnection the baseline jumps and settles back, as electrodes do.

The P wave starts up to `delay` seconds before its R peak, so a beat can only be drawn once it
is known: `render(t_start, t_end, ...)` returns the samples of [t_start - delay, t_end - delay).
Consecutive calls tile the fixed grid k/fs exactly, and the output is bit-identical however
the time is cut into calls (beats still being drawn are kept, noise state is carried).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# --- morphology (ECGSYN at RR = 1 s): P, Q, R, S, T ---
_MU = np.radians([-70.0, -15.0, 0.0, 15.0, 100.0]) / (2 * np.pi)   # s before/after R
# ECGSYN's widths b / 2pi in s, but P at 25 ms: its 0.25 rad (40 ms) is too wide for a direct sum
_SIGMA = np.array([0.025, 0.1 / (2 * np.pi), 0.1 / (2 * np.pi), 0.1 / (2 * np.pi),
                   0.4 / (2 * np.pi)])
_AMP = np.array([0.12, -0.10, 1.0, -0.25, 0.30])                    # mV, R scaled per patient
_RR_EXP = np.array([0.25, 0.0, 0.0, 0.0, 0.5])   # how each wave's time moves with RR
_RR_MIN, _RR_MAX = 0.3, 2.0                       # s, RR range the morphology follows
# A premature beat (RR under 80% of the last normal one) is drawn as a ventricular one: no P,
# no Q, a wide tall R, a deep S and an inverted T.
_PVC_WIDTH = np.array([1.0, 1.0, 2.2, 2.2, 1.2])
_PVC_AMP = np.array([0.0, 0.0, 1.2, 1.6, -1.3])
_PREMATURE = 0.8
_TRUNC = 4.5                                      # Gaussians end at this many sd (< 1e-4 of peak)

# per-beat row: centre[5], 1/sigma[5], amp[5], first and last time of the support
_ROW = 17
_PEND_CAP = 64

# fstate
(_RESP_PH, _RESP_HZ, _DRIFT, _SETTLE, _BURST_AMP, _RESP_S, _RESP_C, _HUM_S, _HUM_C,
 _NORMAL_RR) = range(10)
# istate
(_NPEND, _BURST_LEFT, _BURST_LEN, _NEXT_BURST, _GAP_LEFT, _NEXT_GAP, _GAP_START,
 _N_BURSTS, _N_GAPS, _GAP_SAMPLES, _LATE, _EV_N, _N_PVC) = range(13)
_EV_CAP = 32                                      # lead-off events kept between drains
# params
(_P_FS, _P_WHITE, _P_WANDER, _P_RESP_HZ, _P_DRIFT, _P_DRIFT_TAU, _P_HUM, _P_MAINS_HZ,
 _P_HUM_PH, _P_EMG_RATE, _P_EMG, _P_EMG_DUR, _P_GAP_RATE, _P_GAP_DUR, _P_SETTLE,
 _P_SETTLE_TAU, _P_AM, _P_R_MV, _P_JITTER) = range(19)


# Each synthesizer has its own xorshift64* generators (state in uint64[1] arrays), so that
# synthesizers never share a stream and every output is reproducible bit for bit. Normal
# deviates are approximate: the sum of four 16-bit uniforms of one draw (tails cut at 3.5 sd).
@njit(cache=True, inline="always")
def _step(x):
    """xorshift64* on a local state: returns (new state, output)."""
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    return x, x * np.uint64(0x2545F4914F6CDD1D)


@njit(cache=True, inline="always")
def _gauss(r):
    m = np.uint64(0xFFFF)
    tot = (r & m) + ((r >> np.uint64(16)) & m) + ((r >> np.uint64(32)) & m) + (r >> np.uint64(48))
    return (tot * (1.0 / 65536.0) - 2.0) * 1.7320508075688772


@njit(cache=True, inline="always")
def _unit(u):
    return ((u >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def _normal(s):
    x, u = _step(s[0])
    s[0] = x
    return _gauss(u)


@njit(cache=True)
def _beat_row(t, rr_ms, pvc, p, rng, row):
    """Wave centres, widths and amplitudes of one beat with R at time t."""
    rr = rr_ms * 1e-3
    if not (rr > _RR_MIN):           # also NaN
        rr = _RR_MIN if rr <= _RR_MIN else 1.0
    rr = min(rr, _RR_MAX)
    jit = p[_P_JITTER]
    for w in range(5):
        scale = rr ** _RR_EXP[w]
        a = _AMP[w] * p[_P_R_MV]
        if w != 2:
            a *= 1.0 + jit * _normal(rng)
        sd = _SIGMA[w] * (scale if w == 4 else 1.0)
        if pvc:
            a *= _PVC_AMP[w]
            sd *= _PVC_WIDTH[w]
        row[w] = t + _MU[w] * scale
        row[5 + w] = 1.0 / sd
        row[10 + w] = a
    # Nudge R so the sum peaks at t: f'(t) = 0 to first order.
    g = 0.0
    for w in range(5):
        if w != 2:
            d = (row[w] - t) * row[5 + w]
            g += row[10 + w] * d * row[5 + w] * math.exp(-0.5 * d * d)
    row[2] = t - g / (row[12] * row[7] * row[7])
    # The support, with the very expression _draw_beat uses, so both agree to the last bit.
    lo = np.inf
    hi = -np.inf
    for w in range(5):
        half = _TRUNC / row[5 + w]
        lo = min(lo, row[w] - half)
        hi = max(hi, row[w] + half)
    row[15] = lo
    row[16] = hi


@njit(cache=True)
def _draw_beat(row, k0, n, fs, out):
    for w in range(5):
        c = row[w]
        isd = row[5 + w]
        a = row[10 + w]
        half = _TRUNC / isd
        ka = max(k0, int(math.ceil((c - half) * fs)))
        kb = min(k0 + n - 1, int(math.floor((c + half) * fs)))
        for k in range(ka, kb + 1):
            d = (k / fs - c) * isd
            out[k - k0] += a * math.exp(-0.5 * d * d)


@njit(cache=True)
def _render(k0, n, fresh, new_t, new_rr, pend, row, fstate, istate, events, rng_noise,
            rng_beat, p, t_out, out):
    """Samples k0 .. k0+n-1 into t_out and out; carries pending beats and noise state."""
    fs = p[_P_FS]
    for j in range(n):
        out[j] = 0.0
    # Beats in time order: those still pending from earlier calls, then the new ones.
    npend = istate[_NPEND]
    for i in range(npend):
        _draw_beat(pend[i], k0, n, fs, out)
    kend = k0 + n
    keep = 0
    for i in range(npend):
        if math.floor(pend[i, 16] * fs) >= kend:
            pend[keep, :] = pend[i, :]
            keep += 1
    for i in range(new_t.shape[0]):
        rr = new_rr[i]
        normal = fstate[_NORMAL_RR]
        pvc = rr < _PREMATURE * normal          # False while normal is NaN
        if pvc:
            istate[_N_PVC] += 1
        elif not rr > 1.3 * normal:             # pauses do not reset what is normal
            fstate[_NORMAL_RR] = rr
        _beat_row(new_t[i], rr, pvc, p, rng_beat, row)
        if math.ceil(row[15] * fs) < k0:
            istate[_LATE] += 1          # its start was already sent: drawn cut
        _draw_beat(row, k0, n, fs, out)
        if math.floor(row[16] * fs) >= kend:
            if keep == _PEND_CAP:
                return False
            pend[keep, :] = row
            keep += 1
    istate[_NPEND] = keep

    _noise(k0, n, fresh, fstate, istate, events, rng_noise, p, t_out, out)
    return True


@njit(cache=True)
def _noise(k0, n, fresh, fstate, istate, events, rng, p, t_out, out):
    """Adds the noise to out[:n] (the clean beats) sample by sample. The state lives in locals
    during the loop; the sines are rotating phasors, re-anchored exactly at every breath and
    every 1024th sample, so each sample depends on its index alone, not on how calls cut."""
    fs = p[_P_FS]
    two_pi = 2.0 * math.pi
    resp_mean = p[_P_RESP_HZ]
    a_drift = math.exp(-1.0 / (fs * p[_P_DRIFT_TAU]))
    b_drift = p[_P_DRIFT] * math.sqrt(1.0 - a_drift * a_drift)
    settle_decay = math.exp(-1.0 / (fs * p[_P_SETTLE_TAU]))
    mains = p[_P_MAINS_HZ] / fs
    hum_amp, hum_ph = p[_P_HUM], p[_P_HUM_PH]
    hcd, hsd = math.cos(two_pi * mains), math.sin(two_pi * mains)
    am, wander, white = p[_P_AM], p[_P_WANDER], p[_P_WHITE]
    emg_rate, gap_rate = p[_P_EMG_RATE], p[_P_GAP_RATE]

    ph, f_resp, drift, settle = fstate[_RESP_PH], fstate[_RESP_HZ], fstate[_DRIFT], fstate[_SETTLE]
    sr, cr, hs, hc = fstate[_RESP_S], fstate[_RESP_C], fstate[_HUM_S], fstate[_HUM_C]
    burst_amp = fstate[_BURST_AMP]
    d = two_pi * f_resp / fs
    rcd, rsd = math.cos(d), math.sin(d)
    burst_left, burst_len, next_burst = istate[_BURST_LEFT], istate[_BURST_LEN], istate[_NEXT_BURST]
    gap_left, next_gap = istate[_GAP_LEFT], istate[_NEXT_GAP]
    r = rng[0]
    for j in range(n):
        k = k0 + j
        t_out[j] = k / fs
        ph += d
        if ph >= two_pi:            # a new breath: its rate varies a little
            ph -= two_pi
            r, u = _step(r)
            f_resp = resp_mean * (1.0 + 0.1 * _gauss(u))
            d = two_pi * f_resp / fs
            rcd, rsd = math.cos(d), math.sin(d)
            sr, cr = math.sin(ph), math.cos(ph)
        else:
            sr, cr = sr * rcd + cr * rsd, cr * rcd - sr * rsd
        if fresh or (k & 1023) == 0:
            cyc = mains * k
            a = two_pi * (cyc - math.floor(cyc)) + hum_ph
            hs, hc = math.sin(a), math.cos(a)
            fresh = False
        else:
            hs, hc = hs * hcd + hc * hsd, hc * hcd - hs * hsd
        r, u = _step(r)
        drift = a_drift * drift + b_drift * _gauss(u)
        r, u = _step(r)
        x = out[j] * (1.0 + am * sr) + wander * sr + drift + hum_amp * hs + white * _gauss(u)
        # Muscle noise: bursts with a smooth envelope, Poisson onsets.
        if burst_left > 0:
            r, u = _step(r)
            x += burst_amp * math.sin(math.pi * burst_left / burst_len) * _gauss(u)
            burst_left -= 1
            if burst_left == 0:
                r, u = _step(r)
                next_burst = int(-math.log(_unit(u)) * fs / emg_rate) + 1
        elif emg_rate > 0.0:
            next_burst -= 1
            if next_burst <= 0:
                r, u = _step(r)
                burst_len = int(p[_P_EMG_DUR] * (0.3 + 1.4 * _unit(u)) * fs) + 2
                burst_left = burst_len
                r, u = _step(r)
                burst_amp = p[_P_EMG] * (0.4 + 1.2 * _unit(u))
                istate[_N_BURSTS] += 1
        # Lead-off: flat 0 mV with a little noise; then the baseline jumps and settles.
        if gap_left > 0:
            r, u = _step(r)
            x = 0.2 * white * _gauss(u)
            gap_left -= 1
            istate[_GAP_SAMPLES] += 1
            if gap_left == 0:
                r, u = _step(r)
                settle = p[_P_SETTLE] * (2.0 * _unit(u) - 1.0)
                r, u = _step(r)
                next_gap = int(-math.log(_unit(u)) * fs / gap_rate) + 1
                e = istate[_EV_N] % _EV_CAP
                events[e, 0] = istate[_GAP_START]
                events[e, 1] = k + 1
                istate[_EV_N] += 1
        else:
            if settle != 0.0:
                x += settle
                # cut to 0 once negligible: subnormal numbers would slow every sample 10-fold
                settle = settle * settle_decay if abs(settle) > 1e-9 else 0.0
            if gap_rate > 0.0:
                next_gap -= 1
                if next_gap <= 0:
                    r, u = _step(r)
                    gap_left = int(p[_P_GAP_DUR] * (0.3 + 1.4 * _unit(u)) * fs) + 1
                    istate[_GAP_START] = k + 1
                    istate[_N_GAPS] += 1
        out[j] = x
    rng[0] = r
    fstate[_RESP_PH], fstate[_RESP_HZ], fstate[_DRIFT], fstate[_SETTLE] = ph, f_resp, drift, settle
    fstate[_RESP_S], fstate[_RESP_C], fstate[_HUM_S], fstate[_HUM_C] = sr, cr, hs, hc
    fstate[_BURST_AMP] = burst_amp
    istate[_BURST_LEFT], istate[_BURST_LEN], istate[_NEXT_BURST] = burst_left, burst_len, next_burst
    istate[_GAP_LEFT], istate[_NEXT_GAP] = gap_left, next_gap


def _seed_state(seed: int, stream: int) -> np.ndarray:
    # SplitMix64-style scrambling so that nearby seeds give unrelated streams; never zero.
    z = (int(seed) * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB)
    z &= (1 << 64) - 1
    z ^= z >> 31
    z = (z * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    z ^= z >> 32
    return np.array([z or 1], dtype=np.uint64)


class ECGSynthesizer:
    """One ECG lead (mV) at `fs` from R-peak times; see the module doc for the model.

    Amplitudes in mV, rates per minute or hour, durations in s. R amplitude and the noise
    phases vary with `seed` (per patient); the noise itself is reproducible bit for bit.
    """

    def __init__(self, fs: float, seed: int, *, r_mv: float | None = None,
                 white_mv: float = 0.01, wander_mv: float = 0.08, resp_bpm: float = 15.0,
                 drift_mv: float = 0.08, drift_tau_s: float = 8.0,
                 hum_mv: float = 0.02, mains_hz: float = 50.0,
                 emg_per_min: float = 1.0, emg_mv: float = 0.06, emg_s: float = 1.5,
                 lead_off_per_hour: float = 2.0, lead_off_s: float = 3.0,
                 settle_mv: float = 1.0, settle_tau_s: float = 0.7,
                 resp_amp_mod: float = 0.08, beat_jitter: float = 0.05):
        if not 125.0 <= fs <= 1000.0:
            raise ValueError(f"ECG rate {fs} Hz is outside 125 to 1000 Hz")
        if mains_hz >= fs / 2:
            raise ValueError(f"mains {mains_hz} Hz is above the Nyquist rate of {fs} Hz")
        self.fs = float(fs)
        self.seed = int(seed)
        setup = np.random.default_rng([self.seed, 0xEC6])
        if r_mv is None:
            r_mv = float(setup.uniform(0.8, 1.6))
        p = np.zeros(19)
        p[_P_FS] = fs
        p[_P_WHITE] = white_mv
        p[_P_WANDER] = wander_mv
        p[_P_RESP_HZ] = resp_bpm / 60.0
        p[_P_DRIFT] = drift_mv
        p[_P_DRIFT_TAU] = drift_tau_s
        p[_P_HUM] = hum_mv
        p[_P_MAINS_HZ] = mains_hz
        p[_P_HUM_PH] = setup.uniform(0, 2 * np.pi)
        p[_P_EMG_RATE] = emg_per_min / 60.0
        p[_P_EMG] = emg_mv
        p[_P_EMG_DUR] = emg_s
        p[_P_GAP_RATE] = lead_off_per_hour / 3600.0
        p[_P_GAP_DUR] = lead_off_s
        p[_P_SETTLE] = settle_mv
        p[_P_SETTLE_TAU] = settle_tau_s
        p[_P_AM] = resp_amp_mod
        p[_P_R_MV] = r_mv
        p[_P_JITTER] = beat_jitter
        self._p = p
        self._rng_noise = _seed_state(seed, 1)
        self._rng_beat = _seed_state(seed, 2)
        self._fstate = np.zeros(10)
        self._fstate[_NORMAL_RR] = np.nan
        self._fstate[_RESP_PH] = setup.uniform(0, 2 * np.pi)
        self._fstate[_RESP_HZ] = resp_bpm / 60.0
        self._fstate[_RESP_S] = math.sin(self._fstate[_RESP_PH])
        self._fstate[_RESP_C] = math.cos(self._fstate[_RESP_PH])
        self._istate = np.zeros(13, dtype=np.int64)
        self._istate[_NEXT_BURST] = (int(setup.exponential(fs * 60.0 / emg_per_min)) + 1
                                     if emg_per_min > 0 else 0)
        self._istate[_NEXT_GAP] = (int(setup.exponential(fs * 3600.0 / lead_off_per_hour)) + 1
                                   if lead_off_per_hour > 0 else 0)
        self._events = np.zeros((_EV_CAP, 2), dtype=np.int64)
        self._ev_seen = 0
        self._pend = np.zeros((_PEND_CAP, _ROW))
        self._row = np.zeros(_ROW)
        self._k_next: int | None = None
        self._t_last: float | None = None
        # The earliest wave start before its R peak, over the RR range, rounded up to a sample.
        pre = max(-_MU[w] * rr ** _RR_EXP[w] + _TRUNC * _SIGMA[w] * (rr ** 0.5 if w == 4 else 1)
                  for w in range(5) for rr in (_RR_MIN, _RR_MAX))
        self.delay = math.ceil(pre * self.fs) / self.fs
        self.lead_off: list[tuple[float, float]] = []   # (start, end) s of each lead-off gap

    @property
    def counters(self) -> dict[str, float]:
        s = self._istate
        return {"muscle_bursts": int(s[_N_BURSTS]), "lead_off_gaps": int(s[_N_GAPS]),
                "lead_off_s": float(s[_GAP_SAMPLES] / self.fs), "late_beats": int(s[_LATE]),
                "premature_beats": int(s[_N_PVC])}

    def render(self, t_start: float, t_end: float, beat_t, rr_ms,
               resp_bpm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Samples in [t_start - delay, t_end - delay) as (t, x_mV); beats are the R-peak times
        (s) that became known in (t_start, t_end], with their RR intervals (ms). `resp_bpm`,
        the patient's breathing rate, sets the rate of the respiratory wander from the next
        breath on, so that the ECG breathes with the Resp stream."""
        if resp_bpm is not None and math.isfinite(resp_bpm) and resp_bpm > 0:
            self._p[_P_RESP_HZ] = resp_bpm / 60.0
        if self._t_last is not None and t_start != self._t_last:
            if t_start < self._t_last:
                raise ValueError(f"render went back in time: {t_start} < {self._t_last}")
            self._k_next = None          # a jump: start the grid afresh
        fresh = self._k_next is None
        k0 = self._k_next if not fresh else math.ceil((t_start - self.delay) * self.fs)
        n = max(0, math.ceil((t_end - self.delay) * self.fs) - k0)
        t = np.empty(n)
        x = np.empty(n)
        beat_t = np.asarray(beat_t, dtype=np.float64)
        rr_ms = np.asarray(rr_ms, dtype=np.float64)
        if beat_t.shape != rr_ms.shape or beat_t.ndim != 1:
            raise ValueError("beat_t and rr_ms must be 1-D arrays of the same length")
        ok = _render(k0, n, fresh, beat_t, rr_ms, self._pend, self._row, self._fstate,
                     self._istate, self._events, self._rng_noise, self._rng_beat, self._p, t, x)
        if not ok:
            raise ValueError(f"more than {_PEND_CAP} beats overlap the chunk end")
        self._k_next = k0 + n
        self._t_last = t_end
        if self._istate[_EV_N] != self._ev_seen:
            self._drain_events()
        return t, x

    def _drain_events(self) -> None:
        n = int(self._istate[_EV_N])
        for i in range(max(self._ev_seen, n - _EV_CAP), n):
            a, b = self._events[i % _EV_CAP]
            self.lead_off.append((a / self.fs, b / self.fs))
        self._ev_seen = n


def warmup() -> None:
    """Compile (or load from cache) the kernels before any timed loop."""
    synth = ECGSynthesizer(250.0, 0, lead_off_per_hour=3600.0, emg_per_min=60.0)
    synth.render(0.0, 3.0, [1.0, 2.0], [1000.0, 1000.0])
