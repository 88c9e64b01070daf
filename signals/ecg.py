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
N_HDR = N_IST + N_PRM + MAX_CAND  # int header of the state buffer: ist | prm | cand_pos
BLOCK = 256  # the kernel's two passes (signal path, then peak logic) take this many at a time
C_VALID, C_SETTLED, C_CUT, C_RESTART = 1, 2, 4, 8  # per-sample codes from pass A to pass B
NSEC = 2  # biquads of the band-pass (2nd-order Butterworth band-pass)
OUTCAP = 2048  # beat output area: >= (MAX_CHUNK + ring) / refractory + 8 for any fs
# The state is one float64 buffer. Its int64 part (seen through a view) is ist | prm | cand_pos,
# the beat output area, the kernel's int scratch (2 BLOCK); then, as float64, fst | sos | zi |
# zi_unit | bp ring | |derivative| ring | squared-derivative ring, and, at offsets that depend on
# fs (`_layout`), cand_val | cand_slope | rr | scratch | template | beat | quality output | the
# kernel's float scratch (BLOCK).
OCAND = N_IST + N_PRM
OOUT = N_HDR
OCODE = OOUT + OUTCAP
NI = OCODE + 2 * BLOCK
OF = NI
OSOS = OF + N_FST
OZI = OSOS + 6 * NSEC
OZU = OZI + 2 * NSEC
OBP = OZU + 2 * NSEC
_F64 = np.dtype(np.float64)
_NO_BEATS = np.zeros(0, np.int64)  # `process` returns fresh views of it: cheaper than np.empty


@njit(cache=True, boundscheck=False)
def _layout(ib):
    """Offsets in the state buffer of the parts whose place depends on fs (see `_setup`)."""
    ring = ib[N_IST + P_RING]
    m_t = ib[N_IST + P_M]
    od = OBP + ring
    oe = od + ring
    ocv = oe + ring
    ocs = ocv + MAX_CAND
    orr = ocs + MAX_CAND
    osc = orr + N_RR
    otm = osc + N_RR
    obt = otm + m_t
    oq = obt + m_t
    omv = oq + ib[N_IST + P_QCAP]
    return od, oe, ocv, ocs, orr, osc, otm, obt, oq, omv


@njit(cache=True, boundscheck=False)
def _median(buf, orr, n, osc):
    """Median of the first n RRs at buf[orr:], sorted in the scratch at buf[osc:]."""
    for i in range(n):
        buf[osc + i] = buf[orr + i]
    for i in range(1, n):  # insertion sort: n <= 8
        v = buf[osc + i]
        j = i - 1
        while j >= 0 and buf[osc + j] > v:
            buf[osc + j + 1] = buf[osc + j]
            j -= 1
        buf[osc + j + 1] = v
    if n % 2 == 1:
        return buf[osc + n // 2]
    return 0.5 * (buf[osc + n // 2 - 1] + buf[osc + n // 2])


@njit(cache=True, boundscheck=False)
def _ring_absmax(buf, o, mask, lo, hi):
    """Index of max |ring| over absolute samples [lo, hi] (the ring at buf[o:])."""
    best = -1.0
    bi = hi
    for t in range(lo, hi + 1):
        v = abs(buf[o + (t & mask)])
        if v > best:
            best = v
            bi = t
    return bi


@njit(cache=True, boundscheck=False)
def _ring_max(buf, o, mask, lo, hi):
    best = 0.0
    for t in range(lo, hi + 1):
        v = buf[o + (t & mask)]
        if v > best:
            best = v
    return best


@njit(cache=True, boundscheck=False)
def _template_corr(buf, ib, mask, r, h, otm, obt):
    """Correlation of the beat around bp index r with the running template (buf[otm:]);
    updates it. buf[obt:] is scratch for the beat."""
    m = 2 * h + 1
    mean = 0.0
    for k in range(m):
        buf[obt + k] = buf[OBP + ((r - h + k) & mask)]
        mean += buf[obt + k]
    mean /= m
    nrm = 0.0
    for k in range(m):
        buf[obt + k] -= mean
        nrm += buf[obt + k] * buf[obt + k]
    if nrm <= 0.0:
        return 0.0
    nrm = np.sqrt(nrm)
    tn = 0.0
    dot = 0.0
    for k in range(m):
        buf[obt + k] /= nrm
        tn += buf[otm + k] * buf[otm + k]
        dot += buf[otm + k] * buf[obt + k]
    c = dot / np.sqrt(tn) if (ib[I_NTMPL] > 0 and tn > 0.0) else 1.0
    a = 1.0 / (ib[I_NTMPL] + 1) if ib[I_NTMPL] < 8 else 0.125  # quick start, then EMA
    for k in range(m):
        buf[otm + k] += a * (buf[obt + k] - buf[otm + k])
    ib[I_NTMPL] += 1
    return c


@njit(cache=True, boundscheck=False)
def _accept(p, v, slope, searchback, buf, ib, n_out):
    """Accept the MWI peak at p as a beat; returns the new output count."""
    _, _, _, _, orr, osc, otm, obt, _, _ = _layout(ib)
    mask = ib[N_IST + P_MASK]
    w = ib[N_IST + P_W]
    lo = p - w - 4 * ib[N_IST + P_S]
    rb = _ring_absmax(buf, OBP, mask, lo, p)   # R on the band-passed signal
    r = rb - ib[N_IST + P_GD]                  # back to the raw signal's time
    if r <= ib[I_LASTR] or n_out >= ib[N_IST + P_OUTCAP]:  # capacity: never reached
        return n_out
    if ib[I_LASTP] >= 0 and ib[I_VIRTUAL] == 0:
        rr = r - ib[I_LASTR]
        rrmax = ib[N_IST + P_RRMAX]
        if ib[N_IST + P_RRMIN] <= rr <= 2 * rrmax:
            buf[orr + ib[I_NRR] % N_RR] = rr
            ib[I_NRR] += 1
            nrr = min(ib[I_NRR], N_RR)
            if nrr >= 2:
                buf[OF + F_RRMED] = min(_median(buf, orr, nrr, osc), float(rrmax))
    a = 0.25 if searchback else 0.125
    buf[OF + F_SPK] = a * v + (1.0 - a) * buf[OF + F_SPK]
    ib[I_LASTP] = p
    ib[I_LASTR] = r
    ib[I_VIRTUAL] = 0
    ib[I_NDECAY] = 0
    buf[OF + F_LASTSLOPE] = slope
    c = _template_corr(buf, ib, mask, rb, ib[N_IST + P_M] // 2, otm, obt)
    buf[OF + F_QCORR] += max(c, 0.0)
    ib[I_QBEATS] += 1
    ib[OOUT + n_out] = r
    return n_out + 1


@njit(cache=True, boundscheck=False)
def _is_twave(p, slope, buf, ib):
    return (ib[I_LASTP] >= 0 and ib[I_VIRTUAL] == 0 and p - ib[I_LASTP] < ib[N_IST + P_TWAVE]
            and slope < 0.5 * buf[OF + F_LASTSLOPE])


@njit(cache=True, boundscheck=False)
def _searchback(t_eval, buf, ib, n_out):
    """Accept the largest earlier candidate above the lower threshold while a beat is overdue."""
    _, _, ocv, ocs, _, _, _, _, _, _ = _layout(ib)
    while ib[I_DIRTY] == 1 and t_eval - ib[I_LASTP] > SEARCHBACK_RR * buf[OF + F_RRMED]:
        thr2 = 0.5 * (buf[OF + F_NPK] + 0.25 * (buf[OF + F_SPK] - buf[OF + F_NPK]))
        best = -1
        bv = thr2
        for k in range(ib[I_NCAND]):
            pk = ib[OCAND + k]
            if ((ib[I_VIRTUAL] == 1 or pk - ib[I_LASTP] >= ib[N_IST + P_REFR])
                    and buf[ocv + k] > bv and not _is_twave(pk, buf[ocs + k], buf, ib)):
                best = k
                bv = buf[ocv + k]
        if best < 0:
            ib[I_DIRTY] = 0
            break
        n_out = _accept(ib[OCAND + best], buf[ocv + best], buf[ocs + best], True, buf, ib,
                        n_out)
        keep = 0
        for k in range(best + 1, ib[I_NCAND]):
            ib[OCAND + keep] = ib[OCAND + k]
            buf[ocv + keep] = buf[ocv + k]
            buf[ocs + keep] = buf[ocs + k]
            keep += 1
        ib[I_NCAND] = keep
    return n_out


@njit(cache=True, boundscheck=False)
def _classify(p, v, buf, ib, n_out):
    """Decide on a confirmed MWI peak: beat, T wave/noise, or search-back candidate."""
    if ib[I_LASTP] >= 0 and ib[I_VIRTUAL] == 0 and p - ib[I_LASTP] < ib[N_IST + P_REFR]:
        return n_out
    od, _, ocv, ocs, _, _, _, _, _, _ = _layout(ib)
    slope = _ring_max(buf, od, ib[N_IST + P_MASK], p - ib[N_IST + P_W], p)
    npk = buf[OF + F_NPK]
    thr1 = npk + 0.25 * (buf[OF + F_SPK] - npk)
    if v > thr1 and not _is_twave(p, slope, buf, ib):
        n_out = _accept(p, v, slope, False, buf, ib, n_out)
        ib[I_NCAND] = 0
        return n_out
    buf[OF + F_NPK] = 0.125 * v + 0.875 * npk
    if v > 0.5 * thr1:
        if ib[I_NCAND] == MAX_CAND:  # drop the oldest
            for k in range(MAX_CAND - 1):
                ib[OCAND + k] = ib[OCAND + k + 1]
                buf[ocv + k] = buf[ocv + k + 1]
                buf[ocs + k] = buf[ocs + k + 1]
            ib[I_NCAND] -= 1
        k = ib[I_NCAND]
        ib[OCAND + k] = p
        buf[ocv + k] = v
        buf[ocs + k] = slope
        ib[I_NCAND] += 1
        ib[I_DIRTY] = 1
    return n_out


@njit(cache=True, boundscheck=False)
def _quality_close(buf, ib):
    n = max(ib[I_QN], 1)
    valid = ib[I_QVALID] / n
    nb = ib[I_QBEATS]
    win_s = ib[N_IST + P_QWIN] / (ib[N_IST + P_TH] / 1000.0)  # window length in seconds
    if nb == 0:
        q = 0.0
    else:
        corr = buf[OF + F_QCORR] / nb
        rate = nb / win_s * 60.0
        plaus = 1.0 if 25.0 <= rate <= 240.0 else 0.5
        q = valid * corr * plaus
    buf[OF + F_QUAL] = min(max(q, 0.0), 1.0)
    nq = ib[N_IST + P_NQ]
    if nq < ib[N_IST + P_QCAP]:
        _, _, _, _, _, _, _, _, oq, _ = _layout(ib)
        buf[oq + nq] = buf[OF + F_QUAL]
        ib[N_IST + P_NQ] += 1
    ib[I_QN] = 0
    ib[I_QVALID] = 0
    ib[I_QBEATS] = 0
    buf[OF + F_QCORR] = 0.0


@njit(cache=True, boundscheck=False)
def _detect_chunk(x, buf):
    """Run the detector over one chunk (at most MAX_CHUNK samples, else -1 and nothing done).
    Returns beats + (qualities << 32): the number of beats written to the output area of `buf`
    and of window qualities written to its quality area.

    All state is packed into one float array (the int part through a view), so that a call from
    Python costs little; the per-sample state lives in local variables for the whole call and
    is written back at the end. The chunk goes through in blocks of at most BLOCK samples, each
    in two passes, sample by sample and in order in both:
      A. gaps/lead-off, band-pass, derivative, squaring, MWI: depends on the signal only. It
         leaves, per sample, the MWI value and a code (valid, past the settling, gap/lead-off
         start with the cut-off index, filter restart) in scratch areas.
      B. peak logic on those, exactly as if it ran in the same sample step: the events of A
         are applied at their sample. B reads the rings only at or before its own sample and
         at most LOOKBACK + LAG + MWI + 0.08 s back, and A is at most BLOCK samples ahead:
         the rings are sized for that, so B sees what a single pass would have shown it.
    The rare paths (a confirmed MWI peak, search-back, quality window) find the state in the
    arrays: it is stored before and reloaded after each of them."""
    nx = x.shape[0]
    if nx > MAX_CHUNK:
        return -1
    ib = buf[:NI].view(np.int64)  # the int part; the rest is read through offsets
    mask = ib[N_IST + P_MASK]
    w = ib[N_IST + P_W]
    s = ib[N_IST + P_S]
    lag = ib[N_IST + P_LAG]
    lookback = ib[N_IST + P_LOOKBACK]
    decay = ib[N_IST + P_DECAY]
    qwin = ib[N_IST + P_QWIN]
    p_flat = ib[N_IST + P_FLAT]
    p_settle = ib[N_IST + P_SETTLE]
    p_learn = ib[N_IST + P_LEARN]
    ib[N_IST + P_NQ] = 0
    fs = ib[N_IST + P_TH] / 1000.0
    kd = fs / (8.0 * s)
    od, oe, ocv, ocs, _, _, _, _, _, omv = _layout(ib)

    b00, b01, b02, a01, a02 = buf[OSOS], buf[OSOS + 1], buf[OSOS + 2], buf[OSOS + 4], buf[OSOS + 5]
    b10, b11, b12, a11, a12 = (buf[OSOS + 6], buf[OSOS + 7], buf[OSOS + 8], buf[OSOS + 10],
                               buf[OSOS + 11])
    z0, z1, z2, z3 = buf[OZI], buf[OZI + 1], buf[OZI + 2], buf[OZI + 3]
    lastx = buf[OF + F_LASTX]
    msum = buf[OF + F_MSUM]
    mprev = buf[OF + F_MPREV]
    pendv = buf[OF + F_PENDV]
    n0 = ib[I_N]
    flat = ib[I_FLAT]
    leadoff = ib[I_LEADOFF]
    gap = ib[I_GAP]
    reset = ib[I_RESET]
    settle = ib[I_SETTLE]
    mwin = ib[I_MWIN]
    rising = ib[I_RISING]
    pend = ib[I_PEND]
    pendpos = ib[I_PENDPOS]
    lastp = ib[I_LASTP]
    ncand = ib[I_NCAND]
    dirty = ib[I_DIRTY]
    decayat = ib[I_DECAYAT]
    learned = ib[I_LEARNED]
    qvalid = ib[I_QVALID]
    qn = ib[I_QN]

    n_out = 0
    for b0 in range(0, nx, BLOCK):
        nb = min(BLOCK, nx - b0)
        # ---- pass A: signal path -------------------------------------------------------
        for j in range(nb):
            n = n0 + j
            xi = x[b0 + j]
            c = 0
            valid = True
            if np.isnan(xi):
                valid = False
                ib[I_NNAN] += 1
                if gap == 0:
                    gap = 1
                    ib[I_NGAPS] += 1
                    c = C_CUT
                    ib[OCODE + BLOCK + j] = n
                    reset = 1
            else:
                gap = 0
                if abs(xi - lastx) <= 1e-9 * (1.0 + abs(xi)):
                    flat += 1
                else:
                    flat = 0
                lastx = xi
                if leadoff == 1:
                    if flat == 0:
                        leadoff = 0
                    else:
                        valid = False
                elif flat >= p_flat:
                    leadoff = 1
                    ib[I_NLEADOFF] += 1
                    c = C_CUT
                    ib[OCODE + BLOCK + j] = n - flat - w
                    reset = 1
                    valid = False
            y = 0.0
            if valid:
                if reset == 1:
                    reset = 0
                    c = C_RESTART
                    z0 = buf[OZU] * xi
                    z1 = buf[OZU + 1] * xi
                    z2 = buf[OZU + 2] * xi
                    z3 = buf[OZU + 3] * xi
                    for k in range(4 * s + 1):
                        buf[OBP + ((n - k) & mask)] = 0.0
                    settle = n + p_settle
                # band-pass: two biquads, transposed direct form II
                u = b00 * xi + z0
                z0 = b01 * xi - a01 * u + z1
                z1 = b02 * xi - a02 * u
                y = b10 * u + z2
                z2 = b11 * u - a11 * y + z3
                z3 = b12 * u - a12 * y
                c |= C_VALID
            jn = n & mask
            buf[OBP + jn] = y
            d = (2.0 * y + buf[OBP + ((n - s) & mask)] - buf[OBP + ((n - 3 * s) & mask)]
                 - 2.0 * buf[OBP + ((n - 4 * s) & mask)]) * kd
            if not valid or n < settle:
                d = 0.0
            else:
                c |= C_SETTLED
            buf[od + jn] = abs(d)
            e = d * d
            msum += e - buf[oe + ((n - w) & mask)]
            buf[oe + jn] = e
            mwin += 1
            if mwin >= w:  # refresh the running sum against rounding drift
                mwin = 0
                tot = 0.0
                for k in range(w):
                    tot += buf[oe + ((n - k) & mask)]
                msum = tot
            buf[omv + j] = msum / w
            ib[OCODE + j] = c

        # ---- pass B: peak logic ----------------------------------------------------------
        for j in range(nb):
            n = n0 + j
            c = ib[OCODE + j]
            m = buf[omv + j]
            if c >= C_CUT:
                if c & C_CUT:  # gap or lead-off start: drop work from the cut-off on (a step
                    # into a lead-off looks like a QRS), no RR or search-back across it
                    if pendpos >= ib[OCODE + BLOCK + j]:
                        pend = 0
                    ncand = 0
                    lastp = -1
                else:  # filter restart
                    lastp = n + p_settle  # virtual beat: search-back starts from here
                    ib[I_LASTR] = max(ib[I_LASTR], n)
                    ib[I_VIRTUAL] = 1
            valid = (c & C_VALID) != 0
            if valid:
                qvalid += 1

            if learned == 0:  # initial thresholds from the first LEARN_S of good signal
                if (c & C_SETTLED) != 0:
                    buf[OF + F_LMAX] = max(buf[OF + F_LMAX], m)
                    buf[OF + F_LSUM] += m
                    ib[I_NLEARN] += 1
                    if ib[I_NLEARN] >= p_learn:
                        buf[OF + F_SPK] = 0.25 * buf[OF + F_LMAX]
                        buf[OF + F_NPK] = 0.5 * buf[OF + F_LSUM] / ib[I_NLEARN]
                        learned = 1
                        lastp = n
                        ib[I_VIRTUAL] = 1
            else:
                # MWI local maxima -> pending candidate (largest within LAG wins)
                if m > mprev:
                    rising = 1
                elif m < mprev and rising == 1:
                    rising = 0
                    if pend == 0 or mprev > pendv:
                        pend = 1
                        pendpos = n - 1
                        pendv = mprev
                if pend == 1 and n - pendpos >= lag:
                    pend = 0
                    ib[I_LASTP] = lastp
                    ib[I_NCAND] = ncand
                    ib[I_DIRTY] = dirty
                    n_out = _classify(pendpos, pendv, buf, ib, n_out)
                    lastp = ib[I_LASTP]
                    ncand = ib[I_NCAND]
                    dirty = ib[I_DIRTY]
                if lastp >= 0 and valid:
                    t_eval = n - lag
                    while ncand > 0 and ib[OCAND] < t_eval - lookback:
                        for k in range(ncand - 1):
                            ib[OCAND + k] = ib[OCAND + k + 1]
                            buf[ocv + k] = buf[ocv + k + 1]
                            buf[ocs + k] = buf[ocs + k + 1]
                        ncand -= 1
                    # search-back: only when it can do something (it is a no-op unless a beat
                    # is overdue, and with no candidate it would only clear `dirty`, which
                    # every new candidate sets again): saves a call per sample between beats
                    if (dirty == 1 and ncand > 0
                            and t_eval - lastp > SEARCHBACK_RR * buf[OF + F_RRMED]):
                        ib[I_LASTP] = lastp
                        ib[I_NCAND] = ncand
                        ib[I_DIRTY] = dirty
                        n_out = _searchback(t_eval, buf, ib, n_out)
                        lastp = ib[I_LASTP]
                        ncand = ib[I_NCAND]
                        dirty = ib[I_DIRTY]
                    # long silence: the gain may have dropped, halve thresholds (at most 5x)
                    since = t_eval - max(lastp, decayat)
                    if since > decay and ib[I_NDECAY] < 5:
                        buf[OF + F_SPK] *= 0.5
                        buf[OF + F_NPK] *= 0.5
                        ib[I_NDECAY] += 1
                        decayat = t_eval
                        dirty = 1
            mprev = m

            qn += 1
            if qn >= qwin:
                ib[I_QN] = qn
                ib[I_QVALID] = qvalid
                _quality_close(buf, ib)
                qn = ib[I_QN]
                qvalid = ib[I_QVALID]
        n0 += nb

    buf[OZI], buf[OZI + 1], buf[OZI + 2], buf[OZI + 3] = z0, z1, z2, z3
    buf[OF + F_LASTX] = lastx
    buf[OF + F_MSUM] = msum
    buf[OF + F_MPREV] = mprev
    buf[OF + F_PENDV] = pendv
    ib[I_N] = n0
    ib[I_FLAT] = flat
    ib[I_LEADOFF] = leadoff
    ib[I_GAP] = gap
    ib[I_RESET] = reset
    ib[I_SETTLE] = settle
    ib[I_MWIN] = mwin
    ib[I_RISING] = rising
    ib[I_PEND] = pend
    ib[I_PENDPOS] = pendpos
    ib[I_LASTP] = lastp
    ib[I_NCAND] = ncand
    ib[I_DIRTY] = dirty
    ib[I_DECAYAT] = decayat
    ib[I_LEARNED] = learned
    ib[I_QVALID] = qvalid
    ib[I_QN] = qn
    return n_out | (ib[N_IST + P_NQ] << 32)


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
        # the kernel's signal pass runs up to BLOCK samples ahead of its peak logic
        ring = 1 << int(np.ceil(np.log2((LOOKBACK_S + LAG_S + MWI_S + 0.5) * fs + BLOCK)))
        h = int(round(TEMPLATE_S * fs))
        nsec = sos.shape[0]
        assert nsec == NSEC  # the kernel runs the two biquads inline
        outcap = (MAX_CHUNK + ring) // int(round(REFRACTORY_S * fs)) + 8
        assert outcap <= OUTCAP
        qcap = MAX_CHUNK // int(round(QUALITY_WIN_S * fs)) + 2
        m_t = 2 * h + 1
        buf = np.zeros(NI + N_FST + 10 * nsec + 3 * ring + 2 * MAX_CAND + 2 * N_RR + 2 * m_t
                       + qcap + BLOCK)  # layout: see OCAND ... OBP and `_layout`
        ib = buf[:NI].view(np.int64)
        fb = buf[NI:]
        self._buf, self._ib, self._fb = buf, ib, fb
        self._ist = ib[:N_IST]
        prm = self._prm = ib[N_IST:N_IST + N_PRM]
        self._out = ib[OOUT:OOUT + outcap]
        self._fst = buf[OF:OF + N_FST]
        buf[OSOS:OSOS + 6 * nsec] = sos.ravel()
        buf[OZU:OZU + 2 * nsec] = _sig.sosfilt_zi(sos).ravel()
        oq = buf.size - BLOCK - qcap
        self._qout = buf[oq:oq + qcap]
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
        prm[P_M] = m_t
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
        if (chunk.__class__ is not np.ndarray or chunk.dtype is not _F64 or chunk.ndim != 1
                or not chunk.flags.c_contiguous):  # else as is: no conversion call per chunk
            chunk = np.ascontiguousarray(chunk, dtype=np.float64).reshape(-1)
        r = _detect_chunk(chunk, self._buf)
        if r == 0:  # the usual case at small chunks: nothing new
            return _NO_BEATS.view()
        if r < 0:  # longer than MAX_CHUNK: fed in pieces (bounds the output buffers)
            return np.concatenate([self.process(chunk[i:i + MAX_CHUNK])
                                   for i in range(0, chunk.shape[0], MAX_CHUNK)])
        n, nq = r & 0xFFFFFFFF, r >> 32
        if nq:
            self.quality_history.extend(self._qout[:nq].tolist())
        return self._out[:n].copy() if n else _NO_BEATS.view()

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
