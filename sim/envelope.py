"""The hard stimulation envelope, checked independently of the controller's supervisor: the
virtual patient counts every command that breaks it (a test oracle, not a safety layer)."""
from __future__ import annotations

import math

from sim.command import Stimulation


def check_command(stim: Stimulation) -> list[str]:
    """Names of the violated rules; empty when the command is inside the envelope."""
    values = (stim.amplitude_mA, stim.frequency_Hz, stim.pulse_width_us,
              stim.train_on_s, stim.train_off_s)
    if not all(math.isfinite(v) for v in values):
        return ["finite"]
    bad = []
    if not 0.0 <= stim.amplitude_mA <= 3.5:
        bad.append("amplitude 0-3.5 mA")
    if stim.enabled:
        if not 1.0 <= stim.frequency_Hz <= 30.0:
            bad.append("frequency 1-30 Hz")
        if not 130.0 <= stim.pulse_width_us <= 1000.0:
            bad.append("pulse width 130-1000 us")
        if stim.train_on_s > 60.0:
            bad.append("train on <= 60 s")
        if stim.train_off_s < stim.train_on_s:
            bad.append("train off >= train on")
    return bad
