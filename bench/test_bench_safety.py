"""The per-tick cost of the supervisor (budget: 20 us per control tick in lockstep)."""
from __future__ import annotations

import itertools

from controller.safety import SafetyLimits, SafetySupervisor
from controller.types import Stimulation


def test_guard_per_call(benchmark):
    sup = SafetySupervisor(SafetyLimits(), 0.0)
    props = itertools.cycle([Stimulation(a, 20.0, 250.0, 30.0, 300.0, True)
                             for a in (0.5, 1.0, 1.5, 2.0)])
    clock = itertools.count(1)

    def tick():
        t = next(clock) * 0.25
        sup.on_signal(t, t, 1.0)
        return sup.guard(t, next(props))

    benchmark(tick)
    assert benchmark.stats.stats.median < 20e-6


def test_guard_only_per_call(benchmark):
    sup = SafetySupervisor(SafetyLimits(), 0.0)
    prop = Stimulation(1.0, 20.0, 250.0, 30.0, 300.0, True)
    state = {"t": 0.0}

    def tick():
        state["t"] += 0.25
        return sup.guard(state["t"], prop)   # stale after 2 s: exercises the hold/stop path

    benchmark(tick)
    assert benchmark.stats.stats.median < 20e-6
