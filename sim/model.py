"""The numba kernels of the virtual patient.

All state lives in explicit float64 arrays (`state`, `par`) plus one uint64 word per random
stream (`rng`); the Python class in `sim.patient` owns them. One kernel call advances any span
of time: slow physiology is stepped on a fixed 1 s tick grid from t0, and between ticks the
beats (IPFM, midpoint rule), respiration samples and breath phases, skin conductance samples,
ground truth and self-reports are emitted at their exact times. Because every event is
scheduled from state rather than from the call boundaries, cutting a span into several
calls gives bit-identical output.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

TICK_S = 1.0           # slow physiology step
MIN_RR_S = 0.25        # bounds the beat buffer: at most 4 beats per second
MAX_RESP_BPM = 40.0    # bounds the exhalation buffer
NRS_MIN_GAP_S = 1800.0
DISCOMFORT_GAP_S = 60.0
N_TRUTH = 10
TRUTH_NAMES = ("pain", "vagal", "sympathetic", "mood", "inhibition", "hr_bpm", "stim_on",
               "afferent", "efferent", "resp_rate_bpm")
# rating codes 0..10 are NRS values
CODE_HOARSENESS = 11
CODE_COUGH = 12

PARAM_NAMES = (
    "hr0", "v0", "s0", "k_hr_s", "k_hr_v", "a_hf", "a_lf", "rr_noise", "hr_ou_sd", "lf_hz",
    "ectopic_p", "sleep_hr", "k_pain_v", "k_pain_s",
    "qa50", "qa_w", "qb50", "qb_w", "qc50", "qc_w", "tachy_gain", "brady_gain", "f_opt",
    "f_sigma", "aff_gain",
    "tau_on", "tau_off", "tau_plast", "plast_gain", "tau_hab", "hab_max", "w_inh", "w_plast",
    "relief_max",
    "pain_base", "pain_circ", "pain_noise_sd", "pain_noise_tau", "spike_rate_h", "spike_amp",
    "spike_tau", "attack_rate_d", "attack_amp", "attack_dur_h",
    "rescue_thr", "rescue_relief", "rescue_tau", "rescue_gap",
    "mood0", "mood_gain", "mood_pain", "tau_mood",
    "resp_bpm", "resp_sd", "insp_frac",
    "eda0", "eda_s", "scr_rate_min", "scr_amp",
    "disc_thr", "asys_thr", "asys_p", "nrs_sd", "tod0_h", "wake_h", "sleep_h",
)
(P_HR0, P_V0, P_S0, P_K_HR_S, P_K_HR_V, P_A_HF, P_A_LF, P_RR_NOISE, P_HR_OU_SD, P_LF_HZ,
 P_ECTOPIC_P, P_SLEEP_HR, P_K_PAIN_V, P_K_PAIN_S,
 P_QA50, P_QA_W, P_QB50, P_QB_W, P_QC50, P_QC_W, P_TACHY_GAIN, P_BRADY_GAIN, P_F_OPT,
 P_F_SIGMA, P_AFF_GAIN,
 P_TAU_ON, P_TAU_OFF, P_TAU_PLAST, P_PLAST_GAIN, P_TAU_HAB, P_HAB_MAX, P_W_INH, P_W_PLAST,
 P_RELIEF_MAX,
 P_PAIN_BASE, P_PAIN_CIRC, P_PAIN_NOISE_SD, P_PAIN_NOISE_TAU, P_SPIKE_RATE_H, P_SPIKE_AMP,
 P_SPIKE_TAU, P_ATTACK_RATE_D, P_ATTACK_AMP, P_ATTACK_DUR_H,
 P_RESCUE_THR, P_RESCUE_RELIEF, P_RESCUE_TAU, P_RESCUE_GAP,
 P_MOOD0, P_MOOD_GAIN, P_MOOD_PAIN, P_TAU_MOOD,
 P_RESP_BPM, P_RESP_SD, P_INSP_FRAC,
 P_EDA0, P_EDA_S, P_SCR_RATE_MIN, P_SCR_AMP,
 P_DISC_THR, P_ASYS_THR, P_ASYS_P, P_NRS_SD, P_TOD0_H, P_WAKE_H, P_SLEEP_H) = range(66)
assert len(PARAM_NAMES) == 66
# per-tick decay factors exp(-TICK_S / tau), appended to the parameter vector by `with_derived`
_DERIVED_FROM = ("tau_on", "tau_off", "tau_plast", "tau_hab", "pain_noise_tau", "spike_tau",
                 "rescue_tau", "tau_mood")
(D_ON, D_OFF, D_PLAST, D_HAB, D_PAIN_NOISE, D_SPIKE, D_RESCUE, D_MOOD) = range(66, 74)


def with_derived(par: np.ndarray) -> np.ndarray:
    taus = np.array([par[PARAM_NAMES.index(n)] for n in _DERIVED_FROM])
    return np.concatenate([par, np.exp(-TICK_S / taus)])

STATE_NAMES = (
    # clock and sampling grids (k_* are the indices of the next sample on each grid)
    "t", "t0", "k_tick", "resp_fs", "eda_fs", "truth_dt", "k_resp", "k_eda", "k_truth",
    # generator: settings-derived drives while ON, and the duty-cycle origin
    "enabled", "train_on", "train_off", "cycle_start", "aff_on", "expo_on", "eff_on",
    "dhr_on", "disc_on",
    # slow physiology
    "sleep", "aff", "eff", "inh", "plast", "hab", "relief_eff", "pain", "pain_noise", "spike",
    "drug", "pain_avg", "last_dose", "attack", "attack_target", "attack_end", "next_attack",
    "next_spike", "mood", "vagal", "symp", "hr_slow", "hr_noise",
    # respiration phase (cycles) = phi_ref + rate * (t - phi_t); next crossing to handle
    "resp_bpm", "resp_ou", "phi_ref", "phi_t", "breath_target", "next_is_exh", "breath_amp",
    # LF oscillation phase
    "lf_hz", "psi_ref", "psi_t",
    # beats
    "next_beat", "next_rr", "comp_pending", "hr_smooth", "in_brady",
    # skin conductance
    "eda_tonic", "eda_drift", "scr_a", "scr_b", "scr_t", "next_sscr", "pscr_t", "pscr_amp",
    # self-reports
    "next_nrs", "pend_nrs_t", "pend_nrs_v", "pend_disc_t", "pend_disc_code", "last_disc",
    # counters
    "rescue_doses", "bradycardia_events", "asystole_events", "discomfort_events",
    "stim_bradycardia_events",
)
(S_T, S_T0, S_K_TICK, S_RESP_FS, S_EDA_FS, S_TRUTH_DT, S_K_RESP, S_K_EDA, S_K_TRUTH,
 S_ENABLED, S_TRAIN_ON, S_TRAIN_OFF, S_CYCLE_START, S_AFF_ON, S_EXPO_ON, S_EFF_ON,
 S_DHR_ON, S_DISC_ON,
 S_SLEEP, S_AFF, S_EFF, S_INH, S_PLAST, S_HAB, S_RELIEF_EFF, S_PAIN, S_PAIN_NOISE, S_SPIKE,
 S_DRUG, S_PAIN_AVG, S_LAST_DOSE, S_ATTACK, S_ATTACK_TARGET, S_ATTACK_END, S_NEXT_ATTACK,
 S_NEXT_SPIKE, S_MOOD, S_VAGAL, S_SYMP, S_HR_SLOW, S_HR_NOISE,
 S_RESP_BPM, S_RESP_OU, S_PHI_REF, S_PHI_T, S_BREATH_TARGET, S_NEXT_IS_EXH, S_BREATH_AMP,
 S_LF_HZ, S_PSI_REF, S_PSI_T,
 S_NEXT_BEAT, S_NEXT_RR, S_COMP_PENDING, S_HR_SMOOTH, S_IN_BRADY,
 S_EDA_TONIC, S_EDA_DRIFT, S_SCR_A, S_SCR_B, S_SCR_T, S_NEXT_SSCR, S_PSCR_T, S_PSCR_AMP,
 S_NEXT_NRS, S_PEND_NRS_T, S_PEND_NRS_V, S_PEND_DISC_T, S_PEND_DISC_CODE, S_LAST_DISC,
 S_RESCUE_DOSES, S_BRADYCARDIA_EVENTS, S_ASYSTOLE_EVENTS, S_DISCOMFORT_EVENTS,
 S_STIM_BRADYCARDIA_EVENTS) = range(75)
assert len(STATE_NAMES) == 75
# Bradycardia events are every entry below 50 bpm, sleep included; the stimulation ones are
# those that begin during a train that slows the heart (above the neural fulcrum) or within
# STIM_BRADY_AFTER_S after one.
COUNTER_SLOTS = {"rescue_doses": S_RESCUE_DOSES, "bradycardia_events": S_BRADYCARDIA_EVENTS,
                 "asystole_events": S_ASYSTOLE_EVENTS, "discomfort_events": S_DISCOMFORT_EVENTS,
                 "stim_bradycardia_events": S_STIM_BRADYCARDIA_EVENTS}
STIM_BRADY_AFTER_S = 10.0

# random streams, one per subsystem, so that stimulation (which draws on R_STIM only, and
# changes the beat count) perturbs the other streams of a same-seed twin as little as possible
R_SLOW, R_BEAT, R_RESP, R_EDA, R_EVENT, R_STIM = range(6)
N_STREAMS = 6

# offsets of the output block (see VirtualPatient.advance)
(O_BEAT_T, O_RR, O_RESP_T, O_RESP, O_EXH, O_EDA_T, O_EDA, O_TRUTH_T, O_TRUTH, O_TRUTH_CAP,
 O_RAT_T, O_RAT_CODE) = range(12)
(C_BEAT, C_RESP, C_EXH, C_EDA, C_TRUTH, C_RAT) = range(6)

INF = np.inf
TWO_PI = 2.0 * np.pi
SCR_TAU_RISE = 0.75
SCR_TAU_DECAY = 4.0
# peak of exp(-t/decay) - exp(-t/rise), so that an SCR's amplitude is its peak in µS
_TP = math.log(SCR_TAU_DECAY / SCR_TAU_RISE) * SCR_TAU_DECAY * SCR_TAU_RISE / (
    SCR_TAU_DECAY - SCR_TAU_RISE)
SCR_NORM = 1.0 / (math.exp(-_TP / SCR_TAU_DECAY) - math.exp(-_TP / SCR_TAU_RISE))

# splitmix64
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U30 = np.uint64(30)
_U27 = np.uint64(27)
_U31 = np.uint64(31)
_U11 = np.uint64(11)


def seed_streams(seed: int) -> np.ndarray:
    """Independent splitmix64 states for the random streams of one patient."""
    mask = (1 << 64) - 1
    out = np.empty(N_STREAMS, np.uint64)
    for k in range(N_STREAMS):
        z = (int(seed) * 0x9E3779B97F4A7C15 + (k + 1) * 0xD1B54A32D192ED03) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out[k] = z ^ (z >> 31)
    return out


@njit(cache=True, inline="always")
def _u01(rng, k):
    """Uniform in (0, 1)."""
    x = rng[k] + _GOLD
    rng[k] = x
    z = (x ^ (x >> _U30)) * _M1
    z = (z ^ (z >> _U27)) * _M2
    z = z ^ (z >> _U31)
    return ((z >> _U11) + 0.5) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def _normal(rng, k):
    u1 = _u01(rng, k)
    u2 = _u01(rng, k)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(TWO_PI * u2)


@njit(cache=True, inline="always")
def _expo(rng, k, rate):
    """Exponential waiting time for a rate per second (inf when the rate is 0)."""
    if rate <= 0.0:
        return INF
    return -math.log(_u01(rng, k)) / rate


@njit(cache=True, inline="always")
def _mod(x, y):
    return x - y * math.floor(x / y)


@njit(cache=True, inline="always")
def _sig(x, x50, w):
    return 1.0 / (1.0 + math.exp(-(x - x50) / w))


@njit(cache=True, inline="always")
def _stim_on(st, t):
    """Actual delivery at t: the generator's own ON/OFF train, restarted at cycle_start."""
    if st[S_ENABLED] < 0.5 or st[S_TRAIN_ON] <= 0.0:
        return 0.0
    if st[S_TRAIN_OFF] <= 0.0:
        return 1.0
    if _mod(t - st[S_CYCLE_START], st[S_TRAIN_ON] + st[S_TRAIN_OFF]) < st[S_TRAIN_ON]:
        return 1.0
    return 0.0


@njit(cache=True)
def set_stim(st, par, stim):
    """Derive the drives the settings give while a train is ON (constant over a call)."""
    amp, f, pw, on, off, en = stim[0], stim[1], stim[2], stim[3], stim[4], stim[5]
    ok = en > 0.5 and amp > 0.0 and f > 0.0 and pw > 0.0
    for v in (amp, f, pw, on, off):
        if not math.isfinite(v):
            ok = False
    st[S_ENABLED] = 1.0 if ok else 0.0
    st[S_TRAIN_ON] = on if ok else 0.0
    st[S_TRAIN_OFF] = off if ok else 0.0
    if not ok:
        st[S_AFF_ON] = st[S_EXPO_ON] = st[S_EFF_ON] = st[S_DHR_ON] = st[S_DISC_ON] = 0.0
        return
    q = amp * pw  # charge per phase, nC
    a = _sig(q, par[P_QA50], par[P_QA_W])
    b = _sig(q, par[P_QB50], par[P_QB_W])
    c = _sig(q, par[P_QC50], par[P_QC_W])
    ff_aff = (f / (f + 5.0)) / 0.8     # 1 at 20 Hz
    ff_eff = (f / (f + 10.0)) * 1.5    # 1 at 20 Hz, efferent bradycardia grows with f
    lg = math.log(f / par[P_F_OPT]) / par[P_F_SIGMA]
    st[S_AFF_ON] = (0.8 * a + 0.4 * c) * math.exp(-0.5 * lg * lg) * par[P_AFF_GAIN]
    st[S_EXPO_ON] = a
    st[S_EFF_ON] = b * ff_eff
    st[S_DHR_ON] = par[P_TACHY_GAIN] * a * ff_aff - par[P_BRADY_GAIN] * b * ff_eff
    st[S_DISC_ON] = a * ff_aff


E_60 = math.exp(-TICK_S / 60.0)
E_120 = math.exp(-TICK_S / 120.0)
E_600 = math.exp(-TICK_S / 600.0)
E_1200 = math.exp(-TICK_S / 1200.0)
E_3600 = math.exp(-TICK_S / 3600.0)


@njit(cache=True)
def _tick(st, rng, par, tk):
    """Slow physiology over (tk, tk + TICK_S]; events due in it are scheduled at exact times."""
    t_next = tk + TICK_S
    on = _stim_on(st, tk + 0.5 * TICK_S)
    hours = _mod(par[P_TOD0_H] + (tk - st[S_T0]) / 3600.0, 24.0)
    awake = par[P_WAKE_H] <= hours < par[P_SLEEP_H]
    st[S_SLEEP] += ((0.0 if awake else 1.0) - st[S_SLEEP]) * (1.0 - E_600)
    z = st[S_SLEEP]
    awake_now = z < 0.5

    # stimulation -> descending inhibition, plasticity, habituation
    aff = on * st[S_AFF_ON] * (1.0 - st[S_HAB])
    st[S_AFF] = aff
    st[S_EFF] = on * st[S_EFF_ON]
    inh = st[S_INH]
    d = par[D_ON] if aff > inh else par[D_OFF]
    st[S_INH] = inh + (aff - inh) * (1.0 - d)
    st[S_PLAST] += (par[P_PLAST_GAIN] * st[S_INH] - st[S_PLAST]) * (1.0 - par[D_PLAST])
    st[S_HAB] += (par[P_HAB_MAX] * on * st[S_EXPO_ON] - st[S_HAB]) * (1.0 - par[D_HAB])
    reff = math.tanh(par[P_W_INH] * st[S_INH] + par[P_W_PLAST] * st[S_PLAST])
    st[S_RELIEF_EFF] = reff

    # pain: baseline + daily rhythm (worst in the evening) + attacks + spikes + noise
    circ = par[P_PAIN_CIRC] * math.cos(TWO_PI * (hours - 19.0) / 24.0)
    a = par[D_PAIN_NOISE]
    st[S_PAIN_NOISE] = (st[S_PAIN_NOISE] * a
                        + par[P_PAIN_NOISE_SD] * math.sqrt(1.0 - a * a) * _normal(rng, R_SLOW))
    st[S_SPIKE] *= par[D_SPIKE]
    while st[S_NEXT_SPIKE] <= t_next:
        ts = st[S_NEXT_SPIKE]
        amp = par[P_SPIKE_AMP] * _expo(rng, R_EVENT, 1.0)
        st[S_SPIKE] += amp
        # skin conductance answers 1 to 3 s after the spike
        if st[S_PSCR_T] == INF:
            st[S_PSCR_T] = ts + 1.0 + 2.0 * _u01(rng, R_EVENT)
            st[S_PSCR_AMP] = 0.0
        st[S_PSCR_AMP] += 0.25 * amp
        st[S_NEXT_SPIKE] = ts + _expo(rng, R_EVENT, par[P_SPIKE_RATE_H] / 3600.0)
    if par[P_ATTACK_RATE_D] > 0.0:
        if st[S_NEXT_ATTACK] <= t_next:
            st[S_ATTACK_TARGET] = par[P_ATTACK_AMP] * (1.0 + 0.15 * _normal(rng, R_EVENT))
            st[S_ATTACK_END] = tk + par[P_ATTACK_DUR_H] * 3600.0 * (0.5 + _u01(rng, R_EVENT))
            # lasting relief makes attacks rarer
            rate = par[P_ATTACK_RATE_D] / 86400.0 * (1.0 - 0.5 * reff)
            st[S_NEXT_ATTACK] = st[S_ATTACK_END] + _expo(rng, R_EVENT, rate)
        if tk >= st[S_ATTACK_END]:
            st[S_ATTACK_TARGET] = 0.0
        d = E_1200 if st[S_ATTACK_TARGET] > st[S_ATTACK] else E_3600
        st[S_ATTACK] += (st[S_ATTACK_TARGET] - st[S_ATTACK]) * (1.0 - d)
    st[S_DRUG] *= par[D_RESCUE]
    relief = par[P_RELIEF_MAX] * reff
    pain = (par[P_PAIN_BASE] + circ + st[S_ATTACK] * (1.0 - 0.3 * reff) + st[S_SPIKE]
            + st[S_PAIN_NOISE] - relief - st[S_DRUG])
    pain = min(max(pain, 0.0), 10.0)
    st[S_PAIN] = pain
    st[S_PAIN_AVG] += (pain - st[S_PAIN_AVG]) * (1.0 - E_3600)
    if (awake_now and st[S_PAIN_AVG] > par[P_RESCUE_THR]
            and tk - st[S_LAST_DOSE] >= par[P_RESCUE_GAP]):
        st[S_DRUG] += par[P_RESCUE_RELIEF]
        st[S_LAST_DOSE] = tk
        st[S_RESCUE_DOSES] += 1.0

    # autonomic tone: pain raises sympathetic and lowers vagal tone; sleep the reverse
    st[S_VAGAL] = par[P_V0] * math.exp(-par[P_K_PAIN_V] * pain) * (1.0 + 0.25 * z)
    st[S_SYMP] = par[P_S0] * (1.0 + par[P_K_PAIN_S] * pain) * (1.0 - 0.2 * z)
    a = E_60
    st[S_HR_NOISE] = (st[S_HR_NOISE] * a
                      + par[P_HR_OU_SD] * math.sqrt(1.0 - a * a) * _normal(rng, R_SLOW))
    st[S_HR_SLOW] = (par[P_HR0] + par[P_K_HR_S] * (st[S_SYMP] - 1.0)
                     - par[P_K_HR_V] * (st[S_VAGAL] - 1.0) + par[P_SLEEP_HR] * z + st[S_HR_NOISE])
    st[S_MOOD] += (par[P_MOOD0] + par[P_MOOD_GAIN] * reff
                   - par[P_MOOD_PAIN] * (st[S_PAIN_AVG] - par[P_PAIN_BASE])
                   - st[S_MOOD]) * (1.0 - par[D_MOOD])

    # breathing rate and LF rhythm drift; phases stay continuous across the change
    a = E_120
    st[S_RESP_OU] = st[S_RESP_OU] * a + math.sqrt(1.0 - a * a) * _normal(rng, R_SLOW)
    st[S_PHI_REF] += st[S_RESP_BPM] / 60.0 * (tk - st[S_PHI_T])
    st[S_PHI_T] = tk
    bpm = par[P_RESP_BPM] + par[P_RESP_SD] * st[S_RESP_OU] + 0.15 * (pain - 3.0) - 1.5 * z
    st[S_RESP_BPM] = min(max(bpm, 6.0), MAX_RESP_BPM)
    st[S_PSI_REF] += st[S_LF_HZ] * (tk - st[S_PSI_T])
    st[S_PSI_T] = tk
    st[S_LF_HZ] = par[P_LF_HZ] + 0.3 * (st[S_LF_HZ] - par[P_LF_HZ]) + 0.008 * _normal(rng, R_SLOW)

    # skin conductance tonic level follows sympathetic tone, with a slow drift
    a = E_600
    st[S_EDA_DRIFT] = st[S_EDA_DRIFT] * a + 0.3 * math.sqrt(1.0 - a * a) * _normal(rng, R_SLOW)
    target = par[P_EDA0] + par[P_EDA_S] * (st[S_SYMP] - 1.0) + st[S_EDA_DRIFT]
    st[S_EDA_TONIC] += (max(target, 0.2) - st[S_EDA_TONIC]) * (1.0 - E_60)

    # self-reports while awake
    if st[S_NEXT_NRS] <= t_next:
        if awake_now:
            v = pain + par[P_NRS_SD] * _normal(rng, R_EVENT)
            st[S_PEND_NRS_T] = st[S_NEXT_NRS]
            st[S_PEND_NRS_V] = min(max(math.floor(v + 0.5), 0.0), 10.0)
        st[S_NEXT_NRS] += NRS_MIN_GAP_S * (1.0 + _u01(rng, R_EVENT))
    # discomfort (hoarseness, cough) when laryngeal A-fibre recruitment passes the threshold
    thr = par[P_DISC_THR]
    if on > 0.0 and st[S_DISC_ON] > thr and tk - st[S_LAST_DISC] >= DISCOMFORT_GAP_S:
        rate = 0.1 + 0.5 * (st[S_DISC_ON] - thr) / max(1.0 - thr, 1e-3)
        if _u01(rng, R_STIM) < 1.0 - math.exp(-rate * TICK_S):
            st[S_PEND_DISC_T] = tk + TICK_S * _u01(rng, R_STIM)
            st[S_PEND_DISC_CODE] = CODE_COUGH if _u01(rng, R_STIM) < 0.3 else CODE_HOARSENESS
            st[S_LAST_DISC] = tk
            st[S_DISCOMFORT_EVENTS] += 1.0


@njit(cache=True)
def _next_rr(st, rng, par, tb):
    """The RR interval that starts at beat tb: IPFM with the modulation at the midpoint."""
    on = _stim_on(st, tb)
    hr = max(st[S_HR_SLOW] + on * st[S_DHR_ON], 20.0)
    t_mean = 60.0 / hr
    tm = tb + 0.5 * t_mean
    phi = st[S_PHI_REF] + st[S_RESP_BPM] / 60.0 * (tm - st[S_PHI_T])
    psi = st[S_PSI_REF] + st[S_LF_HZ] * (tm - st[S_PSI_T])
    m = (par[P_A_HF] * st[S_VAGAL] * math.sin(TWO_PI * (phi - 0.05))
         + par[P_A_LF] * st[S_SYMP] * math.sin(TWO_PI * psi)
         + par[P_RR_NOISE] * _normal(rng, R_BEAT))
    rr = t_mean / (1.0 + m)
    if st[S_COMP_PENDING] > 0.0:
        rr *= st[S_COMP_PENDING]
        st[S_COMP_PENDING] = 0.0
    elif _u01(rng, R_BEAT) < par[P_ECTOPIC_P]:
        # premature beat, then a compensatory pause
        rr *= 0.6
        st[S_COMP_PENDING] = 1.4
    if on > 0.0 and st[S_EFF_ON] > par[P_ASYS_THR]:
        p = par[P_ASYS_P] * (st[S_EFF_ON] - par[P_ASYS_THR]) / max(1.0 - par[P_ASYS_THR], 1e-3)
        if _u01(rng, R_STIM) < p:
            rr = 3.0 + 2.0 * _u01(rng, R_STIM)
            st[S_ASYSTOLE_EVENTS] += 1.0
    return max(rr, MIN_RR_S)


@njit(cache=True)
def _scr_decay_to(st, t):
    dt = t - st[S_SCR_T]
    if dt > 0.0:
        st[S_SCR_A] *= math.exp(-dt / SCR_TAU_RISE)
        st[S_SCR_B] *= math.exp(-dt / SCR_TAU_DECAY)
        st[S_SCR_T] = t


@njit(cache=True)
def advance_kernel(st, rng, par, stim, t_end, out, offs, cnt):
    """Advance the patient from st[S_T] to t_end, writing into `out` at `offs`; counts in `cnt`."""
    set_stim(st, par, stim)
    for i in range(cnt.shape[0]):
        cnt[i] = 0
    t0 = st[S_T0]
    fi = par[P_INSP_FRAC]
    t = st[S_T]
    while t < t_end:
        t_tick = t0 + st[S_K_TICK] * TICK_S
        if t >= t_tick:
            _tick(st, rng, par, t_tick)
            st[S_K_TICK] += 1.0
            t_tick = t0 + st[S_K_TICK] * TICK_S
        seg = min(t_end, t_tick)

        # beats
        while st[S_NEXT_BEAT] <= seg:
            tb = st[S_NEXT_BEAT]
            rr = st[S_NEXT_RR]
            n = cnt[C_BEAT]
            out[offs[O_BEAT_T] + n] = tb
            out[offs[O_RR] + n] = rr * 1000.0
            cnt[C_BEAT] = n + 1
            st[S_HR_SMOOTH] += (60.0 / rr - st[S_HR_SMOOTH]) * 0.25
            if st[S_IN_BRADY] < 0.5 and st[S_HR_SMOOTH] < 50.0:
                st[S_IN_BRADY] = 1.0
                st[S_BRADYCARDIA_EVENTS] += 1.0
                if st[S_DHR_ON] < 0.0 and (_stim_on(st, tb) > 0.5
                                           or _stim_on(st, tb - STIM_BRADY_AFTER_S) > 0.5):
                    st[S_STIM_BRADYCARDIA_EVENTS] += 1.0
            elif st[S_IN_BRADY] > 0.5 and st[S_HR_SMOOTH] > 55.0:
                st[S_IN_BRADY] = 0.0
            rr = _next_rr(st, rng, par, tb)
            st[S_NEXT_RR] = rr
            st[S_NEXT_BEAT] = tb + rr

        # respiration samples, interleaved with the breath-phase crossings; a smoothstep
        # half-breath shape (within 1 % of a raised cosine) keeps 25 Hz cheap
        rate = st[S_RESP_BPM] / 60.0
        fs = st[S_RESP_FS]
        while True:
            tc = st[S_PHI_T] + (st[S_BREATH_TARGET] - st[S_PHI_REF]) / rate
            if fs > 0.0:
                inhaling = st[S_NEXT_IS_EXH] > 0.5
                start = st[S_BREATH_TARGET] - (fi if inhaling else 1.0 - fi)
                scale = 1.0 / (fi if inhaling else 1.0 - fi)
                amp = st[S_BREATH_AMP]
                k = st[S_K_RESP]
                n = cnt[C_RESP]
                ot = offs[O_RESP_T]
                ov = offs[O_RESP]
                ts = t0 + k / fs
                while ts <= seg and ts < tc:
                    u = (st[S_PHI_REF] + rate * (ts - st[S_PHI_T]) - start) * scale
                    u = min(max(u, 0.0), 1.0)
                    shape = u * u * (3.0 - 2.0 * u)
                    if not inhaling:
                        shape = 1.0 - shape
                    out[ot + n] = ts
                    out[ov + n] = amp * shape + 0.02 * (_u01(rng, R_RESP) - 0.5)
                    n += 1
                    k += 1.0
                    ts = t0 + k / fs
                cnt[C_RESP] = n
                st[S_K_RESP] = k
            if tc > seg:
                break
            if st[S_NEXT_IS_EXH] > 0.5:
                out[offs[O_EXH] + cnt[C_EXH]] = tc
                cnt[C_EXH] += 1
                st[S_BREATH_TARGET] += 1.0 - fi
                st[S_NEXT_IS_EXH] = 0.0
            else:
                st[S_BREATH_AMP] = 1.0 + 0.12 * _normal(rng, R_RESP)
                st[S_BREATH_TARGET] += fi
                st[S_NEXT_IS_EXH] = 1.0

        # skin conductance samples, interleaved with SCR onsets
        fs = st[S_EDA_FS]
        while True:
            te = t0 + st[S_K_EDA] / fs if fs > 0.0 else INF
            tp = st[S_PSCR_T]
            tsp = st[S_NEXT_SSCR]
            tmin = min(te, tp, tsp)
            if tmin > seg:
                break
            if tmin == tp:
                _scr_decay_to(st, tp)
                st[S_SCR_A] += st[S_PSCR_AMP]
                st[S_SCR_B] += st[S_PSCR_AMP]
                st[S_PSCR_T] = INF
            elif tmin == tsp:
                _scr_decay_to(st, tsp)
                amp = par[P_SCR_AMP] * math.exp(0.5 * _normal(rng, R_EDA))
                st[S_SCR_A] += amp
                st[S_SCR_B] += amp
                rate_s = par[P_SCR_RATE_MIN] / 60.0 * st[S_SYMP] * (1.0 - 0.7 * st[S_SLEEP])
                st[S_NEXT_SSCR] = tsp + _expo(rng, R_EDA, rate_s)
            else:
                _scr_decay_to(st, te)
                n = cnt[C_EDA]
                out[offs[O_EDA_T] + n] = te
                out[offs[O_EDA] + n] = (st[S_EDA_TONIC] + SCR_NORM * (st[S_SCR_B] - st[S_SCR_A])
                                        + 0.005 * (_u01(rng, R_EDA) - 0.5))
                cnt[C_EDA] = n + 1
                st[S_K_EDA] += 1.0

        # ground truth
        while True:
            tg = t0 + st[S_K_TRUTH] * st[S_TRUTH_DT]
            if tg > seg:
                break
            n = cnt[C_TRUTH]
            cap = offs[O_TRUTH_CAP]
            base = offs[O_TRUTH] + n
            on = _stim_on(st, tg)
            out[offs[O_TRUTH_T] + n] = tg
            out[base] = st[S_PAIN]
            out[base + cap] = st[S_VAGAL]
            out[base + 2 * cap] = st[S_SYMP]
            out[base + 3 * cap] = st[S_MOOD]
            out[base + 4 * cap] = st[S_INH]
            out[base + 5 * cap] = st[S_HR_SLOW] + on * st[S_DHR_ON]
            out[base + 6 * cap] = on
            out[base + 7 * cap] = on * st[S_AFF_ON] * (1.0 - st[S_HAB])
            out[base + 8 * cap] = on * st[S_EFF_ON]
            out[base + 9 * cap] = st[S_RESP_BPM]
            cnt[C_TRUTH] = n + 1
            st[S_K_TRUTH] += 1.0

        # patient markers, in time order
        while True:
            tn = st[S_PEND_NRS_T]
            td = st[S_PEND_DISC_T]
            if min(tn, td) > seg:
                break
            n = cnt[C_RAT]
            if tn <= td:
                out[offs[O_RAT_T] + n] = tn
                out[offs[O_RAT_CODE] + n] = st[S_PEND_NRS_V]
                st[S_PEND_NRS_T] = INF
            else:
                out[offs[O_RAT_T] + n] = td
                out[offs[O_RAT_CODE] + n] = st[S_PEND_DISC_CODE]
                st[S_PEND_DISC_T] = INF
            cnt[C_RAT] = n + 1
        t = seg
    st[S_T] = max(t, st[S_T])


@njit(cache=True)
def init_state(st, rng, par, t0, resp_fs, eda_fs, truth_dt):
    """Start at rest, near the profile's steady state, at t0."""
    st[:] = 0.0
    st[S_T] = t0
    st[S_T0] = t0
    st[S_RESP_FS] = resp_fs
    st[S_EDA_FS] = eda_fs
    st[S_TRUTH_DT] = truth_dt
    st[S_K_RESP] = 1.0
    st[S_K_EDA] = 1.0
    st[S_K_TRUTH] = 1.0
    hours = _mod(par[P_TOD0_H], 24.0)
    st[S_SLEEP] = 0.0 if par[P_WAKE_H] <= hours < par[P_SLEEP_H] else 1.0
    st[S_PAIN] = par[P_PAIN_BASE]
    st[S_PAIN_AVG] = par[P_PAIN_BASE]
    st[S_LAST_DOSE] = -INF
    st[S_LAST_DISC] = -INF
    st[S_ATTACK_END] = -INF
    st[S_NEXT_ATTACK] = t0 + _expo(rng, R_EVENT, par[P_ATTACK_RATE_D] / 86400.0)
    st[S_NEXT_SPIKE] = t0 + _expo(rng, R_EVENT, par[P_SPIKE_RATE_H] / 3600.0)
    st[S_NEXT_NRS] = t0 + NRS_MIN_GAP_S * _u01(rng, R_EVENT)
    st[S_PEND_NRS_T] = INF
    st[S_PEND_DISC_T] = INF
    st[S_MOOD] = par[P_MOOD0]
    st[S_VAGAL] = par[P_V0] * math.exp(-par[P_K_PAIN_V] * par[P_PAIN_BASE])
    st[S_SYMP] = par[P_S0] * (1.0 + par[P_K_PAIN_S] * par[P_PAIN_BASE])
    st[S_HR_SLOW] = (par[P_HR0] + par[P_K_HR_S] * (st[S_SYMP] - 1.0)
                     - par[P_K_HR_V] * (st[S_VAGAL] - 1.0))
    st[S_HR_SMOOTH] = st[S_HR_SLOW]
    st[S_RESP_BPM] = par[P_RESP_BPM]
    st[S_PHI_T] = t0
    st[S_BREATH_TARGET] = par[P_INSP_FRAC]
    st[S_NEXT_IS_EXH] = 1.0
    st[S_BREATH_AMP] = 1.0
    st[S_LF_HZ] = par[P_LF_HZ]
    st[S_PSI_REF] = _u01(rng, R_SLOW)
    st[S_PSI_T] = t0
    st[S_NEXT_RR] = 60.0 / st[S_HR_SLOW]
    st[S_NEXT_BEAT] = t0 + st[S_NEXT_RR] * _u01(rng, R_BEAT)
    st[S_EDA_TONIC] = par[P_EDA0] + par[P_EDA_S] * (st[S_SYMP] - 1.0)
    st[S_SCR_T] = t0
    st[S_NEXT_SSCR] = t0 + _expo(rng, R_EDA, par[P_SCR_RATE_MIN] / 60.0)
    st[S_PSCR_T] = INF
