"""Patient profiles and cohort draws.

A profile is a nominal patient; `patient_params(profile, seed)` draws a cohort member around it
(seed 0 is the nominal patient). Charges are in nC per phase (mA x µs), times in seconds,
pain and mood on 0-10 scales, autonomic tones dimensionless (1 = healthy resting).
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from sim.model import PARAM_NAMES

DAY = 86400.0
HOUR = 3600.0


@dataclass(frozen=True)
class PatientParams:
    # heart and autonomic tone
    hr0: float = 66.0            # bpm at vagal = sympathetic = 1, awake
    v0: float = 0.85             # vagal tone without pain
    s0: float = 1.0              # sympathetic tone without pain
    k_hr_s: float = 10.0         # bpm per unit sympathetic tone
    k_hr_v: float = 15.0         # bpm per unit vagal tone
    a_hf: float = 0.045          # RSA depth (fraction of RR) per unit vagal tone
    a_lf: float = 0.035          # 0.1 Hz depth per unit sympathetic tone
    rr_noise: float = 0.008
    hr_ou_sd: float = 1.5        # slow heart-rate wander, bpm
    lf_hz: float = 0.1
    ectopic_p: float = 1.0 / 1500.0
    sleep_hr: float = -8.0
    k_pain_v: float = 0.06
    k_pain_s: float = 0.06
    # fibre recruitment (sigmoid in charge per phase) and its effects
    qa50: float = 250.0
    qa_w: float = 70.0
    qb50: float = 800.0
    qb_w: float = 130.0
    qc50: float = 1200.0
    qc_w: float = 200.0
    tachy_gain: float = 3.0      # bpm of afferent tachycardia at full A recruitment, 20 Hz
    brady_gain: float = 25.0     # bpm of efferent bradycardia at full B recruitment, 20 Hz
    f_opt: float = 20.0          # frequency of best afferent (analgesic) drive
    f_sigma: float = 0.8         # its width, in natural-log units
    aff_gain: float = 1.0
    # descending inhibition, plasticity, habituation
    tau_on: float = 180.0
    tau_off: float = 1200.0
    tau_plast: float = 5 * DAY
    plast_gain: float = 1.0
    tau_hab: float = 7 * DAY
    hab_max: float = 0.3
    w_inh: float = 1.5
    w_plast: float = 1.5
    relief_max: float = 3.0      # NRS points at full effect
    # pain
    pain_base: float = 6.5
    pain_circ: float = 0.6
    pain_noise_sd: float = 0.4
    pain_noise_tau: float = 1800.0
    spike_rate_h: float = 4.0
    spike_amp: float = 1.5
    spike_tau: float = 90.0
    attack_rate_d: float = 0.0
    attack_amp: float = 5.0
    attack_dur_h: float = 8.0
    rescue_thr: float = 7.3      # 1-h mean pain that makes the patient take rescue medication
    rescue_relief: float = 2.5
    rescue_tau: float = 4 * HOUR
    rescue_gap: float = 6 * HOUR
    # mood
    mood0: float = 4.0
    mood_gain: float = 2.0
    mood_pain: float = 0.2
    tau_mood: float = 2 * DAY
    # respiration
    resp_bpm: float = 15.0
    resp_sd: float = 0.8
    insp_frac: float = 0.4
    # skin conductance
    eda0: float = 3.0
    eda_s: float = 2.0
    scr_rate_min: float = 1.5
    scr_amp: float = 0.15
    # side effects, reports, day
    disc_thr: float = 0.95       # A recruitment x frequency factor
    asys_thr: float = 0.8        # efferent drive
    asys_p: float = 0.01         # per beat at full excess
    nrs_sd: float = 0.6
    tod0_h: float = 8.0          # time of day at t0
    wake_h: float = 7.0
    sleep_h: float = 23.0

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in PARAM_NAMES], dtype=np.float64)


assert tuple(f.name for f in fields(PatientParams)) == PARAM_NAMES

_FIBRO = PatientParams()
PROFILES: dict[str, PatientParams] = {
    "fibromyalgia": _FIBRO,
    "migraine": replace(_FIBRO, pain_base=1.2, pain_circ=0.2, pain_noise_sd=0.3,
                        spike_rate_h=1.0, attack_rate_d=0.5, attack_amp=5.5, attack_dur_h=8.0,
                        rescue_thr=5.0, v0=0.95, mood0=5.5, f_opt=25.0),
    "non_responder": replace(_FIBRO, aff_gain=0.12),
    "cardiac_sensitive": replace(_FIBRO, qb50=450.0, qb_w=90.0, brady_gain=30.0,
                                 asys_thr=0.6),
    # not a CLI profile: a healthy-like reference for tests
    "healthy": replace(_FIBRO, pain_base=0.3, pain_circ=0.0, pain_noise_sd=0.15,
                       spike_rate_h=0.2, spike_amp=0.5, rescue_thr=99.0, v0=1.0, s0=1.0,
                       mood0=7.0),
}


def patient_params(profile: str, seed: int) -> PatientParams:
    """A cohort member drawn around `profile`; seed 0 is the nominal patient."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    p = PROFILES[profile]
    if seed == 0:
        return p
    g = np.random.default_rng([int(seed), zlib.crc32(profile.encode())])

    def logn(x: float, sd: float) -> float:
        return float(x * np.exp(sd * g.standard_normal()))

    d = asdict(p)
    d.update(
        hr0=float(np.clip(p.hr0 + 5.0 * g.standard_normal(), 56.0, 78.0)),
        v0=float(np.clip(logn(p.v0, 0.15), 0.5, 1.4)),
        s0=float(np.clip(logn(p.s0, 0.1), 0.7, 1.4)),
        a_hf=logn(p.a_hf, 0.15), a_lf=logn(p.a_lf, 0.15),
        qa50=logn(p.qa50, 0.15), qb50=logn(p.qb50, 0.15), qc50=logn(p.qc50, 0.15),
        tachy_gain=logn(p.tachy_gain, 0.2), brady_gain=logn(p.brady_gain, 0.2),
        f_opt=float(np.clip(logn(p.f_opt, 0.35), 5.0, 30.0)),
        aff_gain=logn(p.aff_gain, 0.25),
        tau_on=logn(p.tau_on, 0.2), tau_off=float(g.uniform(900.0, 1800.0)),
        tau_plast=logn(p.tau_plast, 0.3), relief_max=logn(p.relief_max, 0.2),
        pain_base=float(np.clip(p.pain_base + 0.3 * g.standard_normal(),
                                p.pain_base - 0.5, p.pain_base + 0.5)),
        mood0=float(np.clip(p.mood0 + 0.5 * g.standard_normal(), 1.0, 9.0)),
        resp_bpm=float(g.uniform(12.5, 17.5)),
        eda0=logn(p.eda0, 0.3),
        disc_thr=float(np.clip(p.disc_thr + 0.02 * g.standard_normal(), 0.85, 0.99)),
    )
    return PatientParams(**d)
