"""What the virtual patient's generator receives: the `vnsloop-command` sample as settings.

A copy of `controller.types.Stimulation` (same fields, same order), because `sim` imports
nothing of `controller`: it only speaks the stream contract."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stimulation:
    amplitude_mA: float = 0.0
    frequency_Hz: float = 20.0
    pulse_width_us: float = 250.0
    train_on_s: float = 30.0
    train_off_s: float = 300.0
    enabled: bool = False

    @classmethod
    def from_sample(cls, sample) -> "Stimulation":
        """From a 7-channel `vnsloop-command` sample (seq first)."""
        return cls(float(sample[1]), float(sample[2]), float(sample[3]), float(sample[4]),
                   float(sample[5]), bool(sample[6] > 0.5))

    def as_array(self) -> np.ndarray:
        return np.array([self.amplitude_mA, self.frequency_Hz, self.pulse_width_us,
                         self.train_on_s, self.train_off_s, float(self.enabled)])


OFF = Stimulation(0.0, 20.0, 250.0, 30.0, 300.0, False)
