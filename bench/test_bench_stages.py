"""Per-call costs of the control-tick stages not covered elsewhere (pytest-benchmark).

Already covered, not repeated here: the R-peak detector per 32-sample chunk
(bench/test_bench_signals.py) and the HRV update per beat (bench/test_bench_hrv.py).
Here: the estimator tick, the PID policy step, the supervisor guard, a whole control tick
through `ControlLoop.tick`, and the Bayesian epoch update (tell + ask).
"""
from __future__ import annotations

import numpy as np
import pytest

from controller.bayes import BayesSettings, SafeBayesPolicy
from controller.config import Config
from controller.estimation import EstimationSettings, StateEstimator
from controller.outlets import OutputLog
from controller.policies import make_policy
from controller.runtime import ControlLoop
from controller.safety import SafetyLimits, SafetySupervisor
from controller.types import StateEstimate, Stimulation
from signals.chunk import Chunk
from signals.hrv import StreamingHRV

ROUNDS = 2000       # fixed rounds: the machines are shared, calibration would take most of the time
TICK_S = 0.25


def _run(benchmark, fn, rounds=ROUNDS):
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=20)


def _features():
    rng = np.random.default_rng(0)
    h = StreamingHRV()
    t = 0.0
    for k in range(600):
        rr = 850.0 + 40.0 * np.sin(k * 0.6) + 10.0 * rng.standard_normal()
        t += rr / 1000.0
        h.update(t, rr)
    return h.features(), t


class _Clock:
    """Monotonic tick times across rounds."""

    def __init__(self, t0=0.0):
        self.t = t0

    def __call__(self):
        self.t += TICK_S
        return self.t


def test_estimator_tick(benchmark):
    feats, _ = _features()
    est = StateEstimator(EstimationSettings(baseline_s=60.0), 0.0)
    now = _Clock()
    _run(benchmark, lambda: est.update(now(), feats, 5.0, 15.0, 0.9))


def test_policy_pid_step(benchmark):
    pol = make_policy("pid", None)
    pol.reset(0.0)
    now = _Clock()
    rng = np.random.default_rng(1)
    hr = 70.0 + rng.standard_normal(4096)
    state = StateEstimate(t=0.0, hr_bpm=70.0, vagal_index=0.1, sympathetic_index=0.0,
                          pain_mean=5.0, pain_sd=1.0, quality=0.9, baseline_ready=True)
    cur = Stimulation(1.0, 20.0, 250.0, 30.0, 300.0, True)
    i = [0]

    def step():
        t = now()
        state.t, state.hr_bpm = t, hr[i[0] & 4095]
        i[0] += 1
        return pol.decide(t, state, cur)
    _run(benchmark, step)


def test_supervisor_guard(benchmark):
    sup = SafetySupervisor(SafetyLimits(), 0.0)
    now = _Clock()
    props = [Stimulation(a, 20.0, 250.0, 30.0, 300.0, True) for a in (0.5, 1.0, 1.5, 2.0)]
    i = [0]

    def step():
        t = now()
        sup.on_beat(t, 850.0)
        i[0] += 1
        return sup.guard(t, props[i[0] & 3])
    _run(benchmark, step)


def test_control_loop_tick(benchmark):
    """One whole tick (estimator, policy, supervisor, outputs), fed RR beats between ticks."""
    cfg = Config.from_dict({"policy": {"kind": "pid"}, "estimation": {"baseline_s": 30.0}})
    log = OutputLog()
    loop = ControlLoop(cfg, log, 0.0)
    rng = np.random.default_rng(2)
    state = {"t": 0.0, "beat": 0.0}

    def tick():
        state["t"] += TICK_S
        while state["beat"] < state["t"]:
            rr = 850.0 + 40.0 * np.sin(state["beat"]) + 10.0 * rng.standard_normal()
            state["beat"] += rr / 1000.0
            loop.feed(Chunk("rr", np.array([[rr]]), np.array([state["beat"]])))
        return loop.tick(state["t"])
    for _ in range(400):      # past the baseline, so that the policy works
        tick()
    _run(benchmark, tick)
    benchmark.extra_info.update(loop.tick_stats_us())


@pytest.mark.parametrize("bound", [False, True], ids=["alone", "bound-to-supervisor"])
def test_bayes_epoch_update(benchmark, bound):
    """`tell` (GP updates of the objective and the safety constraints) + `ask` (acquisition);
    bound: with the supervisor's amplitude ceiling in the safe set, as in the runtime."""
    pol = SafeBayesPolicy(BayesSettings())
    if bound:
        pol.bind_amplitude_ceiling(SafetySupervisor(SafetyLimits(), 0.0).amplitude_ceiling)
    pol.reset(0.0)
    rng = np.random.default_rng(3)

    def epoch():
        p = pol.ask() or pol.params_at(pol.seed_index)
        pol.tell(p, float(rng.normal(0.5, 0.3)), float(rng.normal(-1.0, 1.0)))
    for _ in range(5):
        epoch()
    _run(benchmark, epoch, rounds=30)   # the GP grows each epoch: a session's worth of epochs
