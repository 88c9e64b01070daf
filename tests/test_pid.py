"""PID on a first-order plant with known dynamics, the clock injected."""
import math

import pytest

from controller.pid import PID

K, TAU, DT = 2.0, 5.0, 0.1      # plant: tau dy/dt = K u - y


def plant_step(y: float, u: float, dt: float = DT) -> float:
    a = math.exp(-dt / TAU)
    return a * y + (1 - a) * K * u


def run(pid, y, t, seconds, setpoint=None):
    if setpoint is not None:
        pid.setpoint = setpoint
    ys = []
    for _ in range(round(seconds / DT)):
        u = pid(y, t)
        y = plant_step(y, u)
        t += DT
        ys.append(y)
    return y, t, ys


def test_reaches_setpoint():
    pid = PID(1.0, 0.5, 0.0, setpoint=3.0, output_limits=(0, 10))
    y, _, _ = run(pid, 0.0, 0.0, 60.0)
    assert abs(y - 3.0) < 0.02
    assert abs(pid.output - 1.5) < 0.02       # u = y / K at steady state


def test_no_derivative_kick_on_setpoint_step():
    pid = PID(0.5, 0.1, 5.0, setpoint=1.0)
    pid(1.0, 0.0)
    before = pid(1.0, 0.1)
    pid.setpoint = 3.0
    after = pid(1.0, 0.2)
    assert pid.components[2] == 0.0
    # only P (and one integration step) moves: kp * 2 + ki * 2 * dt
    assert after - before == pytest.approx(0.5 * 2.0 + 0.1 * 2.0 * 0.1)


class NoClampPID:
    """A textbook PID that clamps only its output: its integral winds up."""

    def __init__(self, kp, ki, setpoint, hi):
        self.kp, self.ki, self.setpoint, self.hi = kp, ki, setpoint, hi
        self.integral, self.t = 0.0, None

    def __call__(self, y, t):
        e = self.setpoint - y
        if self.t is not None:
            self.integral += self.ki * e * (t - self.t)
        self.t = t
        return min(max(self.kp * e + self.integral, 0.0), self.hi)


def recovery_time(pid) -> float:
    # Unreachable setpoint (y <= K * 10 = 20) for 60 s, then back to 3: time to settle.
    y, t, _ = run(pid, 0.0, 0.0, 60.0, setpoint=30.0)
    y, t, ys = run(pid, y, t, 200.0, setpoint=3.0)
    outside = [k for k, v in enumerate(ys) if abs(v - 3.0) > 0.3]
    return (outside[-1] + 1) * DT if outside else 0.0


def test_anti_windup_recovers_faster_than_without_clamp():
    clamped = recovery_time(PID(1.0, 0.5, 0.0, output_limits=(0, 10)))
    wound = recovery_time(NoClampPID(1.0, 0.5, 0.0, 10.0))
    assert clamped < 0.5 * wound, (clamped, wound)


def test_limits_changed_at_runtime_clamp_integral_and_output():
    pid = PID(0.0, 1.0, output_limits=(0, 10))
    for k in range(50):
        pid(0.0, k * 1.0)                       # error 0 -> setpoint 0: nothing
    pid.setpoint = 5.0
    for k in range(50, 60):
        pid(0.0, k * 1.0)
    assert pid.output == 10.0
    pid.output_limits = (0.0, 1.5)
    assert pid.output == 1.5 and pid.components[1] <= 10.0
    pid.setpoint = -5.0                          # reverse: leaves the cap at once
    assert pid(0.0, 61.0) < 1.5


def test_bumpless_switch_to_auto():
    pid = PID(2.0, 0.5, 1.0, setpoint=3.0, output_limits=(0, 10), auto_mode=False)
    assert pid(1.0, 0.0) == pid.output          # manual: no change
    pid.set_auto_mode(True, last_output=4.0)
    first = pid(1.0, 0.1)                       # large error, yet no jump
    assert first == pytest.approx(4.0)
    second = pid(1.0, 0.2)
    assert second - first == pytest.approx(0.5 * 2.0 * 0.1)   # only the integral moves


def test_dt_from_irregular_timestamps_and_override():
    pid = PID(0.0, 1.0, 0.0, setpoint=1.0)
    for t in (10.0, 10.1, 10.35, 10.4, 11.4):
        pid(0.0, t)
    assert pid.output == pytest.approx(1.4)     # ki * error * (11.4 - 10.0)
    pid(0.0, 99.0, dt=0.5)
    assert pid.output == pytest.approx(1.9)
    pid(0.0, 98.0)                              # clock went back: re-anchor, no step
    assert pid.output == pytest.approx(1.9)


def test_derivative_uses_data_clock():
    pid = PID(0.0, 0.0, 2.0)
    pid(0.0, 0.0)
    assert pid(1.0, 0.5) == pytest.approx(-2.0 * 1.0 / 0.5)


def test_nan_holds_last_output_and_flags():
    pid = PID(1.0, 1.0, 0.0, setpoint=2.0)
    pid(0.0, 0.0)
    out = pid(0.0, 1.0)
    assert not pid.held
    assert pid(float("nan"), 2.0) == out and pid.held
    assert pid(1.0, float("nan")) == out and pid.held
    pid(0.0, 3.0)
    assert not pid.held
    assert pid.output == pytest.approx(2.0 + 2.0 * 3.0)   # integral over the whole gap


def test_reset_forgets():
    pid = PID(1.0, 1.0, setpoint=1.0)
    pid(0.0, 0.0)
    pid(0.0, 5.0)
    pid.reset()
    assert pid.output == 0.0
    assert pid(1.0, 100.0) == 0.0
