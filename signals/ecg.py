"""Causal, streaming R-peak detection for single-lead ECG (125 to 1000 Hz).

Pan-Tompkins family (Pan & Tompkins 1985, with Hamilton & Tompkins 1986 refinements):
band-pass (Butterworth biquads) -> 5-point derivative -> squaring -> 150 ms moving-window
integration (MWI) -> MWI local maxima, each confirmed once it has stayed the largest for
`LAG_S` -> adaptive signal/noise thresholds, T-wave discrimination by slope, search-back with a
lower threshold when a beat is overdue, refractory period. The R time is refined on the
band-passed signal in a bounded look-back and corrected for the filter's group delay.

Every sample goes through one numba kernel, once, in order; all state lives in preallocated
arrays owned by `RPeakDetector`, so any chunking gives the same beats.

Missing data: NaN samples are gaps and a run of identical samples longer than `FLAT_S` is a
lead-off. Neither yields beats; both are counted, and the filters restart (at steady state on
the first good sample) when the signal comes back, with a short blanking for the transient.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from scipy import signal as _sig

BAND_HZ = (5.0, 15.0)      # QRS energy band (Pan & Tompkins); P/T waves and wander fall below
MWI_S = 0.150              # integration window: about one QRS width
LAG_S = 0.200              # an MWI peak is final once no larger peak follows within this
REFRACTORY_S = 0.200       # no two beats closer than this (physiological limit)
TWAVE_S = 0.360            # a peak this soon after a beat must have a QRS-like slope
SEARCHBACK_RR = 1.66       # search back when the next beat is this many median RRs late
RR_MAX_S = 1.5             # median RR capped here for search-back: bounds the look-back
LOOKBACK_S = SEARCHBACK_RR * RR_MAX_S  # oldest candidate a search-back may still accept
LEARN_S = 2.0              # initial threshold learning, no output
FLAT_S = 0.25              # identical samples for this long = lead-off
SETTLE_S = 0.25            # blanking after a filter restart
DECAY_S = 2.5              # no beat for this long: halve thresholds (gain change, lost beats)
QUALITY_WIN_S = 4.0        # signal-quality window
TEMPLATE_S = 0.06          # half-width of the beat template (around R)

# float state
F_SPK, F_NPK, F_LASTX, F_MSUM, F_MPREV, F_PENDV, F_LASTSLOPE, F_LMAX, F_LSUM, \
    F_QCORR, F_QUAL, F_RRMED = range(12)
N_FST = 12
# int state
(I_N, I_FLAT, I_LEADOFF, I_GAP, I_RESET, I_SETTLE, I_RISING, I_PEND, I_PENDPOS, I_LASTP,
 I_LASTR, I_VIRTUAL, I_NCAND, I_DIRTY, I_NDECAY, I_DECAYAT, I_NRR, I_LEARNED, I_NNAN,
 I_NLEADOFF, I_NGAPS, I_QVALID, I_QN, I_QBEATS, I_NTMPL, I_MWIN, I_NLEARN) = range(27)
N_IST = 27
# int parameters
(P_W, P_LAG, P_REFR, P_TWAVE, P_S, P_GD, P_MASK, P_FLAT, P_SETTLE, P_LEARN, P_RRMAX,
 P_LOOKBACK, P_DECAY, P_QWIN, P_TH, P_RRMIN, P_NSEC, P_RING, P_M, P_OUTCAP, P_QCAP,
 P_NQ) = range(22)
N_PRM = 22
MAX_CAND = 64
N_RR = 8
MAX_CHUNK = 1 << 15  # longer chunks are fed in pieces: bounds the output buffers


@njit(cache=True)
def _sos_step(x, sos, zi):
    """One sample through a cascade of biquads (transposed direct form II); sos and zi are
    flattened (n, 6) and (n, 2)."""
    y = x
    for k in range(zi.shape[0] // 2):
        o = 6 * k
        out = sos[o] * y + zi[2 * k]
        zi[2 * k] = sos[o + 1] * y - sos[o + 4] * out + zi[2 * k + 1]
        zi[2 * k + 1] = sos[o + 2] * y - sos[o + 5] * out
        y = out
    return y


@njit(cache=True)
def _median(buf, n, scratch):
    for i in range(n):
        scratch[i] = buf[i]
    for i in range(1, n):  # insertion sort: n <= 8
        v = scratch[i]
        j = i - 1
        while j >= 0 and scratch[j] > v:
            scratch[j + 1] = scratch[j]
            j -= 1
        scratch[j + 1] = v
    if n % 2 == 1:
        return scratch[n // 2]
    return 0.5 * (scratch[n // 2 - 1] + scratch[n // 2])


@njit(cache=True)
def _ring_absmax(ring, mask, lo, hi):
    """Index of max |ring| over absolute samples [lo, hi]."""
    best = -1.0
    bi = hi
    for t in range(lo, hi + 1):
        v = abs(ring[t & mask])
        if v > best:
            best = v
            bi = t
    return bi


@njit(cache=True)
def _ring_max(ring, mask, lo, hi):
    best = 0.0
    for t in range(lo, hi + 1):
        v = ring[t & mask]
        if v > best:
            best = v
    return best


@njit(cache=True)
def _template_corr(bp_ring, mask, r, h, tmpl, ist, beat):
    """Correlation of the beat around bp index r with the running template; updates it."""
    m = 2 * h + 1
    mean = 0.0
    for k in range(m):
        beat[k] = bp_ring[(r - h + k) & mask]
        mean += beat[k]
    mean /= m
    nrm = 0.0
    for k in range(m):
        beat[k] -= mean
        nrm += beat[k] * beat[k]
    if nrm <= 0.0:
        return 0.0
    nrm = np.sqrt(nrm)
    tn = 0.0
    dot = 0.0
    for k in range(m):
        beat[k] /= nrm
        tn += tmpl[k] * tmpl[k]
        dot += tmpl[k] * beat[k]
    c = dot / np.sqrt(tn) if (ist[I_NTMPL] > 0 and tn > 0.0) else 1.0
    a = 1.0 / (ist[I_NTMPL] + 1) if ist[I_NTMPL] < 8 else 0.125  # quick start, then EMA
    for k in range(m):
        tmpl[k] += a * (beat[k] - tmpl[k])
    ist[I_NTMPL] += 1
    return c


@njit(cache=True)
def _accept(p, v, slope, searchback, fst, ist, prm, bp_ring, rr_buf, scratch, tmpl, beat, out,
            n_out):
    """Accept the MWI peak at p as a beat; returns the new output count."""
    mask = prm[P_MASK]
    w = prm[P_W]
    lo = p - w - 4 * prm[P_S]
    rb = _ring_absmax(bp_ring, mask, lo, p)   # R on the band-passed signal
    r = rb - prm[P_GD]                        # back to the raw signal's time
    if r <= ist[I_LASTR] or n_out >= out.shape[0]:  # capacity is sized never to be reached
        return n_out
    if ist[I_LASTP] >= 0 and ist[I_VIRTUAL] == 0:
        rr = r - ist[I_LASTR]
        if prm[P_RRMIN] <= rr <= 2 * prm[P_RRMAX]:
            rr_buf[ist[I_NRR] % N_RR] = rr
            ist[I_NRR] += 1
            nrr = min(ist[I_NRR], N_RR)
            if nrr >= 2:
                fst[F_RRMED] = min(_median(rr_buf, nrr, scratch), float(prm[P_RRMAX]))
    a = 0.25 if searchback else 0.125
    fst[F_SPK] = a * v + (1.0 - a) * fst[F_SPK]
    ist[I_LASTP] = p
    ist[I_LASTR] = r
    ist[I_VIRTUAL] = 0
    ist[I_NDECAY] = 0
    fst[F_LASTSLOPE] = slope
    c = _template_corr(bp_ring, mask, rb, tmpl.shape[0] // 2, tmpl, ist, beat)
    fst[F_QCORR] += max(c, 0.0)
    ist[I_QBEATS] += 1
    out[n_out] = r
    return n_out + 1


@njit(cache=True)
def _is_twave(p, slope, fst, ist, prm):
    return (ist[I_LASTP] >= 0 and ist[I_VIRTUAL] == 0 and p - ist[I_LASTP] < prm[P_TWAVE]
            and slope < 0.5 * fst[F_LASTSLOPE])


@njit(cache=True)
def _searchback(t_eval, fst, ist, prm, cand_pos, cand_val, cand_slope, bp_ring, rr_buf,
                scratch, tmpl, beat, out, n_out):
    """Accept the largest earlier candidate above the lower threshold while a beat is overdue."""
    while ist[I_DIRTY] == 1 and t_eval - ist[I_LASTP] > SEARCHBACK_RR * fst[F_RRMED]:
        thr2 = 0.5 * (fst[F_NPK] + 0.25 * (fst[F_SPK] - fst[F_NPK]))
        best = -1
        bv = thr2
        for k in range(ist[I_NCAND]):
            pk = cand_pos[k]
            if ((ist[I_VIRTUAL] == 1 or pk - ist[I_LASTP] >= prm[P_REFR]) and cand_val[k] > bv
                    and not _is_twave(pk, cand_slope[k], fst, ist, prm)):
                best = k
                bv = cand_val[k]
        if best < 0:
            ist[I_DIRTY] = 0
            break
        n_out = _accept(cand_pos[best], cand_val[best], cand_slope[best], True, fst, ist, prm,
                        bp_ring, rr_buf, scratch, tmpl, beat, out, n_out)
        keep = 0
        for k in range(best + 1, ist[I_NCAND]):
            cand_pos[keep] = cand_pos[k]
            cand_val[keep] = cand_val[k]
            cand_slope[keep] = cand_slope[k]
            keep += 1
        ist[I_NCAND] = keep
    return n_out


@njit(cache=True)
def _classify(p, v, fst, ist, prm, cand_pos, cand_val, cand_slope, bp_ring, d_ring, rr_buf,
              scratch, tmpl, beat, out, n_out):
    """Decide on a confirmed MWI peak: beat, T wave/noise, or search-back candidate."""
    if ist[I_LASTP] >= 0 and ist[I_VIRTUAL] == 0 and p - ist[I_LASTP] < prm[P_REFR]:
        return n_out
    slope = _ring_max(d_ring, prm[P_MASK], p - prm[P_W], p)
    thr1 = fst[F_NPK] + 0.25 * (fst[F_SPK] - fst[F_NPK])
    if v > thr1 and not _is_twave(p, slope, fst, ist, prm):
        n_out = _accept(p, v, slope, False, fst, ist, prm, bp_ring, rr_buf, scratch, tmpl, beat,
                        out, n_out)
        ist[I_NCAND] = 0
        return n_out
    fst[F_NPK] = 0.125 * v + 0.875 * fst[F_NPK]
    if v > 0.5 * thr1:
        if ist[I_NCAND] == MAX_CAND:  # drop the oldest
            for k in range(MAX_CAND - 1):
                cand_pos[k] = cand_pos[k + 1]
                cand_val[k] = cand_val[k + 1]
                cand_slope[k] = cand_slope[k + 1]
            ist[I_NCAND] -= 1
        k = ist[I_NCAND]
        cand_pos[k] = p
        cand_val[k] = v
        cand_slope[k] = slope
        ist[I_NCAND] += 1
        ist[I_DIRTY] = 1
    return n_out


@njit(cache=True)
def _invalidate(ist, keep_before):
    """Start of a gap or lead-off: drop work from `keep_before` on (a step into a lead-off
    looks like a QRS), no RR or search-back across it."""
    if ist[I_PENDPOS] >= keep_before:
        ist[I_PEND] = 0
    ist[I_NCAND] = 0
    ist[I_LASTP] = -1
    ist[I_RESET] = 1


@njit(cache=True)
def _quality_close(fst, ist, prm, q_out):
    n = max(ist[I_QN], 1)
    valid = ist[I_QVALID] / n
    nb = ist[I_QBEATS]
    win_s = prm[P_QWIN] / (prm[P_TH] / 1000.0)  # window length in seconds
    if nb == 0:
        q = 0.0
    else:
        corr = fst[F_QCORR] / nb
        rate = nb / win_s * 60.0
        plaus = 1.0 if 25.0 <= rate <= 240.0 else 0.5
        q = valid * corr * plaus
    fst[F_QUAL] = min(max(q, 0.0), 1.0)
    if prm[P_NQ] < q_out.shape[0]:
        q_out[prm[P_NQ]] = fst[F_QUAL]
        prm[P_NQ] += 1
    ist[I_QN] = 0
    ist[I_QVALID] = 0
    ist[I_QBEATS] = 0
    fst[F_QCORR] = 0.0


@njit(cache=True)
def _detect_chunk(x, fb, ib):
    """Run the detector over one chunk; returns the number of beats written to the output
    area of `ib` (qualities go to the end of `fb`, their count to prm[P_NQ]).

    All state is packed into one float and one int array, so that a call from Python costs
    little: at 32-sample chunks the call itself is most of the time."""
    ist = ib[:N_IST]
    prm = ib[N_IST:N_IST + N_PRM]
    o = N_IST + N_PRM
    cand_pos = ib[o:o + MAX_CAND]
    out = ib[o + MAX_CAND:o + MAX_CAND + prm[P_OUTCAP]]
    nsec, ring, m_t = prm[P_NSEC], prm[P_RING], prm[P_M]
    fst = fb[:N_FST]
    o = N_FST
    sos = fb[o:o + 6 * nsec]
    o += 6 * nsec
    zi = fb[o:o + 2 * nsec]
    o += 2 * nsec
    zi_unit = fb[o:o + 2 * nsec]
    o += 2 * nsec
    bp_ring = fb[o:o + ring]
    d_ring = fb[o + ring:o + 2 * ring]
    e_ring = fb[o + 2 * ring:o + 3 * ring]
    o += 3 * ring
    cand_val = fb[o:o + MAX_CAND]
    cand_slope = fb[o + MAX_CAND:o + 2 * MAX_CAND]
    o += 2 * MAX_CAND
    rr_buf = fb[o:o + N_RR]
    scratch = fb[o + N_RR:o + 2 * N_RR]
    o += 2 * N_RR
    tmpl = fb[o:o + m_t]
    beat = fb[o + m_t:o + 2 * m_t]
    o += 2 * m_t
    q_out = fb[o:o + prm[P_QCAP]]
    prm[P_NQ] = 0
    mask = prm[P_MASK]
    w = prm[P_W]
    s = prm[P_S]
    fs = prm[P_TH] / 1000.0
    n_out = 0
    for i in range(x.shape[0]):
        n = ist[I_N]
        xi = x[i]
        valid = True
        if np.isnan(xi):
            valid = False
            ist[I_NNAN] += 1
            if ist[I_GAP] == 0:
                ist[I_GAP] = 1
                ist[I_NGAPS] += 1
                _invalidate(ist, n)
        else:
            ist[I_GAP] = 0
            if abs(xi - fst[F_LASTX]) <= 1e-9 * (1.0 + abs(xi)):
                ist[I_FLAT] += 1
            else:
                ist[I_FLAT] = 0
            fst[F_LASTX] = xi
            if ist[I_LEADOFF] == 1:
                if ist[I_FLAT] == 0:
                    ist[I_LEADOFF] = 0
                else:
                    valid = False
            elif ist[I_FLAT] >= prm[P_FLAT]:
                ist[I_LEADOFF] = 1
                ist[I_NLEADOFF] += 1
                _invalidate(ist, n - ist[I_FLAT] - w)
                valid = False
        y = 0.0
        if valid:
            if ist[I_RESET] == 1:
                ist[I_RESET] = 0
                for k in range(zi.shape[0]):
                    zi[k] = zi_unit[k] * xi
                for k in range(4 * s + 1):
                    bp_ring[(n - k) & mask] = 0.0
                ist[I_SETTLE] = n + prm[P_SETTLE]
                ist[I_LASTP] = n + prm[P_SETTLE]  # virtual beat: search-back starts from here
                ist[I_LASTR] = max(ist[I_LASTR], n)
                ist[I_VIRTUAL] = 1
            y = _sos_step(xi, sos, zi)
            ist[I_QVALID] += 1
        bp_ring[n & mask] = y
        d = (2.0 * y + bp_ring[(n - s) & mask] - bp_ring[(n - 3 * s) & mask]
             - 2.0 * bp_ring[(n - 4 * s) & mask]) * (fs / (8.0 * s))
        if not valid or n < ist[I_SETTLE]:
            d = 0.0
        d_ring[n & mask] = abs(d)
        e = d * d
        fst[F_MSUM] += e - e_ring[(n - w) & mask]
        e_ring[n & mask] = e
        ist[I_MWIN] += 1
        if ist[I_MWIN] >= w:  # refresh the running sum against rounding drift
            ist[I_MWIN] = 0
            tot = 0.0
            for k in range(w):
                tot += e_ring[(n - k) & mask]
            fst[F_MSUM] = tot
        m = fst[F_MSUM] / w

        if ist[I_LEARNED] == 0:  # initial thresholds from the first LEARN_S of good signal
            if valid and n >= ist[I_SETTLE]:
                fst[F_LMAX] = max(fst[F_LMAX], m)
                fst[F_LSUM] += m
                ist[I_NLEARN] += 1
                if ist[I_NLEARN] >= prm[P_LEARN]:
                    fst[F_SPK] = 0.25 * fst[F_LMAX]
                    fst[F_NPK] = 0.5 * fst[F_LSUM] / ist[I_NLEARN]
                    ist[I_LEARNED] = 1
                    ist[I_LASTP] = n
                    ist[I_VIRTUAL] = 1
        else:
            # MWI local maxima -> pending candidate (largest within LAG wins)
            if m > fst[F_MPREV]:
                ist[I_RISING] = 1
            elif m < fst[F_MPREV] and ist[I_RISING] == 1:
                ist[I_RISING] = 0
                if ist[I_PEND] == 0 or fst[F_MPREV] > fst[F_PENDV]:
                    ist[I_PEND] = 1
                    ist[I_PENDPOS] = n - 1
                    fst[F_PENDV] = fst[F_MPREV]
            if ist[I_PEND] == 1 and n - ist[I_PENDPOS] >= prm[P_LAG]:
                ist[I_PEND] = 0
                n_out = _classify(ist[I_PENDPOS], fst[F_PENDV], fst, ist, prm, cand_pos,
                                  cand_val, cand_slope, bp_ring, d_ring, rr_buf, scratch, tmpl,
                                  beat, out, n_out)
            if ist[I_LASTP] >= 0 and valid:
                t_eval = n - prm[P_LAG]
                while ist[I_NCAND] > 0 and cand_pos[0] < t_eval - prm[P_LOOKBACK]:
                    for k in range(ist[I_NCAND] - 1):
                        cand_pos[k] = cand_pos[k + 1]
                        cand_val[k] = cand_val[k + 1]
                        cand_slope[k] = cand_slope[k + 1]
                    ist[I_NCAND] -= 1
                if ist[I_DIRTY] == 1:
                    n_out = _searchback(t_eval, fst, ist, prm, cand_pos, cand_val, cand_slope,
                                        bp_ring, rr_buf, scratch, tmpl, beat, out, n_out)
                # long silence: the gain may have dropped, halve thresholds (at most 5 times)
                since = t_eval - max(ist[I_LASTP], ist[I_DECAYAT])
                if since > prm[P_DECAY] and ist[I_NDECAY] < 5:
                    fst[F_SPK] *= 0.5
                    fst[F_NPK] *= 0.5
                    ist[I_NDECAY] += 1
                    ist[I_DECAYAT] = t_eval
                    ist[I_DIRTY] = 1
        fst[F_MPREV] = m

        ist[I_QN] += 1
        if ist[I_QN] >= prm[P_QWIN]:
            _quality_close(fst, ist, prm, q_out)
        ist[I_N] = n + 1
    return n_out


class RPeakDetector:
    """Streaming R-peak detector. `process(chunk)` returns the absolute sample indices (int64,
    counted from the first sample given, or from the last fs change) of beats confirmed during
    this call. A beat is usually confirmed about 0.3 s after its R wave; a beat found by
    search-back later, never more than `detection_delay_s` after it.

    Attributes: `quality` (0..1, latest `QUALITY_WIN_S` window: valid-sample fraction x mean
    template correlation x rate plausibility; 0 when no beat), `quality_history` (one value per
    window so far), `nan_count`, `gap_count`, `leadoff_count` (lead-off episodes).
    """

    def __init__(self, fs: float):
        self._setup(float(fs))

    def _setup(self, fs: float) -> None:
        if not 100.0 <= fs <= 2000.0:
            raise ValueError(f"ECG sampling rate {fs} Hz outside 100..2000 Hz")
        self.fs = fs
        sos = _sig.butter(2, BAND_HZ, btype="bandpass", fs=fs, output="sos")
        _, gd = _sig.group_delay(_sig.sos2tf(sos), w=[np.sqrt(BAND_HZ[0] * BAND_HZ[1])], fs=fs)
        s = max(1, int(round(fs / 200.0)))  # derivative spacing: Pan-Tompkins' 5 points at 200 Hz
        lag = int(round(LAG_S * fs))
        lookback = int(round(LOOKBACK_S * fs))
        ring = 1 << int(np.ceil(np.log2((LOOKBACK_S + LAG_S + MWI_S + 0.5) * fs)))
        h = int(round(TEMPLATE_S * fs))
        nsec = sos.shape[0]
        outcap = (MAX_CHUNK + ring) // int(round(REFRACTORY_S * fs)) + 8
        qcap = MAX_CHUNK // int(round(QUALITY_WIN_S * fs)) + 2
        ib = np.zeros(N_IST + N_PRM + MAX_CAND + outcap, np.int64)
        fb = np.zeros(N_FST + 10 * nsec + 3 * ring + 2 * MAX_CAND + 2 * N_RR
                      + 2 * (2 * h + 1) + qcap)
        self._ib, self._fb = ib, fb
        self._ist = ib[:N_IST]
        prm = self._prm = ib[N_IST:N_IST + N_PRM]
        self._out = ib[N_IST + N_PRM + MAX_CAND:]
        self._fst = fb[:N_FST]
        fb[N_FST:N_FST + 6 * nsec] = sos.ravel()
        o = N_FST + 8 * nsec
        fb[o:o + 2 * nsec] = _sig.sosfilt_zi(sos).ravel()
        self._qout = fb[fb.size - qcap:]
        prm[P_W] = int(round(MWI_S * fs))
        prm[P_LAG] = lag
        prm[P_REFR] = int(round(REFRACTORY_S * fs))
        prm[P_TWAVE] = int(round(TWAVE_S * fs))
        prm[P_S] = s
        prm[P_GD] = int(round(gd[0]))
        prm[P_MASK] = ring - 1
        prm[P_FLAT] = int(round(FLAT_S * fs))
        prm[P_SETTLE] = int(round(SETTLE_S * fs))
        prm[P_LEARN] = int(round(LEARN_S * fs))
        prm[P_RRMAX] = int(round(RR_MAX_S * fs))
        prm[P_LOOKBACK] = lookback
        prm[P_DECAY] = int(round(DECAY_S * fs))
        prm[P_QWIN] = int(round(QUALITY_WIN_S * fs))
        prm[P_TH] = int(round(fs * 1000.0))  # fs in mHz, so the kernel has it as an int
        prm[P_RRMIN] = prm[P_REFR]
        prm[P_NSEC] = nsec
        prm[P_RING] = ring
        prm[P_M] = 2 * h + 1
        prm[P_OUTCAP] = outcap
        prm[P_QCAP] = qcap
        self._fst[F_LASTX] = np.nan
        self._fst[F_RRMED] = 0.6 * prm[P_RRMAX]  # until two RRs are known
        self._ist[I_RESET] = 1
        self._ist[I_LASTP] = -1
        self._ist[I_LASTR] = -(1 << 40)
        self.quality_history: list[float] = []
        # bound on confirmation minus true R: normal path LAG + MWI + group delay; the
        # search-back path adds at most LOOKBACK past the last beat.
        self.detection_delay_s = (lookback + lag + prm[P_W] + prm[P_GD] + 4 * s) / fs

    def reset(self, fs: float | None = None) -> None:
        """Forget everything (thresholds, history, sample count); optionally a new fs."""
        self._setup(self.fs if fs is None else float(fs))

    def process(self, chunk, fs: float | None = None) -> np.ndarray:
        """Feed the next samples; returns absolute indices of newly confirmed beats.
        A different `fs` resets the detector first (indices restart at 0)."""
        if fs is not None and float(fs) != self.fs:
            self.reset(fs)
        x = np.ascontiguousarray(chunk, dtype=np.float64).reshape(-1)
        if x.shape[0] <= MAX_CHUNK:
            return self._run(x)
        return np.concatenate([self._run(x[i:i + MAX_CHUNK])
                               for i in range(0, x.shape[0], MAX_CHUNK)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = _detect_chunk(x, self._fb, self._ib)
        nq = self._prm[P_NQ]
        if nq:
            self.quality_history.extend(self._qout[:nq].tolist())
        return self._out[:n].copy() if n else np.empty(0, np.int64)

    @property
    def quality(self) -> float:
        return float(self._fst[F_QUAL])

    @property
    def n_seen(self) -> int:
        return int(self._ist[I_N])

    @property
    def nan_count(self) -> int:
        return int(self._ist[I_NNAN])

    @property
    def gap_count(self) -> int:
        return int(self._ist[I_NGAPS])

    @property
    def leadoff_count(self) -> int:
        return int(self._ist[I_NLEADOFF])


def detect_r_peaks(x, fs: float, chunk_size: int = 256) -> np.ndarray:
    """Run the streaming detector over a whole array in chunks; beat sample indices."""
    det = RPeakDetector(fs)
    x = np.asarray(x, dtype=np.float64)
    parts = [det.process(x[i:i + chunk_size]) for i in range(0, x.shape[0], chunk_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def match_beats(detected, reference, fs: float, tol_s: float = 0.15, skip_s: float = 5.0,
                n_samples: int | None = None) -> tuple[int, int, int]:
    """AAMI EC57-style beat matching: (tp, fp, fn). A detection matches an unmatched reference
    beat within `tol_s`; beats in the first and last `skip_s` are ignored (the end is taken
    from `n_samples`, or from the last reference beat when not given)."""
    det = np.sort(np.asarray(detected, dtype=np.int64))
    ref = np.sort(np.asarray(reference, dtype=np.int64))
    lo = int(round(skip_s * fs))
    end = n_samples if n_samples is not None else (int(ref[-1]) + 1 if ref.size else 0)
    hi = end - lo
    det = det[(det >= lo) & (det < hi)]
    ref = ref[(ref >= lo) & (ref < hi)]
    tol = int(round(tol_s * fs))
    i = j = tp = 0
    while i < ref.size and j < det.size:  # both sorted: greedy nearest-in-order matching
        dt = det[j] - ref[i]
        if abs(dt) <= tol:
            if j + 1 < det.size and abs(det[j + 1] - ref[i]) < abs(dt) and (
                    i + 1 >= ref.size or abs(det[j + 1] - ref[i + 1]) > tol):
                j += 1
                continue
            tp += 1
            i += 1
            j += 1
        elif dt < 0:
            j += 1
        else:
            i += 1
    return tp, int(det.size - tp), int(ref.size - tp)
