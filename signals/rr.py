"""RR intervals from beat times, with artefact and ectopic-beat correction after Lipponen &
Tarvainen (2019, J Med Eng Technol 43:173), made streaming.

Each beat is classified from dRR (successive differences) and mRR (deviation from the median
of the last 11 corrected RRs), both normalised by 5.2 x quartile deviation over the last 91
beats (trailing window: causal), with a floor so that a very regular rhythm is not flagged for
jitter. The decision tree is the paper's Figure 1 (subspaces S11/S12 for ectopic beats, S21/S22
for long/short); corrections: ectopic and long/short beats are moved to the midpoint of their
neighbours, a missed beat is inserted (evenly, up to 3), an extra beat is removed (its two RRs
merged). Look-ahead: 2 beats (a beat is final once the next two have arrived).

Flags per output beat: 0 ok, 1 ectopic, 2 missed (inserted beat, and the beat after it), 3
extra (beat after a removed one), 4 long/short. Use the raw beats, not these, for safety
checks on pauses: a gap longer than `GAP_MEDIANS` median RRs is passed through as a gap (no
beat invented, the RR is not reported) and restarts the context.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

ALPHA = 5.2           # threshold = ALPHA x quartile deviation (paper's value)
C1, C2 = 0.13, 0.17   # ectopic decision boundary in the S11/S12 plane (paper's values)
WIN = 91              # beats in the threshold window
MED = 11              # beats in the median RR
LOOKAHEAD = 2
TH_FLOOR = 0.04       # thresholds never below 4% of the median RR (jitter is not an artefact)
GAP_MEDIANS = 4.5     # longer than this many median RRs: a data gap, not missed beats
MAX_MISSED = 3
WARMUP = 10           # RRs passed through unchecked at the start

OK, ECTOPIC, MISSED, EXTRA, LONGSHORT = 0, 1, 2, 3, 4

# float state
F_LAST, F_RRPREV = range(2)
# int state
I_HAVE, I_NRR, I_ND, I_NM, I_NEXTFLAG, I_NQ = range(6)


@njit(cache=True)
def _sorted_copy(src, n, scratch):
    for i in range(n):
        v = src[i]
        j = i - 1
        while j >= 0 and scratch[j] > v:
            scratch[j + 1] = scratch[j]
            j -= 1
        scratch[j + 1] = v


@njit(cache=True)
def _quantile(s, n, q):
    pos = q * (n - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


@njit(cache=True)
def _qd(ring, count, scratch):
    n = min(count, ring.shape[0])
    if n < 4:
        return 0.0
    _sorted_copy(ring, n, scratch)
    return 0.5 * (_quantile(scratch, n, 0.75) - _quantile(scratch, n, 0.25))


@njit(cache=True)
def _median_rr(hrr, count, scratch):
    n = min(count, hrr.shape[0])
    _sorted_copy(hrr, n, scratch)
    return _quantile(scratch, n, 0.5)


@njit(cache=True)
def _emit(t, flag, fst, ist, hrr, out_t, out_rr, out_f, n_out):
    rr = t - fst[F_LAST]
    out_t[n_out] = t
    out_rr[n_out] = 1000.0 * rr
    out_f[n_out] = flag
    hrr[ist[I_NRR] % hrr.shape[0]] = rr
    ist[I_NRR] += 1
    fst[F_RRPREV] = rr
    fst[F_LAST] = t
    return n_out + 1


@njit(cache=True)
def _rr_run(q, nq, final, fst, ist, hd, hm, hrr, scratch, out_t, out_rr, out_f):
    """Finalise queued beat times q[:nq]; returns (beats written, queue entries consumed)."""
    n_out = 0
    pos = 0
    while pos < nq:
        if ist[I_HAVE] == 0:  # first beat: the anchor
            fst[F_LAST] = q[pos]
            ist[I_HAVE] = 1
            pos += 1
            continue
        if nq - pos < 1 + LOOKAHEAD and not final:
            break
        rr0 = q[pos] - fst[F_LAST]
        if ist[I_NRR] == 0:  # second beat: first RR, nothing to compare with yet
            n_out = _emit(q[pos], OK, fst, ist, hrr, out_t, out_rr, out_f, n_out)
            pos += 1
            continue
        med = _median_rr(hrr, ist[I_NRR], scratch)
        if rr0 > GAP_MEDIANS * med:  # data gap: restart from this beat
            fst[F_LAST] = q[pos]
            ist[I_NEXTFLAG] = OK
            pos += 1
            continue
        if ist[I_NRR] < WARMUP:  # too little history for a median and thresholds yet
            hd[ist[I_ND] % hd.shape[0]] = abs(rr0 - fst[F_RRPREV])
            ist[I_ND] += 1
            hm[ist[I_NM] % hm.shape[0]] = abs(rr0 - med) * (2.0 if rr0 < med else 1.0)
            ist[I_NM] += 1
            n_out = _emit(q[pos], OK, fst, ist, hrr, out_t, out_rr, out_f, n_out)
            pos += 1
            continue
        rr1 = q[pos + 1] - q[pos] if pos + 1 < nq else med
        rr2 = q[pos + 2] - q[pos + 1] if pos + 2 < nq else med
        th1 = max(ALPHA * _qd(hd, ist[I_ND], scratch), TH_FLOOR * med)
        mrr = rr0 - med
        if mrr < 0:
            mrr *= 2.0
        th2 = max(ALPHA * _qd(hm, ist[I_NM], scratch), TH_FLOOR * med)
        d0 = (rr0 - fst[F_RRPREV]) / th1
        d1 = (rr1 - rr0) / th1
        d2 = (rr2 - rr1) / th1
        m0 = mrr / th2
        hd[ist[I_ND] % hd.shape[0]] = abs(rr0 - fst[F_RRPREV])
        ist[I_ND] += 1
        hm[ist[I_NM] % hm.shape[0]] = abs(mrr)
        ist[I_NM] += 1
        s22 = min(d1, d2) if d0 >= 0 else max(d1, d2)
        flag = ist[I_NEXTFLAG]
        ist[I_NEXTFLAG] = OK
        # ectopic test of the paper, applied to the next dRR: a premature beat shows as a
        # short RR then a long one, i.e. a large d1 with both neighbours (d0, d2) opposite
        s12 = max(d0, d2) if d1 > 0 else min(d0, d2)
        if pos + 1 < nq and ((d1 > 1.0 and s12 < -C1 * d1 - C2)
                             or (d1 < -1.0 and s12 > -C1 * d1 + C2)):
            q[pos] = 0.5 * (fst[F_LAST] + q[pos + 1])  # back midway between its neighbours
            n_out = _emit(q[pos], ECTOPIC, fst, ist, hrr, out_t, out_rr, out_f, n_out)
            pos += 1
            continue
        if abs(d0) <= 1.0 and abs(m0) <= 3.0:
            n_out = _emit(q[pos], flag, fst, ist, hrr, out_t, out_rr, out_f, n_out)
            pos += 1
            continue
        long_ = (d0 > 1.0 and s22 < -1.0) or m0 > 3.0
        short = (d0 < -1.0 and s22 > 1.0) or m0 < -3.0
        if long_ or short:
            k = int(np.round(rr0 / med)) - 1
            if long_ and 1 <= k <= MAX_MISSED and abs(rr0 / (k + 1) - med) < th2:
                t0 = fst[F_LAST]
                for j in range(1, k + 1):  # missed: insert evenly spaced beats
                    n_out = _emit(t0 + rr0 * j / (k + 1), MISSED, fst, ist, hrr, out_t,
                                  out_rr, out_f, n_out)
                n_out = _emit(q[pos], MISSED, fst, ist, hrr, out_t, out_rr, out_f, n_out)
                pos += 1
                continue
            if short and pos + 1 < nq and abs(rr0 + rr1 - med) < th2:
                ist[I_NEXTFLAG] = EXTRA  # extra: drop this beat, merge its two RRs
                pos += 1
                continue
            if pos + 1 < nq:
                q[pos] = 0.5 * (fst[F_LAST] + q[pos + 1])
            n_out = _emit(q[pos], LONGSHORT, fst, ist, hrr, out_t, out_rr, out_f, n_out)
            pos += 1
            continue
        n_out = _emit(q[pos], flag, fst, ist, hrr, out_t, out_rr, out_f, n_out)
        pos += 1
    return n_out, pos


@njit(cache=True)
def _rr_process(t, final, q, fst, ist, hd, hm, hrr, scratch, out_t, out_rr, out_f):
    """Queue the finite beat times of t that keep the queue strictly increasing, finalise what
    the look-ahead allows and keep the rest queued; returns the number of beats written."""
    nq = ist[I_NQ]
    last = q[nq - 1] if nq > 0 else (fst[F_LAST] if ist[I_HAVE] else -np.inf)
    for v in t:
        if math.isfinite(v) and v > last:
            q[nq] = v
            nq += 1
            last = v
    n_out, used = _rr_run(q, nq, final, fst, ist, hd, hm, hrr, scratch, out_t, out_rr, out_f)
    for i in range(used, nq):
        q[i - used] = q[i]
    ist[I_NQ] = nq - used
    return n_out


class RRCorrector:
    """Streaming RR correction. `process(beat_times_s)` takes the next beat times (seconds,
    increasing) and returns `(t_s, rr_ms, flags)` for the beats finalised by this call: each
    is final `LOOKAHEAD` beats later. `flush()` finalises the rest at the end of a recording."""

    def __init__(self):
        self._fst = np.zeros(2)
        self._ist = np.zeros(6, np.int64)
        self._hd = np.zeros(WIN)
        self._hm = np.zeros(WIN)
        self._hrr = np.zeros(MED)
        self._scratch = np.zeros(WIN)
        self._q = np.zeros(0)
        self._out_t = self._out_rr = np.zeros(0)
        self._out_f = np.zeros(0, np.int8)
        self.process(np.zeros(0))   # compile (or load the cache) before the loop

    def _run(self, t: np.ndarray, final: bool):
        nq = int(self._ist[I_NQ]) + t.size
        if self._q.size < nq:   # buffers grow, never shrink: no allocation per beat
            self._q = np.concatenate([self._q, np.zeros(max(nq, 16))])
        cap = nq * (MAX_MISSED + 1) + 1
        if self._out_t.size < cap:
            self._out_t, self._out_rr = np.zeros(2 * cap), np.zeros(2 * cap)
            self._out_f = np.zeros(2 * cap, np.int8)
        n = _rr_process(t, final, self._q, self._fst, self._ist, self._hd, self._hm, self._hrr,
                        self._scratch, self._out_t, self._out_rr, self._out_f)
        return self._out_t[:n].copy(), self._out_rr[:n].copy(), self._out_f[:n].copy()

    def process(self, beat_times_s):
        return self._run(np.ascontiguousarray(beat_times_s, dtype=np.float64).reshape(-1), False)

    def flush(self):
        return self._run(np.zeros(0), True)


def correct_rr(beat_times_s):
    """Whole-array helper: the streaming corrector over all beats, flushed at the end."""
    c = RRCorrector()
    a = c.process(beat_times_s)
    b = c.flush()
    return tuple(np.concatenate([u, v]) for u, v in zip(a, b))
