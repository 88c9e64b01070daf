"""TOML configuration: defaults, validation with errors that name the key and its range.

Absolute safety caps live in `controller.safety` (module constants) and are read from there;
the `[safety]` section is `SafetyLimits` itself.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.safety import (ABS_AMPLITUDE_MAX_MA, ABS_FREQUENCY_MAX_HZ,
                               ABS_FREQUENCY_MIN_HZ, ABS_PULSE_WIDTH_MAX_US,
                               ABS_PULSE_WIDTH_MIN_US, ABS_TRAIN_ON_MAX_S,
                               DEFAULT_ELECTRODE_AREA_CM2, ConfigError, SafetyLimits,
                               check_fields, range_error, spec)

__all__ = ["Config", "ConfigError", "load_config", "default_config", "save_config"]

_AMAX = max(ABS_AMPLITUDE_MAX_MA.values())
STREAM_ROLES = {"ecg": "ECG", "rr": "RR", "resp": "Resp", "eda": "EDA", "ratings": "Markers",
                "operator": "Markers"}


@dataclass(frozen=True)
class StreamConfig:
    """An LSL input; empty strings mean "any"."""

    name: str = ""
    type: str = ""
    source_id: str = spec("", note="pins one device; LSL has no authentication")
    channel: int = spec(0, 0, 1023, "", "channel index")


@dataclass(frozen=True)
class LoopConfig:
    tick_hz: float = spec(4.0, 1.0, 10.0, "Hz", "control tick rate")
    heartbeat_s: float = spec(0.5, 0.05, 1.0, "s",
                              "the generator falls back to off after 2 s of silence")
    stale_after_s: float = spec(2.0, 0.1, 10.0, "s", "an input this silent is reported lost")


@dataclass(frozen=True)
class OpenPolicyConfig:
    amplitude_mA: float = spec(1.5, 0.0, _AMAX, "mA")
    frequency_Hz: float = spec(20.0, ABS_FREQUENCY_MIN_HZ, ABS_FREQUENCY_MAX_HZ, "Hz")
    pulse_width_us: float = spec(250.0, ABS_PULSE_WIDTH_MIN_US, ABS_PULSE_WIDTH_MAX_US, "us")
    train_on_s: float = spec(30.0, 0.5, ABS_TRAIN_ON_MAX_S, "s")
    train_off_s: float = spec(300.0, 0.5, 86400.0, "s")
    # false: stimulate from the first tick (benches); true keeps the baseline unstimulated
    wait_for_baseline: bool = True


@dataclass(frozen=True)
class PidPolicyConfig:
    kp: float = spec(0.05, -10.0, 10.0, "mA per unit of error")
    ki: float = spec(0.005, -10.0, 10.0, "mA per unit of error-second")
    kd: float = spec(0.0, -10.0, 10.0, "mA per unit of error per second")
    target: str = spec("hr_change_bpm", choices=("hr_change_bpm", "vagal_index"))
    setpoint: float = spec(-2.0, -10.0, 10.0, "", "bpm for hr_change_bpm, z for vagal_index")
    output_min_mA: float = spec(0.0, 0.0, _AMAX, "mA")
    output_max_mA: float = spec(2.0, 0.0, _AMAX, "mA")
    frequency_Hz: float = spec(20.0, ABS_FREQUENCY_MIN_HZ, ABS_FREQUENCY_MAX_HZ, "Hz")
    pulse_width_us: float = spec(250.0, ABS_PULSE_WIDTH_MIN_US, ABS_PULSE_WIDTH_MAX_US, "us")
    train_on_s: float = spec(30.0, 0.5, ABS_TRAIN_ON_MAX_S, "s")
    train_off_s: float = spec(300.0, 0.5, 86400.0, "s")
    # no sample time: the PID takes dt from the data clock


@dataclass(frozen=True)
class BayesPolicyConfig:
    epoch_s: float = spec(600.0, 10.0, 86400.0, "s", "time per tried setting")
    acquisition: str = spec("safeopt", choices=("safeopt", "ucb", "thompson"))
    beta: float = spec(2.0, 0.0, 10.0, "", "confidence-bound width")
    seed: int = spec(0, 0, 2**32 - 1, "")
    frequency_min_Hz: float = spec(5.0, ABS_FREQUENCY_MIN_HZ, ABS_FREQUENCY_MAX_HZ, "Hz")
    frequency_max_Hz: float = spec(30.0, ABS_FREQUENCY_MIN_HZ, ABS_FREQUENCY_MAX_HZ, "Hz")
    amplitude_max_mA: float = spec(2.5, 0.0, _AMAX, "mA")
    seed_frequency_Hz: float = spec(20.0, ABS_FREQUENCY_MIN_HZ, ABS_FREQUENCY_MAX_HZ, "Hz",
                                    "known-safe starting point")
    seed_amplitude_mA: float = spec(0.5, 0.0, _AMAX, "mA", "known-safe starting point")
    pulse_width_us: float = spec(250.0, ABS_PULSE_WIDTH_MIN_US, ABS_PULSE_WIDTH_MAX_US, "us")
    optimise_pulse_width: bool = False
    climb: bool = True                      # amplitude up an epoch at a time before the trials
    hr_drop_max_bpm: float = spec(5.0, 0.0, 30.0, "bpm", "safety constraint for the GP")
    trial_s: float = spec(7200.0, 0.0, 7 * 86400.0, "s",
                          "time a setting is held and scored (ends at an epoch boundary)")
    washout_s: float = spec(2700.0, 0.0, 86400.0, "s", "start of a trial not scored (carry-over)")
    reference_s: float = spec(7200.0, 0.0, 86400.0, "s",
                              "stimulation off at the start: the unstimulated pain reference")
    non_responder_threshold: float = spec(0.2, 0.0, 10.0, "NRS",
                                          "relief below the reference that counts as none")


@dataclass(frozen=True)
class PolicyConfig:
    kind: str = spec("open", choices=("open", "pid", "bayes"))
    open: OpenPolicyConfig = field(default_factory=OpenPolicyConfig)
    pid: PidPolicyConfig = field(default_factory=PidPolicyConfig)
    bayes: BayesPolicyConfig = field(default_factory=BayesPolicyConfig)


@dataclass(frozen=True)
class GatingConfig:
    enabled: bool = False
    burst_s: float = spec(1.0, 0.1, 5.0, "s", "stimulation burst from each exhalation onset")


@dataclass(frozen=True)
class EstimationConfig:
    """Fields of `controller.estimation.EstimationSettings` (see its module docstring)."""

    baseline_s: float = spec(300.0, 30.0, 7200.0, "s", "the patient's own reference period")
    pain_prior_mean: float = spec(5.0, 0.0, 10.0, "NRS", "prior on the personal pain level")
    pain_prior_sd: float = spec(2.5, 0.1, 10.0, "NRS")
    rating_noise_sd: float = spec(0.7, 0.05, 5.0, "NRS", "rounding plus report noise")
    level_drift_sd: float = spec(0.15, 0.0, 5.0, "NRS/sqrt(h)", "random walk of the level")
    pain_tau_s: float = spec(1800.0, 60.0, 30 * 86400.0, "s", "residual slow pain: OU tau")
    pain_stationary_sd: float = spec(0.3, 0.01, 10.0, "NRS", "residual slow pain: OU sd")
    phasic_sd: float = spec(0.2, 0.0, 5.0, "NRS", "transient pain no SCR reveals")
    rhythm_period_s: float = spec(86400.0, 3600.0, 7 * 86400.0, "s", "daily rhythm period")
    rhythm_sd: float = spec(0.5, 0.0, 5.0, "NRS", "prior sd of each harmonic (0: off)")
    physio_tau_s: float = spec(300.0, 1.0, 86400.0, "s", "smoothing of the physiological z")
    physio_weight_sd: float = spec(0.1, 0.0, 5.0, "NRS/z", "prior sd of physiological slopes")
    lf_weight_mean: float = spec(3.0, -20.0, 20.0, "NRS/z", "prior mean of the ln LF slope")
    lf_weight_sd: float = spec(1.0, 0.0, 20.0, "NRS/z", "prior sd of the ln LF power slope")
    rmssd_weight_mean: float = spec(-0.5, -20.0, 20.0, "NRS/z", "prior mean, ln RMSSD slope")
    rmssd_weight_sd: float = spec(0.3, 0.0, 20.0, "NRS/z", "prior sd of the ln RMSSD slope")
    sleep_gate_z: float = spec(2.0, 0.5, 10.0, "z", "sleep: (z ln RMSSD - z HR)/2 above this")
    physio_min_ratings: int = spec(4, 1, 1000, "", "physiology joins after this many reports")
    scr_tau_s: float = spec(90.0, 5.0, 3600.0, "s", "decay of the pain an SCR signals")
    scr_gain: float = spec(4.0, 0.0, 50.0, "NRS/uS", "prior gain of pain-evoked SCRs")
    scr_gain_sd: float = spec(1.0, 0.0, 50.0, "NRS/uS", "prior sd of that gain")
    scr_gate_uS: float = spec(0.4, 0.01, 10.0, "uS", "spontaneous SCR prior, with scr_gate_z")
    scr_gate_z: float = spec(2.0, 0.0, 6.0, "", "spontaneous SCR prior median: uS*exp(-z/2)")
    scr_spont_rate_min: float = spec(1.5, 0.05, 30.0, "1/min", "prior rate of spontaneous SCRs")
    pain_transient_rate_h: float = spec(4.0, 0.1, 120.0, "1/h", "prior rate of pain transients")
    pain_transient_nrs: float = spec(1.5, 0.1, 10.0, "NRS", "mean size of a pain transient")
    dose_tau_s: float = spec(1200.0, 60.0, 86400.0, "s", "smoothing of the delivered current")
    dose_weight_mean: float = spec(-8.0, -50.0, 50.0, "NRS/mA", "prior mean of the dose slope")
    dose_weight_sd: float = spec(4.0, 0.0, 50.0, "NRS/mA", "prior sd of the dose slope")


@dataclass(frozen=True)
class RecordConfig:
    path: str = spec("", note="XDF file; empty: do not record")
    include_inputs: bool = True


@dataclass(frozen=True)
class Config:
    streams: dict[str, StreamConfig] = field(default_factory=dict)
    loop: LoopConfig = field(default_factory=LoopConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    gating: GatingConfig = field(default_factory=GatingConfig)
    safety: SafetyLimits = field(default_factory=SafetyLimits)
    estimation: EstimationConfig = field(default_factory=EstimationConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    # ---- what the runtime reads ----
    @property
    def tick_hz(self) -> float:
        return self.loop.tick_hz

    @property
    def epoch_s(self) -> float:
        return self.policy.bayes.epoch_s

    def estimation_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self.estimation)

    def stream_specs(self) -> dict[str, dict[str, Any]]:
        """role -> StreamSpec keyword arguments, for the configured roles only."""
        return {role: {"name": s.name or None, "type": s.type or None,
                       "source_id": s.source_id or None, "channel": s.channel}
                for role, s in self.streams.items()}

    # ---- construction ----
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        if not isinstance(d, dict):
            raise ConfigError(f"configuration must be a table, got {type(d).__name__}")
        _refuse_unknown(d, cls, "")
        streams_d = d.get("streams", {})
        if not isinstance(streams_d, dict):
            raise ConfigError("streams must be a table of [streams.<role>] tables")
        streams = {}
        for role, sd in streams_d.items():
            if role not in STREAM_ROLES:
                raise ConfigError(f"unknown key streams.{role}; allowed roles: "
                                  f"{', '.join(STREAM_ROLES)}")
            if not isinstance(sd, dict):
                raise ConfigError(f"streams.{role} must be a table")
            s = _build(StreamConfig, sd, f"streams.{role}.")
            streams[role] = s if s.type or s.name or s.source_id else \
                dataclasses.replace(s, type=STREAM_ROLES[role])
        safety_d = d.get("safety", {})
        if isinstance(safety_d, dict) and "electrode" in safety_d \
                and "electrode_area_cm2" not in safety_d \
                and safety_d["electrode"] in DEFAULT_ELECTRODE_AREA_CM2:
            safety_d = {**safety_d,
                        "electrode_area_cm2": DEFAULT_ELECTRODE_AREA_CM2[safety_d["electrode"]]}
        cfg = cls(streams=streams,
                  loop=_build(LoopConfig, d.get("loop", {}), "loop."),
                  policy=_build(PolicyConfig, d.get("policy", {}), "policy."),
                  gating=_build(GatingConfig, d.get("gating", {}), "gating."),
                  safety=_build(SafetyLimits, safety_d, "safety."),
                  estimation=_build(EstimationConfig, d.get("estimation", {}), "estimation."),
                  record=_build(RecordConfig, d.get("record", {}), "record."))
        cfg._cross_check()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines: list[str] = []
        _toml_table(self.to_dict(), [], lines)
        return "\n".join(lines) + "\n"

    def _cross_check(self) -> None:
        s = self.safety
        s.validate("safety.")
        if self.gating.burst_s > s.train_on_max_s:
            raise range_error("gating.burst_s", self.gating.burst_s, 0.1, s.train_on_max_s, "s",
                              "at most safety.train_on_max_s")
        pairs = [("ratings", "operator")] if {"ratings", "operator"} <= self.streams.keys() else []
        for r1, r2 in pairs:
            if self.streams[r1] == self.streams[r2]:
                raise ConfigError(f"streams.{r1} and streams.{r2} name the same stream; give "
                                  "each a distinct name or source_id")
        p = self.policy
        _in_envelope(s, "policy.open.", p.open.amplitude_mA, p.open.frequency_Hz,
                     p.open.pulse_width_us)
        _in_envelope(s, "policy.pid.", p.pid.output_max_mA, p.pid.frequency_Hz,
                     p.pid.pulse_width_us, amp_key="output_max_mA")
        _in_envelope(s, "policy.bayes.", p.bayes.amplitude_max_mA, p.bayes.seed_frequency_Hz,
                     p.bayes.pulse_width_us, amp_key="amplitude_max_mA",
                     freq_key="seed_frequency_Hz")
        for sec, c in (("policy.open.", p.open), ("policy.pid.", p.pid)):
            if c.train_on_s > s.train_on_max_s:
                raise range_error(f"{sec}train_on_s", c.train_on_s, 0.5, s.train_on_max_s, "s",
                                  "safety.train_on_max_s")
            off_min = c.train_on_s * (1 - s.duty_max) / s.duty_max
            if c.train_off_s < off_min:
                raise range_error(f"{sec}train_off_s", c.train_off_s, off_min, 86400.0, "s",
                                  f"OFF at least ON x {(1 - s.duty_max) / s.duty_max:g} "
                                  f"for duty <= {s.duty_max:g}")
        if p.pid.output_min_mA > p.pid.output_max_mA:
            raise ConfigError(f"policy.pid.output_min_mA = {p.pid.output_min_mA:g} is above "
                              f"policy.pid.output_max_mA = {p.pid.output_max_mA:g}")
        b = p.bayes
        if b.frequency_min_Hz > b.frequency_max_Hz:
            raise ConfigError(f"policy.bayes.frequency_min_Hz = {b.frequency_min_Hz:g} is above "
                              f"policy.bayes.frequency_max_Hz = {b.frequency_max_Hz:g}")
        if not b.frequency_min_Hz <= b.seed_frequency_Hz <= b.frequency_max_Hz:
            raise range_error("policy.bayes.seed_frequency_Hz", b.seed_frequency_Hz,
                              b.frequency_min_Hz, b.frequency_max_Hz, "Hz",
                              "inside the search range")
        if b.seed_amplitude_mA > b.amplitude_max_mA:
            raise range_error("policy.bayes.seed_amplitude_mA", b.seed_amplitude_mA, 0.0,
                              b.amplitude_max_mA, "mA", "policy.bayes.amplitude_max_mA")
        if p.pid.target == "vagal_index" and abs(p.pid.setpoint) > 5.0:
            raise range_error("policy.pid.setpoint", p.pid.setpoint, -5.0, 5.0, "",
                              "z-score for target vagal_index")


def _in_envelope(s: SafetyLimits, sec: str, amp: float, freq: float, pw: float, *,
                 amp_key: str = "amplitude_mA", freq_key: str = "frequency_Hz") -> None:
    """A policy setting the supervisor would refuse is a configuration error, not a surprise."""
    if amp > s.amplitude_max_mA:
        raise range_error(f"{sec}{amp_key}", amp, 0.0, s.amplitude_max_mA, "mA",
                          "safety.amplitude_max_mA")
    if not s.frequency_min_Hz <= freq <= s.frequency_max_Hz:
        raise range_error(f"{sec}{freq_key}", freq, s.frequency_min_Hz, s.frequency_max_Hz, "Hz",
                          "safety frequency range")
    if not s.pulse_width_min_us <= pw <= s.pulse_width_max_us:
        raise range_error(f"{sec}pulse_width_us", pw, s.pulse_width_min_us,
                          s.pulse_width_max_us, "us", "safety pulse width range")


def _refuse_unknown(d: dict, cls, prefix: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in names:
            where = f"[{prefix[:-1]}]" if prefix else "the top level"
            raise ConfigError(f"unknown key {prefix}{key}; allowed keys in {where}: "
                              f"{', '.join(names)}")


def _build(cls, d: Any, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix[:-1]} must be a table, got {type(d).__name__}")
    _refuse_unknown(d, cls, prefix)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not
                                    dataclasses.MISSING else None):
            v = _build(f.default_factory, v, f"{prefix}{f.name}.")
        elif isinstance(f.default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        kw[f.name] = v
    obj = cls(**kw)
    check_fields(obj, prefix)
    return obj


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


def _toml_table(d: dict, path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
    if path and (scalars or not d):
        lines.append(f"\n[{'.'.join(path)}]")
    for k, v in scalars.items():
        lines.append(f"{k} = {_toml_value(v)}")
    for k, v in d.items():
        if isinstance(v, dict):
            _toml_table(v, [*path, k], lines)


def default_config() -> Config:
    return Config()


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            d = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    try:
        return Config.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(config.to_toml())
