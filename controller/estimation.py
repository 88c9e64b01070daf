"""Estimation: the autonomic state against the patient's own baseline, and a Bayesian filter
over latent pain that fuses physiological indices with sparse self-reports.

Pain model. Latent pain is read as the sum of

    pain(t) = w . phi(t)  +  e(t)  +  transient pain not seen (white, `phasic_sd`)

with regressors phi(t) = [1, cos wt, sin wt, z-scored physiology..., SCR load L(t)]:

- a personal level (intercept) that drifts slowly as a random walk (`level_drift_sd`: relief
  from stimulation, rescue medication, ...);
- a daily rhythm: one pair of harmonics of period `rhythm_period_s`, its phase learned
  (the controller's clock need not know the time of day);
- slow physiology: heart rate, ln RMSSD, ln LF power and EDA tonic as z-scores against the
  baseline period, smoothed over `physio_tau_s`. Their slopes start from a prior and are
  calibrated by the ratings; they join once `physio_min_ratings` reports exist. The priors
  carry the physiology's signs: pain raises sympathetic ln LF power (`lf_weight_mean` +-
  `lf_weight_sd`; sleep shifts it least, so it carries most weight) and withdraws vagal tone,
  lowering ln RMSSD (`rmssd_weight_mean` +- `rmssd_weight_sd`); heart rate and EDA tonic start
  at zero (+- `physio_weight_sd`). Sleep moves heart rate, RMSSD and EDA far more than pain
  does, so these three count only while awake: a soft gate closes when
  (z ln RMSSD - z HR) / 2 passes `sleep_gate_z`. The slopes' uncertainty is part of the
  reported sd, so readings far from what the calibration saw widen the interval instead of
  moving the mean blindly;
- a phasic term: brief pain transients show as skin-conductance responses (SCRs) a second or
  two later, with an amplitude about proportional to the transient. The SCR load
  L(t) = sum_i p_i a_i exp(-(t - onset_i) / scr_tau_s) weighs each response a_i by the
  posterior probability p_i that pain evoked it rather than the patient's spontaneous SCR
  activity: spontaneous SCRs are log-normal in amplitude (the running mean and sd of ln a of
  the patient's own SCRs; prior median `scr_gate_uS` exp(-`scr_gate_z`/2)) at their running
  rate (prior `scr_spont_rate_min`), pain-evoked ones exponential with mean
  `pain_transient_nrs` / `scr_gain` µS at the rate `pain_transient_rate_h`. Its gain (NRS per
  µS) starts at the prior `scr_gain` +- `scr_gain_sd` and is calibrated by the ratings like the
  other slopes;
- a dose term: the stimulation the supervisor let out, as mean delivered current (amplitude
  times the train's on-fraction, 0 while disabled) smoothed over `dose_tau_s`, the time over
  which descending inhibition builds up and wears off. Its slope starts at
  `dose_weight_mean` +- `dose_weight_sd` (NRS per mA) and is calibrated by the ratings; it lets
  the estimate follow relief that comes and goes with the stimulation (a train paused in
  sleep, a PID that lowers the amplitude) between reports instead of waiting for the next one.
  The slope needs its prior: ratings come only while awake and the dose is mostly steady then,
  so they tell the level and the slope apart slowly. The prior mean, -8 NRS per mA, is about
  1 NRS of relief from the clinical duty cycle (1.5 mA, 30 s on / 5 min off, 0.14 mA mean);
  it is also close to the virtual patient's nominal response;
- e(t): a residual Ornstein-Uhlenbeck process (`pain_tau_s`, `pain_stationary_sd`) that a
  rating pins down and that fades back between ratings.

The weights and e form one Kalman state (linear-Gaussian, so the regression and the residual
share each rating without counting it twice). Self-reports are direct noisy observations
(rounding plus report noise, `rating_noise_sd`). The estimate is causal; a tick costs a few
small vector operations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from controller.types import StateEstimate, Stimulation


@dataclass
class EstimationSettings:
    baseline_s: float = 300.0             # the patient's own reference period
    pain_prior_mean: float = 5.0          # prior on the personal level (NRS)
    pain_prior_sd: float = 2.5
    rating_noise_sd: float = 0.7          # rounding to integers plus report noise
    level_drift_sd: float = 0.15           # random walk of the personal level, NRS per sqrt(h)
    pain_tau_s: float = 1800.0            # residual slow pain: OU time constant
    pain_stationary_sd: float = 0.3      # residual slow pain: OU spread
    phasic_sd: float = 0.2                # transient pain that no SCR reveals (white)
    rhythm_period_s: float = 86400.0      # daily rhythm, phase learned
    rhythm_sd: float = 0.5                # prior sd of each harmonic coefficient (0: off)
    physio_tau_s: float = 300.0           # smoothing of the physiological z-scores
    physio_weight_sd: float = 0.1         # prior sd of each physiological slope (NRS per z)
    lf_weight_mean: float = 3.0           # prior mean of the ln LF power slope (NRS per z)
    lf_weight_sd: float = 1.0             # prior sd of the ln LF power slope (NRS per z)
    rmssd_weight_mean: float = -0.5       # prior mean of the ln RMSSD slope (NRS per z)
    rmssd_weight_sd: float = 0.3          # prior sd of the ln RMSSD slope (NRS per z)
    sleep_gate_z: float = 2.0             # sleep: (z ln RMSSD - z HR) / 2 above this
    physio_min_ratings: int = 4           # physiology joins after this many reports
    scr_tau_s: float = 90.0               # decay of the pain transient an SCR signals
    scr_gain: float = 4.0                 # prior gain, NRS per µS of pain-evoked SCR amplitude
    scr_gain_sd: float = 1.0              # prior sd of that gain
    scr_gate_uS: float = 0.4              # prior for spontaneous SCR amplitudes: with
    scr_gate_z: float = 2.0               #   median scr_gate_uS * exp(-scr_gate_z / 2)
    scr_spont_rate_min: float = 1.5       # prior rate of spontaneous SCRs (per min)
    pain_transient_rate_h: float = 4.0    # prior rate of brief pain transients (per h)
    pain_transient_nrs: float = 1.5       # their mean size (NRS), exponential
    dose_tau_s: float = 1200.0            # smoothing of the delivered current (relief's pace)
    dose_weight_mean: float = -8.0        # prior mean of the dose slope (NRS per mA)
    dose_weight_sd: float = 4.0           # prior sd of the dose slope (NRS per mA)


class RunningStats:
    """Mean and sd over the baseline period (Welford), then frozen."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            return
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self._m2 += d * (x - self.mean)

    @property
    def sd(self) -> float:
        return math.sqrt(self._m2 / (self.n - 1)) if self.n > 1 else float("nan")

    def z(self, x: float) -> float:
        sd = self.sd
        if not (math.isfinite(x) and math.isfinite(sd)) or self.n < 3:
            return float("nan")
        # A floor on sd: a very steady baseline must not turn small drifts into huge z-scores.
        return (x - self.mean) / max(sd, 0.05 * abs(self.mean) + 1e-9)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


class AutonomicEstimator:
    """Vagal index (ln HF, ln RMSSD) and sympathetic index (ln LF, heart rate, EDA tonic) as
    z-scores against the patient's own baseline period."""

    FEATURES = ("ln_hf", "ln_rmssd", "ln_lf", "hr", "eda")

    def __init__(self, baseline_s: float, t0: float):
        self.baseline_end = t0 + baseline_s
        self.stats = {k: RunningStats() for k in self.FEATURES}
        self.z: dict[str, float] = {k: float("nan") for k in self.FEATURES}

    # Spectral power needs about a minute of beats and EDA may be absent: readiness rests on
    # the time-domain indices, the others join the z-scores when they exist.
    REQUIRED = ("hr", "ln_rmssd")

    @property
    def baseline_ready(self) -> bool:
        return all(self.stats[k].n >= 3 for k in self.REQUIRED)

    def update(self, t: float, hr_bpm: float, rmssd_ms: float, lf_ms2: float, hf_ms2: float,
               eda_tonic_uS: float) -> tuple[float, float]:
        x = {"ln_hf": _safe_log(hf_ms2), "ln_rmssd": _safe_log(rmssd_ms),
             "ln_lf": _safe_log(lf_ms2), "hr": hr_bpm, "eda": eda_tonic_uS}
        if t < self.baseline_end:
            for k, s in self.stats.items():
                s.add(x[k])
        z = self.z = {k: self.stats[k].z(x[k]) for k in self.FEATURES}
        vagal = _nanmean([z["ln_hf"], z["ln_rmssd"]])
        sympathetic = _nanmean([z["ln_lf"], z["hr"], z["eda"]])
        return vagal, sympathetic


def _safe_log(x: float) -> float:
    return math.log(x) if math.isfinite(x) and x > 0 else float("nan")


class SCRLoad:
    """Causal load of pain-like skin-conductance responses (see the module docstring).

    Each SCR is weighed by the posterior probability that a pain transient caused it, from a
    two-part mixture of SCR amplitudes: spontaneous responses, log-normal with the running mean
    and sd of ln a of the patient's own SCRs (weighted by the probability of being spontaneous)
    at the running SCR rate, and pain-evoked responses, exponential with mean
    `pain_transient_nrs / scr_gain` at the rate `pain_transient_rate_h`."""

    MIN_SEEN = 30            # SCRs before the running statistics count only spontaneous odds
    STATS_ALPHA = 0.01       # running mean / variance of ln amplitude (~100 SCRs)
    RATE_TAU_S = 1800.0      # running SCR rate
    PRIOR_S = 300.0          # weight of the prior rate, as seconds of observation

    def __init__(self, s: EstimationSettings, t0: float):
        self.s = s
        self.t = t0
        self.t0 = t0
        self.value = 0.0
        self.n_seen = 0
        self._w_seen = 0.0
        self._mu = math.log(max(s.scr_gate_uS, 1e-3)) - s.scr_gate_z * 0.5
        self._var = 0.25
        self._count = 0.0            # exponentially weighted count of SCRs (RATE_TAU_S)
        self._count_t = t0
        self._mean_evoked = s.pain_transient_nrs / max(s.scr_gain, 1e-6)   # µS
        self._rate_evoked = s.pain_transient_rate_h / 3600.0                # per s

    def decay_to(self, t: float) -> None:
        dt = t - self.t
        if dt > 0:
            self.value *= math.exp(-dt / self.s.scr_tau_s)
            self.t = t

    def rate(self, t: float) -> float:
        """Running rate of all SCRs, per s (the prior rate until some are seen)."""
        span = self.RATE_TAU_S * (1.0 - math.exp(-max(t - self.t0, 0.0) / self.RATE_TAU_S))
        c = self._count * math.exp(-max(t - self._count_t, 0.0) / self.RATE_TAU_S)
        prior = self.s.scr_spont_rate_min / 60.0 + self._rate_evoked
        return (c + prior * self.PRIOR_S) / (span + self.PRIOR_S)

    def p_evoked(self, amplitude_uS: float, t: float | None = None) -> float:
        a = amplitude_uS
        la = math.log(a)
        var = max(self._var, 1e-4)
        d = la - self._mu
        f0 = math.exp(-0.5 * d * d / var) / (a * math.sqrt(2 * math.pi * var))
        m = self._mean_evoked
        fs = math.exp(-a / m) / m
        lam_s = self._rate_evoked
        lam_0 = max(self.rate(self.t if t is None else t) - lam_s, 0.1 * lam_s)
        num = lam_s * fs
        den = num + lam_0 * f0
        return num / den if den > 0 else 1.0

    def weight(self, amplitude_uS: float) -> float:
        return amplitude_uS * self.p_evoked(amplitude_uS)

    def add(self, t_onset: float, amplitude_uS: float) -> None:
        if not (math.isfinite(amplitude_uS) and amplitude_uS > 0 and math.isfinite(t_onset)):
            return
        t_ref = max(t_onset, self._count_t)
        self._count = self._count * math.exp(-(t_ref - self._count_t) / self.RATE_TAU_S) + 1.0
        self._count_t = t_ref
        p = self.p_evoked(amplitude_uS, t_ref)
        w = amplitude_uS * p
        # the patient's own spontaneous SCR amplitudes, each weighed by its odds of being one
        la = math.log(amplitude_uS)
        self.n_seen += 1
        q = 1.0 - p if self.n_seen > self.MIN_SEEN else 1.0
        self._w_seen += q
        a = q * max(self.STATS_ALPHA, 1.0 / max(self._w_seen, 1.0))
        d = la - self._mu
        self._mu += a * d
        self._var = (1 - a) * (self._var + a * d * d)
        # the onset may lie before the load's clock (detection comes after the rise)
        self.value += w * math.exp(-max(self.t - t_onset, 0.0) / self.s.scr_tau_s)


class PainFilter:
    """Joint Kalman filter over [level, rhythm (2), physiology slopes (4), SCR gain, dose slope,
    residual]; see the module docstring."""

    PHYSIO = ("hr", "ln_rmssd", "ln_lf", "eda")
    I_LEVEL, I_RHY, I_PHY = 0, 1, 3
    I_GAIN = 3 + len(PHYSIO)
    I_DOSE = I_GAIN + 1
    I_RES = I_DOSE + 1
    N = I_RES + 1

    def __init__(self, settings: EstimationSettings, t0: float):
        s = self.s = settings
        self.t = t0
        self.t0 = t0
        self.n_ratings = 0
        self.x = np.zeros(self.N)
        self.x[self.I_LEVEL] = s.pain_prior_mean
        self.x[self.I_GAIN] = s.scr_gain
        self.x[self.I_DOSE] = s.dose_weight_mean
        prior = {k: (0.0, s.physio_weight_sd) for k in self.PHYSIO}
        prior["ln_lf"] = (s.lf_weight_mean, s.lf_weight_sd)
        prior["ln_rmssd"] = (s.rmssd_weight_mean, s.rmssd_weight_sd)
        for i, k in enumerate(self.PHYSIO):
            self.x[self.I_PHY + i] = prior[k][0]
        self.P = np.diag([s.pain_prior_sd ** 2, s.rhythm_sd ** 2, s.rhythm_sd ** 2]
                         + [prior[k][1] ** 2 for k in self.PHYSIO]
                         + [s.scr_gain_sd ** 2, s.dose_weight_sd ** 2,
                            s.pain_stationary_sd ** 2])
        # indices that sleep shifts far more than pain does: they count only while awake
        self._sleep_shifted = [self.PHYSIO.index(k) for k in ("hr", "ln_rmssd", "eda")]
        self._i_hr, self._i_rmssd = self.PHYSIO.index("hr"), self.PHYSIO.index("ln_rmssd")
        self.awake = 1.0
        self.h = np.zeros(self.N)          # regressors at the current time
        self.h[self.I_LEVEL] = 1.0
        self.h[self.I_RES] = 1.0
        self.scr = SCRLoad(settings, t0)
        self.dose_rate = 0.0               # mean delivered current now (mA)
        self.dose = 0.0                    # ... smoothed over dose_tau_s
        self._phys = [0.0] * len(self.PHYSIO)
        self._phys_seen = False
        self._omega = 2 * math.pi / settings.rhythm_period_s if settings.rhythm_sd > 0 else 0.0
        self.mean = s.pain_prior_mean
        self.var = s.pain_prior_sd ** 2
        self._out()

    # ---- time update ---------------------------------------------------------------------
    def predict(self, t: float) -> None:
        dt = t - self.t
        if dt <= 0:
            return
        s, P, r = self.s, self.P, self.I_RES
        a = math.exp(-dt / s.pain_tau_s)
        self.x[r] *= a
        P[r, :] *= a
        P[:, r] *= a
        P[r, r] += (1 - a * a) * s.pain_stationary_sd ** 2
        P[0, 0] += s.level_drift_sd ** 2 * dt / 3600.0
        self.dose += (self.dose_rate - self.dose) * (1.0 - math.exp(-dt / s.dose_tau_s))
        self.scr.decay_to(t)
        self.t = t

    def physiology(self, t: float, z: dict[str, float]) -> None:
        """Smooth the physiological z-scores (an EMA over physio_tau_s)."""
        dt = t - self.t
        self.predict(t)
        if dt <= 0:
            return
        a = 1.0 - math.exp(-dt / self.s.physio_tau_s)
        for i, k in enumerate(self.PHYSIO):
            v = z.get(k, float("nan"))
            if math.isfinite(v):
                # a clamp keeps one wild reading (an artefact) from dominating the regression
                self._phys[i] += a * (max(-6.0, min(6.0, v)) - self._phys[i])
                self._phys_seen = True
        # sleep: a vagal rise with a heart-rate fall well beyond what pain moves
        score = 0.5 * (self._phys[self._i_rmssd] - self._phys[self._i_hr]) - self.s.sleep_gate_z
        self.awake = 1.0 / (1.0 + math.exp(max(-50.0, min(50.0, score / 0.25))))

    def _regressors(self) -> np.ndarray:
        h = self.h
        if self._omega:
            ph = self._omega * (self.t - self.t0)
            h[1] = math.cos(ph)
            h[2] = math.sin(ph)
        if self._phys_seen and self.n_ratings >= self.s.physio_min_ratings:
            h[3:3 + len(self.PHYSIO)] = self._phys
            for i in self._sleep_shifted:
                h[3 + i] *= self.awake
        h[self.I_GAIN] = self.scr.value
        h[self.I_DOSE] = self.dose
        return h

    def _out(self) -> None:
        h = self._regressors()
        self.mean = min(10.0, max(0.0, float(h @ self.x)))
        self.var = float(h @ self.P @ h) + self.s.phasic_sd ** 2

    # ---- observations --------------------------------------------------------------------
    def scr_event(self, t_onset: float, amplitude_uS: float) -> None:
        self.scr.add(t_onset, amplitude_uS)

    def stimulation(self, t: float, mean_current_mA: float) -> None:
        """The delivered current from t on (the dose so far is smoothed up to t first)."""
        self.predict(t)
        self.dose_rate = mean_current_mA

    def rating(self, t: float, value: float) -> None:
        self.predict(t)
        h = self._regressors()
        ph = self.P @ h
        noise = self.s.rating_noise_sd ** 2 + self.s.phasic_sd ** 2
        sv = float(h @ ph) + noise
        k = ph / sv
        self.x += k * (value - float(h @ self.x))
        self.P -= np.outer(k, ph)
        self.P = 0.5 * (self.P + self.P.T)
        self.n_ratings += 1
        self._out()

    def step(self, t: float, z: dict[str, float]) -> None:
        self.physiology(t, z)
        self._out()

    @property
    def sd(self) -> float:
        return math.sqrt(max(self.var, 0.0))


class StateEstimator:
    """Builds the `StateEstimate` a policy reads, from the signal processors' outputs."""

    def __init__(self, settings: EstimationSettings, t0: float):
        self.autonomic = AutonomicEstimator(settings.baseline_s, t0)
        self.pain = PainFilter(settings, t0)
        self._vagal = float("nan")
        self._sympathetic = float("nan")

    def rating(self, t: float, value: float) -> None:
        self.pain.rating(t, value)

    def scr(self, t_onset: float, amplitude_uS: float) -> None:
        """A skin-conductance response (onset time, trough-to-peak amplitude in µS)."""
        self.pain.scr_event(t_onset, amplitude_uS)

    def stimulation(self, t: float, stim: Stimulation) -> None:
        """A command that left the supervisor: the stimulation in force from t on."""
        on = stim.train_on_s / (stim.train_on_s + stim.train_off_s) \
            if stim.train_on_s + stim.train_off_s > 0 else 1.0
        self.pain.stimulation(t, stim.amplitude_mA * on if stim.enabled else 0.0)

    def update(self, t: float, hrv: dict, eda_tonic_uS: float, resp_rate_bpm: float,
               quality: float) -> StateEstimate:
        hr = hrv.get("mean_hr_bpm", float("nan"))
        rmssd = hrv.get("rmssd_ms", float("nan"))
        lf = hrv.get("lf_ms2", float("nan"))
        hf = hrv.get("hf_ms2", float("nan"))
        self._vagal, self._sympathetic = self.autonomic.update(t, hr, rmssd, lf, hf, eda_tonic_uS)
        baseline_done = t >= self.autonomic.baseline_end
        self.pain.step(t, self.autonomic.z if baseline_done else {})
        return StateEstimate(
            t=t, hr_bpm=hr, rmssd_ms=rmssd, lf_ms2=lf, hf_ms2=hf,
            vagal_index=self._vagal, sympathetic_index=self._sympathetic,
            resp_rate_bpm=resp_rate_bpm, eda_tonic_uS=eda_tonic_uS,
            pain_mean=self.pain.mean, pain_sd=self.pain.sd, quality=quality,
            baseline_ready=self.autonomic.baseline_ready and baseline_done)
