"""The values that cross the controller's stages: what a policy proposes, what leaves as a
command, and the state estimate a policy reads."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# Channel order of the `vnsloop-command` stream (the LSL contract in DESIGN.md).
COMMAND_CHANNELS = ("seq", "amplitude_mA", "frequency_Hz", "pulse_width_us",
                    "train_on_s", "train_off_s", "enabled")


@dataclass(frozen=True)
class Stimulation:
    """Stimulation settings, as a policy proposes them or the supervisor lets them out."""

    amplitude_mA: float = 0.0
    frequency_Hz: float = 20.0
    pulse_width_us: float = 250.0
    train_on_s: float = 30.0
    train_off_s: float = 300.0
    enabled: bool = False

    def as_array(self) -> np.ndarray:
        return np.array([self.amplitude_mA, self.frequency_Hz, self.pulse_width_us,
                         self.train_on_s, self.train_off_s, float(self.enabled)])

    @classmethod
    def from_array(cls, a) -> "Stimulation":
        return cls(float(a[0]), float(a[1]), float(a[2]), float(a[3]), float(a[4]), bool(a[5] > 0.5))


OFF = Stimulation()


@dataclass(frozen=True)
class Command:
    """A command as sent on `vnsloop-command`: settings that passed the supervisor, numbered."""

    seq: int
    t: float
    stim: Stimulation

    def as_sample(self) -> list[float]:
        s = self.stim
        return [float(self.seq), float(s.amplitude_mA), float(s.frequency_Hz),
                float(s.pulse_width_us), float(s.train_on_s), float(s.train_off_s),
                float(s.enabled)]


INPUT_ROLES = ("ecg", "rr", "resp", "eda", "ratings", "operator")

# Channel order of the `vnsloop-state` stream: the estimate, then for each input the time stamp
# of the last sample the loop had been fed when it made this estimate. The live loop feeds what
# has arrived, which a recording's time stamps alone cannot tell; with these watermarks a replay
# feeds exactly the same samples before each tick and makes the same decisions.
ESTIMATE_CHANNELS = ("hr_bpm", "rmssd_ms", "lf_ms2", "hf_ms2", "vagal_index",
                     "sympathetic_index", "resp_rate_bpm", "eda_tonic_uS", "pain_mean", "pain_sd",
                     "quality")
STATE_CHANNELS = ESTIMATE_CHANNELS + tuple(f"fed_t_{role}" for role in INPUT_ROLES)


@dataclass
class StateEstimate:
    """The controller's view of the patient at a control tick. NaN means not known yet."""

    t: float = float("nan")
    hr_bpm: float = float("nan")
    rmssd_ms: float = float("nan")
    lf_ms2: float = float("nan")
    hf_ms2: float = float("nan")
    vagal_index: float = float("nan")        # z-score against the patient's own baseline
    sympathetic_index: float = float("nan")  # z-score against the patient's own baseline
    resp_rate_bpm: float = float("nan")
    eda_tonic_uS: float = float("nan")
    pain_mean: float = float("nan")          # NRS 0 to 10
    pain_sd: float = float("nan")
    quality: float = 0.0                     # 0 (unusable) to 1 (clean)
    baseline_ready: bool = False
    fed_t: tuple[float, ...] = ()            # per INPUT_ROLES: last sample time fed, or NaN

    def as_sample(self) -> list[float]:
        fed = list(self.fed_t) + [float("nan")] * (len(INPUT_ROLES) - len(self.fed_t))
        return [float(self.hr_bpm), float(self.rmssd_ms), float(self.lf_ms2),
                float(self.hf_ms2), float(self.vagal_index), float(self.sympathetic_index),
                float(self.resp_rate_bpm), float(self.eda_tonic_uS), float(self.pain_mean),
                float(self.pain_sd), float(self.quality)] + fed


assert tuple(f.name for f in fields(Stimulation)) == COMMAND_CHANNELS[1:]
# the samples above spell the channels out (a getattr loop costs a microsecond per tick)
assert Command(0, 0.0, Stimulation(1.0, 2.0, 3.0, 4.0, 5.0, True)).as_sample() == \
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 1.0]
assert StateEstimate(**{c: float(i) for i, c in enumerate(ESTIMATE_CHANNELS)}).as_sample()[
    :len(ESTIMATE_CHANNELS)] == [float(i) for i in range(len(ESTIMATE_CHANNELS))]
