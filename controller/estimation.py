"""Estimation: the autonomic state against the patient's own baseline, and a Bayesian filter
over latent pain that fuses physiological indices with sparse self-reports.

Pain model (a scalar Kalman filter): latent pain follows an Ornstein-Uhlenbeck process around a
slowly learned personal mean. Self-reports are direct, noisy observations (NRS rounding and
report noise). Physiology enters as a second observation: a linear map from the autonomic
indices to pain, calibrated online by recursive least squares against the self-reports, whose
residual variance becomes that observation's noise. It is applied at a slow cadence because
consecutive physiological readings are strongly correlated; feeding them every tick as if
independent would make the filter over-confident.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from controller.types import StateEstimate


@dataclass
class EstimationSettings:
    baseline_s: float = 300.0             # the patient's own reference period
    pain_prior_mean: float = 5.0
    pain_prior_sd: float = 2.5
    pain_tau_s: float = 4 * 3600.0        # how fast latent pain forgets (OU time constant)
    pain_stationary_sd: float = 2.0       # OU spread: sets the process noise
    rating_noise_sd: float = 0.7          # rounding to integers plus report noise
    physio_every_s: float = 300.0         # cadence of the physiological observation
    physio_min_ratings: int = 4           # calibration needs a few reports first
    mean_learning_rate: float = 0.2       # how fast the personal mean follows the reports


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
        z = {k: self.stats[k].z(x[k]) for k in self.FEATURES}
        vagal = _nanmean([z["ln_hf"], z["ln_rmssd"]])
        sympathetic = _nanmean([z["ln_lf"], z["hr"], z["eda"]])
        return vagal, sympathetic


def _safe_log(x: float) -> float:
    return math.log(x) if math.isfinite(x) and x > 0 else float("nan")


class PainFilter:
    """Scalar Kalman filter over latent pain (NRS 0 to 10); see the module docstring."""

    def __init__(self, settings: EstimationSettings, t0: float):
        self.s = settings
        self.t = t0
        self.mean = settings.pain_prior_mean
        self.var = settings.pain_prior_sd ** 2
        self.personal_mean = settings.pain_prior_mean
        self.n_ratings = 0
        # RLS over [1, vagal, sympathetic] -> rating, with a weak prior on the slopes.
        self._P = np.diag([100.0, 1.0, 1.0])
        self._w = np.array([settings.pain_prior_mean, 0.0, 0.0])
        self._resid_var = 4.0
        self._next_physio = t0

    def predict(self, t: float) -> None:
        dt = t - self.t
        if dt <= 0:
            return
        a = math.exp(-dt / self.s.pain_tau_s)
        self.mean = a * self.mean + (1 - a) * self.personal_mean
        self.var = a * a * self.var + (1 - a * a) * self.s.pain_stationary_sd ** 2
        self.t = t

    def _correct(self, y: float, noise_var: float) -> None:
        k = self.var / (self.var + noise_var)
        self.mean = min(10.0, max(0.0, self.mean + k * (y - self.mean)))
        self.var = (1 - k) * self.var

    def rating(self, t: float, value: float, vagal: float, sympathetic: float) -> None:
        self.predict(t)
        self._correct(value, self.s.rating_noise_sd ** 2)
        self.n_ratings += 1
        lr = max(self.s.mean_learning_rate, 1.0 / self.n_ratings)
        self.personal_mean += lr * (value - self.personal_mean)
        if math.isfinite(vagal) and math.isfinite(sympathetic):
            self._calibrate(np.array([1.0, vagal, sympathetic]), value)

    def _calibrate(self, x: np.ndarray, y: float) -> None:
        resid = y - float(x @ self._w)
        px = self._P @ x
        gain = px / (1.0 + float(x @ px))
        self._w = self._w + gain * resid
        self._P = self._P - np.outer(gain, px)
        self._resid_var = 0.9 * self._resid_var + 0.1 * resid * resid

    def physiology(self, t: float, vagal: float, sympathetic: float) -> None:
        self.predict(t)
        if (t < self._next_physio or self.n_ratings < self.s.physio_min_ratings
                or not (math.isfinite(vagal) and math.isfinite(sympathetic))):
            return
        self._next_physio = t + self.s.physio_every_s
        y = float(np.array([1.0, vagal, sympathetic]) @ self._w)
        # The map's own uncertainty adds to its residual noise.
        noise = self._resid_var + self.s.rating_noise_sd ** 2
        self._correct(min(10.0, max(0.0, y)), noise)

    @property
    def sd(self) -> float:
        return math.sqrt(self.var)


class StateEstimator:
    """Builds the `StateEstimate` a policy reads, from the signal processors' outputs."""

    def __init__(self, settings: EstimationSettings, t0: float):
        self.autonomic = AutonomicEstimator(settings.baseline_s, t0)
        self.pain = PainFilter(settings, t0)
        self._vagal = float("nan")
        self._sympathetic = float("nan")

    def rating(self, t: float, value: float) -> None:
        self.pain.rating(t, value, self._vagal, self._sympathetic)

    def update(self, t: float, hrv: dict, eda_tonic_uS: float, resp_rate_bpm: float,
               quality: float) -> StateEstimate:
        hr = hrv.get("mean_hr_bpm", float("nan"))
        rmssd = hrv.get("rmssd_ms", float("nan"))
        lf = hrv.get("lf_ms2", float("nan"))
        hf = hrv.get("hf_ms2", float("nan"))
        self._vagal, self._sympathetic = self.autonomic.update(t, hr, rmssd, lf, hf, eda_tonic_uS)
        self.pain.physiology(t, self._vagal, self._sympathetic)
        return StateEstimate(
            t=t, hr_bpm=hr, rmssd_ms=rmssd, lf_ms2=lf, hf_ms2=hf,
            vagal_index=self._vagal, sympathetic_index=self._sympathetic,
            resp_rate_bpm=resp_rate_bpm, eda_tonic_uS=eda_tonic_uS,
            pain_mean=self.pain.mean, pain_sd=self.pain.sd, quality=quality,
            baseline_ready=self.autonomic.baseline_ready and t >= self.autonomic.baseline_end)
