"""Open loop and PID policies behind the common interface, on a synthetic patient."""
import math

import numpy as np
import pytest

from controller.bayes import SafeBayesPolicy
from controller.policies import (OpenLoopPolicy, OpenLoopSettings, PIDPolicy, PIDSettings,
                                 make_policy)
from controller.types import Stimulation, StateEstimate

READY = StateEstimate(t=0.0, hr_bpm=70.0, baseline_ready=True)


def test_open_loop_gives_the_clinical_duty_cycle_after_baseline():
    pol = OpenLoopPolicy()
    pol.reset(0.0)
    assert not pol.decide(0.0, StateEstimate(hr_bpm=70.0), Stimulation()).enabled
    stim = pol.decide(1.0, READY, Stimulation())
    assert stim == Stimulation(1.5, 20.0, 250.0, 30.0, 300.0, True)
    assert pol.on_epoch(600.0, READY) == []
    pol.notify_unsafe(2.0, stim, "side effect: cough")
    assert pol.decide(3.0, READY, stim) == stim
    assert OpenLoopPolicy(OpenLoopSettings(wait_for_baseline=False)).decide(
        0.0, StateEstimate(), Stimulation()).enabled


def test_make_policy_kinds_and_config_errors():
    assert isinstance(make_policy("open", None), OpenLoopPolicy)
    pid = make_policy("pid", {"target": -3.0, "target_kind": "hr_change_bpm"})
    assert isinstance(pid, PIDPolicy) and pid.pid.setpoint == -3.0
    bayes = make_policy({"kind": "bayes", "acquisition": "thompson", "freq_range": [5, 25]})
    assert isinstance(bayes, SafeBayesPolicy) and bayes.grid[:, 0].min() == 5
    for p in (make_policy("open"), pid, bayes):
        assert isinstance(p.name, str)
    from controller.config import Config
    cfg = Config().policy
    for kind in ("open", "pid", "bayes"):
        assert make_policy(kind, getattr(cfg, kind)).name == kind
    pid = make_policy("pid", cfg.pid)
    assert pid.pid.setpoint == cfg.pid.setpoint and pid.cap == cfg.pid.output_max_mA
    bayes = make_policy("bayes", cfg.bayes)
    assert bayes.grid[:, 1].max() == pytest.approx(cfg.bayes.amplitude_max_mA)
    with pytest.raises(ValueError, match="unknown setting"):
        make_policy("pid", {"targt": 1.0})
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("fuzzy", None)
    with pytest.raises(ValueError, match="target_kind"):
        make_policy("pid", {"target_kind": "pain"})


def hr_change(amp: float) -> float:
    """Neural fulcrum: small tachycardia below 1 mA, growing bradycardia above."""
    return amp if amp < 1.0 else 1.0 - 3.0 * (amp - 1.0)


def run_pid(pol, minutes, on=30.0, off=60.0, t0=0.0, notify_at=None, rng=None):
    """1 Hz ticks; the generator starts a train at enable and cycles itself; the supervisor
    passes every proposal. Returns (t, amplitude, in_train, hr change) rows."""
    rng = rng or np.random.default_rng(0)
    current = Stimulation()
    t_on = None
    rows = []
    for k in range(int(minutes * 60)):
        t = t0 + k
        if current.enabled and t_on is None:
            t_on = t
        in_train = t_on is not None and (t - t_on) % (on + off) < on
        change = hr_change(current.amplitude_mA) if in_train else 0.0
        state = StateEstimate(t=t, hr_bpm=70.0 + change + 0.3 * rng.standard_normal(),
                              vagal_index=0.8 * current.amplitude_mA if current.enabled else 0.0,
                              baseline_ready=t >= t0 + 60)
        if notify_at is not None and t == notify_at:
            pol.notify_unsafe(t, current, "side effect: hoarseness")
        current = pol.decide(t, state, current)
        rows.append((t, current.amplitude_mA, in_train, change, current.enabled))
    return rows


def test_pid_policy_holds_hr_change_target_during_trains():
    pol = PIDPolicy(PIDSettings(train_on_s=30.0, train_off_s=60.0))
    pol.reset(0.0)
    rows = run_pid(pol, 45)
    assert not any(r[4] for r in rows[:60])          # off until the baseline is ready
    assert all(r[4] for r in rows[61:])
    late = [r for r in rows[-900:] if r[2]]
    assert np.mean([r[3] for r in late]) == pytest.approx(-2.0, abs=0.3)
    assert rows[-1][1] == pytest.approx(2.0, abs=0.1)   # where hr_change(amp) = -2
    # between trains the amplitude is held, not wound up by the unchanged heart rate
    off_amps = [r[1] for r in rows[-60:] if not r[2]]
    assert max(off_amps) - min(off_amps) < 1e-12


def test_pid_policy_vagal_index_target():
    pol = make_policy("pid", {"target_kind": "vagal_index", "target": 1.0})
    pol.reset(0.0)
    rows = run_pid(pol, 20)
    assert rows[-1][1] == pytest.approx(1.25, abs=0.05)


def test_pid_policy_never_returns_to_an_unsafe_amplitude():
    pol = PIDPolicy(PIDSettings(train_on_s=30.0, train_off_s=60.0))
    pol.reset(0.0)
    rows = run_pid(pol, 45, notify_at=1200)
    reported = rows[1199][1]
    assert reported > 1.0
    assert max(r[1] for r in rows[1200:]) <= reported - 0.25 + 1e-9


def test_pid_policy_envelope_limit():
    pol = PIDPolicy(PIDSettings(train_on_s=30.0, train_off_s=60.0))
    pol.reset(0.0)
    pol.set_amplitude_limit(1.2)
    rows = run_pid(pol, 30)
    assert max(r[1] for r in rows) <= 1.2
    assert rows[-1][1] == pytest.approx(1.2)            # saturated against the cap...
    pol.set_amplitude_limit(3.5)                        # ...without wind-up: no jump
    state = StateEstimate(t=1800.0, hr_bpm=70.0, baseline_ready=True)
    assert pol.decide(1800.0, state, Stimulation(1.2, enabled=True)).amplitude_mA <= 1.2 + 1e-9


def test_policies_tolerate_missing_measurements():
    nan_state = StateEstimate(t=100.0, baseline_ready=True)
    for pol in (OpenLoopPolicy(), PIDPolicy(), SafeBayesPolicy()):
        pol.reset(0.0)
        stim = pol.decide(100.0, nan_state, Stimulation())
        assert all(math.isfinite(v) for v in stim.as_array())
        assert pol.on_epoch(700.0, nan_state) is not None
