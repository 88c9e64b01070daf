"""Policies: open loop (the clinical baseline), PID (inner loop, seconds) and safe Bayesian
optimisation (outer loop, epochs; in `controller.bayes`), all behind one interface.

A policy only proposes; the safety supervisor guards every proposal afterwards. The generator
runs the ON/OFF duty cycle itself from train_on_s/train_off_s, so policies set the train
parameters and the amplitude, never switch trains on and off per tick.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Protocol

from controller.pid import PID
from controller.types import Stimulation, StateEstimate
from signals.events import Event

NAN = float("nan")


class Policy(Protocol):
    name: str

    def reset(self, t: float) -> None: ...

    def decide(self, t: float, state: StateEstimate, current: Stimulation) -> Stimulation:
        """Every control tick; `current` is the setting the supervisor last let out."""
        ...

    def on_epoch(self, t: float, state: StateEstimate) -> list[Event]:
        """At epoch boundaries (minutes)."""
        ...

    def notify_unsafe(self, t: float, stim: Stimulation, reason: str) -> None:
        """The supervisor or a reported side effect says `stim` was unsafe."""
        ...


def settings_from(cls: type, section: Mapping[str, Any] | Any | None):
    """A settings dataclass from a config section (a TOML table, a dataclass or None).
    Unknown keys are refused, so that a typo in the config is an error, not a silent default."""
    if section is None:
        return cls()
    if isinstance(section, cls):
        return section
    items = dict(section) if isinstance(section, Mapping) else dict(vars(section))
    items.pop("kind", None)
    items = _translate(cls.__name__, items)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(items) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
    items = {k: tuple(v) if isinstance(v, list) else v for k, v in items.items()}
    return cls(**items)


def _translate(name: str, items: dict[str, Any]) -> dict[str, Any]:
    """The names `controller.config` uses for policy sections, mapped to the settings here."""
    aliases = {"output_max_mA": "amp_max_mA", "output_min_mA": "amp_min_mA",
               "seed": "rng_seed", "hr_drop_max_bpm": "hr_max_drop_bpm"}
    if "setpoint" in items:                 # config: target is the kind, setpoint the value
        aliases.update(target="target_kind", setpoint="target")
    if name == "PIDSettings" or name == "BayesSettings":
        items = {aliases.get(k, k): v for k, v in items.items()}
    if name == "BayesSettings":
        items.pop("epoch_s", None)          # the runtime keeps the epoch clock
        lo, hi = items.pop("frequency_min_Hz", None), items.pop("frequency_max_Hz", None)
        if lo is not None or hi is not None:
            items["freq_range"] = (1.0 if lo is None else lo, 30.0 if hi is None else hi)
        amax = items.pop("amplitude_max_mA", None)
        if amax is not None:
            items["amp_range"] = (items.get("amp_range", (0.1, 3.5))[0], amax)
        if items.pop("optimise_pulse_width", False):
            items["pulse_widths"] = (130.0, 250.0, 500.0, 1000.0)
    return items


# ---- shared measurement helpers ------------------------------------------------------------

class TrainClock:
    """Where the generator is in its ON/OFF cycle. The generator runs the cycle itself and
    starts with a train when enabled, so the phase is counted from the tick at which the
    command we see (`current`) became enabled."""

    def __init__(self) -> None:
        self._t_on: float | None = None

    def reset(self) -> None:
        self._t_on = None

    def phase(self, t: float, current: Stimulation) -> float:
        """Seconds since the current ON/OFF cycle began; NaN when stimulation is off."""
        if not current.enabled:
            self._t_on = None
            return NAN
        if self._t_on is None or t < self._t_on:
            self._t_on = t
        period = current.train_on_s + current.train_off_s
        elapsed = t - self._t_on
        return elapsed % period if current.train_off_s > 0 else elapsed


class HRChange:
    """Heart rate during trains relative to the level just before them.

    The reference is an exponential average of heart rate outside trains (before any
    stimulation, this is the pre-stimulation baseline), skipping the recovery right after a
    train; the first `settle_s` of each train are skipped too, while the response builds up."""

    def __init__(self, settle_s: float = 5.0, ref_tau_s: float = 30.0):
        self.settle_s = settle_s
        self.ref_tau_s = ref_tau_s
        self.reset()

    def reset(self) -> None:
        self.ref = NAN
        self._t_ref: float | None = None

    def update(self, t: float, hr_bpm: float, phase: float, train_on_s: float) -> float:
        """The change in bpm at a settled in-train tick, NaN otherwise."""
        if not math.isfinite(hr_bpm):
            return NAN
        if math.isfinite(phase) and phase < train_on_s:
            return hr_bpm - self.ref if phase >= self.settle_s else NAN
        if math.isfinite(phase) and phase < train_on_s + self.settle_s:
            return NAN
        if self._t_ref is None or not math.isfinite(self.ref):
            self.ref = hr_bpm
        else:
            a = 1.0 - math.exp(-max(t - self._t_ref, 0.0) / self.ref_tau_s)
            self.ref += a * (hr_bpm - self.ref)
        self._t_ref = t
        return NAN


# ---- open loop -----------------------------------------------------------------------------

@dataclass
class OpenLoopSettings:
    amplitude_mA: float = 1.5
    frequency_Hz: float = 20.0
    pulse_width_us: float = 250.0
    train_on_s: float = 30.0
    train_off_s: float = 300.0
    # Keep the baseline period free of stimulation, as for the closed-loop policies, so that
    # every policy is compared against the same unstimulated reference.
    wait_for_baseline: bool = True


class OpenLoopPolicy:
    """The clinical duty cycle (LivaNova labelling), the baseline every result is compared to."""

    name = "open"

    def __init__(self, settings: OpenLoopSettings | None = None):
        self.settings = settings or OpenLoopSettings()
        s = self.settings
        self.stim = Stimulation(s.amplitude_mA, s.frequency_Hz, s.pulse_width_us,
                                s.train_on_s, s.train_off_s, True)
        self._started = False

    def reset(self, t: float) -> None:
        self._started = False

    def decide(self, t: float, state: StateEstimate, current: Stimulation) -> Stimulation:
        self._started = self._started or state.baseline_ready or not self.settings.wait_for_baseline
        return self.stim if self._started else Stimulation(enabled=False)

    def on_epoch(self, t: float, state: StateEstimate) -> list[Event]:
        return []

    def notify_unsafe(self, t: float, stim: Stimulation, reason: str) -> None:
        """Open loop does not adapt; the step-down comes through `set_amplitude_limit`."""

    def set_amplitude_limit(self, amp_max_mA: float) -> None:
        """As a clinician would after a side effect: stay at the envelope's current cap."""
        s = self.settings
        amp = min(s.amplitude_mA, max(float(amp_max_mA), 0.0))
        if amp != self.stim.amplitude_mA:
            self.stim = replace(self.stim, amplitude_mA=amp)


# ---- PID -----------------------------------------------------------------------------------

TARGET_KINDS = ("hr_change_bpm", "vagal_index")
# Gains as magnitudes, signed by the plant: amplitude lowers heart rate above the fulcrum and
# raises the vagal index. Units: mA per bpm (or per z), per bpm*s, per bpm/s.
_DEFAULT_GAINS = {"hr_change_bpm": (0.05, 0.01, 0.0), "vagal_index": (0.2, 0.01, 0.0)}
_PLANT_SIGN = {"hr_change_bpm": -1.0, "vagal_index": 1.0}


@dataclass
class PIDSettings:
    target_kind: str = "hr_change_bpm"
    target: float = -2.0                 # bpm during trains (just under the fulcrum), or z
    kp: float | None = None              # None: the default for target_kind
    ki: float | None = None
    kd: float | None = None
    amp_max_mA: float = 3.5              # the envelope's cap; the runtime may lower it
    amp_min_mA: float = 0.0
    start_mA: float = 0.25               # where amplitude starts once the baseline is ready
    frequency_Hz: float = 20.0
    pulse_width_us: float = 250.0
    train_on_s: float = 30.0
    train_off_s: float = 300.0
    gate_vagal_to_trains: bool = False   # heart-rate change is always measured in trains
    settle_s: float = 5.0
    ref_tau_s: float = 30.0
    unsafe_backoff_mA: float = 0.25      # cap below an amplitude reported unsafe

    def __post_init__(self) -> None:
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(f"target_kind must be one of {TARGET_KINDS}, got {self.target_kind!r}")


class PIDPolicy:
    """Adjusts amplitude to hold a physiological target; frequency, pulse width and duty cycle
    stay as configured. With heart-rate change as the target the loop only runs during the
    settled part of trains (the only time stimulation acts on the heart) and holds the
    amplitude in between, switching back to automatic bumplessly at each train."""

    name = "pid"

    def __init__(self, settings: PIDSettings | None = None):
        self.settings = s = settings or PIDSettings()
        sign = _PLANT_SIGN[s.target_kind]
        dkp, dki, dkd = _DEFAULT_GAINS[s.target_kind]
        kp = dkp if s.kp is None else s.kp
        ki = dki if s.ki is None else s.ki
        kd = dkd if s.kd is None else s.kd
        self.pid = PID(sign * kp, sign * ki, sign * kd, setpoint=s.target)
        self.clock = TrainClock()
        self.hr = HRChange(s.settle_s, s.ref_tau_s)
        self.reset(0.0)

    def reset(self, t: float) -> None:
        self.cap = self.settings.amp_max_mA
        self.pid.output_limits = (self.settings.amp_min_mA, self.cap)
        self.pid.reset(self.settings.start_mA)
        self.pid.set_auto_mode(False)
        self.amplitude = self.pid.output
        self.started = False
        self.measurement = NAN
        self.clock.reset()
        self.hr.reset()

    def set_target(self, value: float) -> None:
        """The setpoint, e.g. from the Bayesian outer loop (cascade)."""
        self.pid.setpoint = float(value)

    def set_amplitude_limit(self, amp_max_mA: float) -> None:
        """The envelope's current amplitude cap (anti-windup works against it)."""
        self.cap = min(float(amp_max_mA), self.settings.amp_max_mA)
        self.cap = max(self.cap, 0.0)
        self.pid.output_limits = (min(self.settings.amp_min_mA, self.cap), self.cap)
        self.amplitude = min(self.amplitude, self.cap)

    def _stim(self, amplitude: float, enabled: bool) -> Stimulation:
        s = self.settings
        return Stimulation(amplitude, s.frequency_Hz, s.pulse_width_us, s.train_on_s,
                           s.train_off_s, enabled)

    def _measure(self, t: float, state: StateEstimate, current: Stimulation) -> float:
        phase = self.clock.phase(t, current)
        if self.settings.target_kind == "hr_change_bpm":
            return self.hr.update(t, state.hr_bpm, phase, current.train_on_s)
        in_train = math.isfinite(phase) and self.settings.settle_s <= phase < current.train_on_s
        return state.vagal_index if in_train or not self.settings.gate_vagal_to_trains else NAN

    def decide(self, t: float, state: StateEstimate, current: Stimulation) -> Stimulation:
        self.measurement = self._measure(t, state, current)
        if not self.started:
            if not state.baseline_ready:
                return self._stim(0.0, False)
            self.started = True
        if math.isfinite(self.measurement) and current.enabled:
            if not self.pid.auto_mode:
                self.pid.set_auto_mode(True, self.amplitude)
            self.amplitude = self.pid(self.measurement, t)
        else:
            # Between trains, or while the supervisor holds stimulation off: hold, and resume
            # bumplessly (no integration over the gap).
            self.pid.set_auto_mode(False)
        return self._stim(self.amplitude, True)

    def on_epoch(self, t: float, state: StateEstimate) -> list[Event]:
        return []

    def notify_unsafe(self, t: float, stim: Stimulation, reason: str) -> None:
        """Never go back up to where it was unsafe: the cap drops below that amplitude."""
        self.set_amplitude_limit(max(stim.amplitude_mA - self.settings.unsafe_backoff_mA, 0.0))


# ---- factory -------------------------------------------------------------------------------

POLICY_KINDS = ("open", "pid", "bayes")


def make_policy(kind: str | Mapping[str, Any] | Any, config_section: Mapping[str, Any] | Any | None = None) -> Policy:
    """A policy by kind ("open" | "pid" | "bayes") and its config section (a TOML table, a
    settings dataclass or None for defaults). A section with a `kind` key may be passed alone."""
    if not isinstance(kind, str):
        config_section = kind
        kind = (config_section.get("kind") if isinstance(config_section, Mapping)
                else getattr(config_section, "kind", None))
    if kind == "open":
        return OpenLoopPolicy(settings_from(OpenLoopSettings, config_section))
    if kind == "pid":
        return PIDPolicy(settings_from(PIDSettings, config_section))
    if kind == "bayes":
        from controller.bayes import BayesSettings, SafeBayesPolicy
        return SafeBayesPolicy(settings_from(BayesSettings, config_section))
    raise ValueError(f"unknown policy kind {kind!r}; expected one of {POLICY_KINDS}")
