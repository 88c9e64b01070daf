"""Policy costs: one Bayesian update (tell + ask) with 200 observations, one PID step."""
import copy

import numpy as np

from controller.bayes import BayesSettings, SafeBayesPolicy
from controller.pid import PID


def _policy_with(n: int, acquisition: str = "safeopt") -> SafeBayesPolicy:
    rng = np.random.default_rng(0)
    pol = SafeBayesPolicy(BayesSettings(acquisition=acquisition, non_responder_epochs=10**6))
    params = pol.current
    for _ in range(n):
        f, a = params["frequency_Hz"], params["amplitude_mA"]
        pol.tell(params, 3 * np.exp(-((f - 20) / 8) ** 2 - ((a - 2) / 0.7) ** 2)
                 + 0.3 * rng.standard_normal(), -5 * (a / 2.8) ** 4 + 0.5 * rng.standard_normal())
        params = pol.ask()
    return pol


def _bench_update(benchmark, acquisition):
    base = _policy_with(200, acquisition)
    obs = (base.current, 1.0, -1.0)

    def setup():
        return (copy.deepcopy(base),), {}

    def update(pol):
        pol.tell(*obs)
        return pol.ask()

    benchmark.pedantic(update, setup=setup, rounds=30, iterations=1)
    return benchmark.stats.stats.median


def test_bayes_update_200_observations(benchmark):
    assert _bench_update(benchmark, "safeopt") < 5e-3      # goal: <= 5 ms


def test_bayes_update_200_observations_thompson(benchmark):
    _bench_update(benchmark, "thompson")


def test_pid_step(benchmark):
    pid = PID(0.05, 0.01, 0.001, setpoint=-2.0, output_limits=(0.0, 3.5))
    t = [0.0]

    def step():
        t[0] += 0.1
        return pid(-1.0, t[0])

    benchmark(step)
