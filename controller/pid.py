"""A small PID controller in the manner of simple-pid: no I/O, no clock of its own.

The caller passes the data-clock time stamp of each measurement, so the same controller runs
on a rig, in lockstep with the simulator and on replayed files. Conventions:
- error = setpoint - measurement; a plant whose output falls as the input rises (heart rate
  against amplitude above the neural fulcrum) takes negative gains;
- proportional on error, derivative on measurement (a setpoint step gives no derivative kick);
- anti-windup: the integral and the output are clamped to `output_limits`, which may change at
  every tick (the runtime sets them from the safety envelope);
- a NaN measurement holds the last output without touching the state, and sets `held`.
"""
from __future__ import annotations

import math


def _clamp(x: float, lo: float | None, hi: float | None) -> float:
    if hi is not None and x > hi:
        return hi
    if lo is not None and x < lo:
        return lo
    return x


class PID:
    def __init__(self, kp: float, ki: float = 0.0, kd: float = 0.0, setpoint: float = 0.0,
                 output_limits: tuple[float | None, float | None] = (None, None),
                 auto_mode: bool = True, starting_output: float = 0.0):
        self.kp, self.ki, self.kd = float(kp), float(ki), float(kd)
        self.setpoint = float(setpoint)
        self._lo: float | None = None
        self._hi: float | None = None
        self.auto_mode = auto_mode
        self.output_limits = output_limits
        self.reset(starting_output)

    def reset(self, output: float = 0.0) -> None:
        """Forget the past; the next output starts from `output` (clamped) plus P."""
        self._integral = _clamp(float(output), self._lo, self._hi)
        self._output = self._integral
        self._t: float | None = None
        self._last_measurement: float | None = None
        self._bumpless = False
        self.components = (0.0, self._integral, 0.0)
        self.held = False

    @property
    def output(self) -> float:
        return self._output

    @property
    def output_limits(self) -> tuple[float | None, float | None]:
        return self._lo, self._hi

    @output_limits.setter
    def output_limits(self, limits: tuple[float | None, float | None]) -> None:
        lo, hi = limits
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"output_limits: lower {lo} above upper {hi}")
        self._lo, self._hi = lo, hi
        if hasattr(self, "_integral"):
            self._integral = _clamp(self._integral, lo, hi)
            self._output = _clamp(self._output, lo, hi)

    def set_auto_mode(self, enabled: bool, last_output: float | None = None) -> None:
        """Switch between manual and automatic. Switching on (or re-syncing with `last_output`,
        the value actually applied) is bumpless: the next output equals `last_output`, the
        integral taking up whatever P gives, and no derivative is taken across the gap."""
        if enabled and (not self.auto_mode or last_output is not None):
            start = self._output if last_output is None else float(last_output)
            self._output = _clamp(start, self._lo, self._hi)
            self._t = None
            self._last_measurement = None
            self._bumpless = True
        self.auto_mode = enabled

    def __call__(self, measurement: float, t: float, dt: float | None = None) -> float:
        """One step at data-clock time `t` (dt from the previous call unless given)."""
        self.held = False
        if not self.auto_mode:
            return self._output
        if not math.isfinite(measurement) or (dt is None and not math.isfinite(t)):
            self.held = True
            return self._output
        if dt is None:
            # First call, or a clock that went backwards (a reset): re-anchor, no I or D step.
            dt = 0.0 if self._t is None or t < self._t else t - self._t
        elif dt < 0:
            raise ValueError(f"dt must be >= 0, got {dt}")

        error = self.setpoint - measurement
        p = self.kp * error
        if self._bumpless:
            self._integral = _clamp(self._output - p, self._lo, self._hi)
            self._bumpless = False
        elif dt > 0:
            self._integral = _clamp(self._integral + self.ki * error * dt, self._lo, self._hi)
        d = 0.0
        if dt > 0 and self._last_measurement is not None:
            d = -self.kd * (measurement - self._last_measurement) / dt

        self._output = _clamp(p + self._integral + d, self._lo, self._hi)
        self.components = (p, self._integral, d)
        self._t = t
        self._last_measurement = measurement
        return self._output
