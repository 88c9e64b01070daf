"""Safe Bayesian optimisation on synthetic patients with a known optimum and unsafe region."""

from dataclasses import replace

import numpy as np
import pytest

from controller.bayes import BayesSettings, GridGP, SafeBayesPolicy, matern52
from controller.safety import SafetyLimits, SafetySupervisor
from controller.types import Stimulation, StateEstimate

HR_LIMIT = 5.0    # BayesSettings.hr_max_drop_bpm


def relief(f, a):
    """Pain reduction (NRS) peaked at (20 Hz, 2.0 mA)."""
    return 3.0 * np.exp(-((f - 20.0) / 8.0) ** 2 - ((a - 2.0) / 0.7) ** 2)


def hr_drop(f, a):
    """Heart-rate change in trains: violates the -5 bpm limit above 2.8 mA."""
    return -HR_LIMIT * (a / 2.8) ** 4


def optimise(seed, epochs=30, acquisition="safeopt", objective=relief, **kw):
    rng = np.random.default_rng(100 + seed)
    pol = SafeBayesPolicy(BayesSettings(acquisition=acquisition, rng_seed=seed, **kw))
    params = pol.current
    tried = []
    for _ in range(epochs):
        if params is None:
            break
        f, a = params["frequency_Hz"], params["amplitude_mA"]
        tried.append((f, a))
        pol.tell(params, objective(f, a) + 0.3 * rng.standard_normal(),
                 hr_drop(f, a) + 0.5 * rng.standard_normal())
        if pol.non_responder and not hasattr(pol, "flagged_at"):
            pol.flagged_at = len(tried)
        params = pol.ask()
    return pol, tried


def _bowl(x):
    """A non-linear prior mean over normalised inputs."""
    return 0.5 * x[:, 1] - 0.8 * (x[:, 0] - 0.4) ** 2


@pytest.mark.parametrize("nuisance,prior", [(False, None), (True, None), (True, _bowl)])
def test_incremental_gp_matches_batch_posterior(nuisance, prior):
    """The posterior over the grid, grown one observation at a time, equals the batch one; with
    nuisance features, that of f with the nuisance weights marginalised; with a prior mean
    function, about it."""
    rng = np.random.default_rng(0)
    grid = rng.random((50, 2))
    ls = np.array([0.3, 0.2])
    w = np.array([0.7, 0.4]) if nuisance else None
    gp = GridGP(grid, ls, signal_sd=2.0, noise_sd=0.5, prior_mean=1.0, capacity=2, nuisance_sd=w,
                prior=prior)
    X, y = rng.random((12, 2)), rng.standard_normal(12)
    C = rng.standard_normal((12, 2))
    for x, v, c in zip(X, y, C):
        gp.add(x, v, context=c if nuisance else None)
    K = 4.0 * matern52(X / ls, X / ls) + 0.25 * np.eye(12)
    if nuisance:
        K += (C * w ** 2) @ C.T
    Ks = 4.0 * matern52(grid / ls, X / ls)
    m_grid, m_obs = (1.0 + prior(grid), 1.0 + prior(X)) if prior else (1.0, 1.0)
    mean = m_grid + Ks @ np.linalg.solve(K, y - m_obs)
    var = 4.0 - np.einsum("ij,ji->i", Ks, np.linalg.solve(K, Ks.T))
    assert np.allclose(gp.mean, mean, atol=1e-9)
    assert np.allclose(gp.var, var, atol=1e-9)
    cov = 4.0 * matern52(grid[:5] / ls, grid[5:9] / ls) - Ks[:5] @ np.linalg.solve(K, Ks[5:9].T)
    assert np.allclose(gp.cov(np.arange(5), np.arange(5, 9)), cov, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_safeopt_finds_optimum_and_never_tries_unsafe(seed):
    pol, tried = optimise(seed)
    assert sum(hr_drop(f, a) < -HR_LIMIT for f, a in tried) == 0
    best = pol.best_params
    assert relief(best["frequency_Hz"], best["amplitude_mA"]) >= 0.9 * 3.0
    assert not pol.non_responder
    # amplitude rises by at most max_amp_step_mA between epochs
    assert max(np.diff([a for _, a in tried])) <= 0.5 + 1e-9


@pytest.mark.parametrize("acquisition", ["safeopt", "thompson", "ucb"])
def test_same_seed_same_decisions(acquisition):
    _, a = optimise(3, epochs=15, acquisition=acquisition)
    _, b = optimise(3, epochs=15, acquisition=acquisition)
    assert a == b


def test_thompson_explores_safely_and_finds_relief():
    hits = 0
    for seed in (0, 1, 2):
        pol, tried = optimise(seed, epochs=40, acquisition="thompson")
        assert sum(hr_drop(f, a) < -HR_LIMIT for f, a in tried) == 0
        best = pol.best_params
        hits += relief(best["frequency_Hz"], best["amplitude_mA"]) >= 0.8 * 3.0
    assert hits >= 2
    # different seeds draw differently
    assert optimise(0, 10, "thompson")[1] != optimise(1, 10, "thompson")[1]


def test_non_responder_flagged_and_amplitude_not_pushed():
    for seed in (0, 1):
        pol, tried = optimise(seed, epochs=30, objective=lambda f, a: 0.0,
                              non_responder_threshold=0.5)
        assert pol.non_responder
        assert pol.flagged_at <= 25
        assert set(tried[pol.flagged_at:]) == {(20.0, 0.5)}   # back to the low seed
        # it climbs the dose first (relief is expected to grow with charge), but stops well
        # below the 3.5 mA cap
        assert max(a for _, a in tried) <= 2.5
        assert pol.current["amplitude_mA"] == pol.settings.seed_amplitude_mA
    off = optimise(0, epochs=30, objective=lambda f, a: 0.0, fallback="off",
                   non_responder_threshold=0.5)[0]
    assert off.non_responder and off.current is None and not off.stimulation(off.current).enabled


def test_discomfort_steps_down_and_region_becomes_unsafe():
    pol, _ = optimise(0, epochs=20)
    here = pol.current
    stim = pol.stimulation(here)
    pol.notify_unsafe(1000.0, stim, "side effect: hoarseness")
    assert pol.current is None or pol.current["amplitude_mA"] < here["amplitude_mA"]
    assert not pol.safe_mask()[pol.nearest(here)]
    for _ in range(10):
        nxt = pol.ask()
        assert nxt is None or nxt != here
        pol.tell(nxt, 0.0, -1.0)


def test_policy_interface_over_epochs():
    """decide/on_epoch as the runtime drives them: stimulation off for the reference period,
    then each setting held for a trial of two runtime epochs; the objective is the unstimulated
    reference minus the mean pain estimate after the washout, the constraint the heart-rate
    change measured in trains."""
    s = BayesSettings(train_on_s=30.0, train_off_s=60.0, reference_s=120.0, trial_s=1200.0,
                      washout_s=600.0, climb=False)
    pol = SafeBayesPolicy(s)
    pol.reset(0.0)
    current, t_on, pain = Stimulation(), None, 6.0
    events = []
    for k in range(600 + 3 * 1200 + 120):
        t = float(k)
        if current.enabled and t_on is None:
            t_on = t
        in_train = t_on is not None and (t - t_on) % 90.0 < 30.0
        a = current.amplitude_mA
        pain -= relief(current.frequency_Hz, a) / 600.0 if current.enabled else 0.0
        state = StateEstimate(t=t, hr_bpm=70.0 + (hr_drop(20.0, a) if in_train else 0.0),
                              pain_mean=pain, pain_sd=0.2, baseline_ready=t >= 60)
        if k > 0 and k % 600 == 0:
            events += pol.on_epoch(t, state)
        current = pol.decide(t, state, current)
        if t < 600:          # baseline, then the reference period (to the next epoch boundary)
            assert not current.enabled
        else:
            assert current.enabled and current.train_on_s == 30.0 and current.train_off_s == 60.0
    # one decision when the reference is taken, then one per trial (not per runtime epoch)
    assert [e.kind for e in events] == ["policy.decision"] * 4
    assert [e.t for e in events] == [600.0, 1800.0, 3000.0, 4200.0]
    assert pol.reference == (6.0, 0.2)
    assert len(pol.history) == 3
    params, objective, constraints = pol.history[0]
    assert params["amplitude_mA"] == pytest.approx(0.5)
    # pain fell linearly from t = 600; the scored part is t = 1200 ... 1799 (mean 899.5 s in)
    assert objective == pytest.approx(relief(20.0, 0.5) * 899.5 / 600, rel=1e-6)
    assert constraints["hr_change_bpm"] == pytest.approx(hr_drop(20.0, 0.5), abs=1e-9)
    for e in events:
        e.to_json()


def test_climb_raises_amplitude_an_epoch_at_a_time_until_the_first_side_effect():
    """After the reference, the amplitude rises at the seed's frequency every runtime epoch
    (600 s here), each step inside the safe set and at most max_amp_step_mA, without scoring
    relief; the first discomfort report ends the climb one step down, and trials follow."""
    threshold = 1.6                       # discomfort at 20 Hz from this amplitude up
    s = BayesSettings(reference_s=600.0, trial_s=3600.0, washout_s=1200.0)
    pol = SafeBayesPolicy(s)
    pol.reset(0.0)
    current = Stimulation()
    steps, reported = [], None
    for k in range(1, 16 * 600):
        t = float(k)
        state = StateEstimate(t=t, hr_bpm=70.0, pain_mean=6.0, pain_sd=0.3, baseline_ready=True)
        if k % 600 == 0:
            events = pol.on_epoch(t, state)
            if pol._phase == "climb" or (events and "climb" in events[-1].data["reason"]):
                # safe by what the safety GPs knew when it was chosen
                assert pol.current is None or pol.safe_mask()[pol.nearest(pol.current)]
                steps.append((t, pol.current["amplitude_mA"], len(pol.history)))
        current = pol.decide(t, state, current)
        if (reported is None and current.enabled and current.amplitude_mA >= threshold):
            reported = current.amplitude_mA
            pol.notify_unsafe(t + 0.5, current, "discomfort: hoarseness")
            assert pol._phase == "trial" and pol.current["amplitude_mA"] < threshold
    amps = [a for _, a, _ in steps]
    assert amps[0] == pytest.approx(s.seed_amplitude_mA)
    assert all(0 < b - a <= s.max_amp_step_mA + 1e-9 for a, b in zip(amps, amps[1:]))
    assert reported is not None and reported >= threshold
    assert len(steps) <= 12                          # 0.5 to 1.6 mA within a few hours
    assert all(scored == 0 for *_, scored in steps)  # the climb tells the objective nothing
    assert pol.discomfort_gp.n >= len(steps)         # ... but every climb epoch the safety GPs
    assert not pol.safe_mask()[pol.nearest({"frequency_Hz": 20.0, "amplitude_mA": reported,
                                           "pulse_width_us": s.pulse_width_us})]



def test_a_setting_held_lower_by_the_supervisor_is_learnt_as_delivered():
    """The supervisor caps 15-25 Hz at 1.2 mA (as it does after a side effect): the climb
    stops at the cap, every epoch is told at the amplitude that reached the nerve, and the
    amplitudes above a cap once met are out of the search."""
    ceiling, band = 1.2, (15.0, 25.0)

    def supervised(stim):
        if stim.enabled and band[0] <= stim.frequency_Hz <= band[1]:
            return replace(stim, amplitude_mA=min(stim.amplitude_mA, ceiling))
        return stim

    pol = SafeBayesPolicy(BayesSettings(reference_s=0.0, trial_s=600.0, washout_s=300.0,
                                        seed_amplitude_mA=0.7))
    pol.reset(0.0)
    current, requests = Stimulation(), []
    for k in range(1, 600 * 40):
        t = float(k)
        pain = 6.0 - (relief(current.frequency_Hz, current.amplitude_mA) if current.enabled else 0)
        state = StateEstimate(t=t, hr_bpm=70.0, pain_mean=pain, pain_sd=0.3, baseline_ready=True)
        if k % 600 == 0:
            pol.on_epoch(t, state)
        proposal = pol.decide(t, state, current)
        if proposal.enabled and (not requests or requests[-1] != proposal):
            requests.append(proposal)
        current = supervised(proposal)
    in_band = [p for p, _, _ in pol.history if band[0] <= p["frequency_Hz"] <= band[1]]
    assert in_band and all(p["amplitude_mA"] <= ceiling + 1e-9 for p, _, _ in pol.history
                           if band[0] <= p["frequency_Hz"] <= band[1])
    # the climb at 20 Hz asked once past the cap, then learnt it: nothing above it again
    over = [r for r in requests if r.frequency_Hz == 20.0 and r.amplitude_mA > ceiling + 1e-9]
    assert len(over) == 1
    g = pol.grid
    assert not pol.safe_mask()[(g[:, 0] == 20.0) & (g[:, 1] > ceiling + 1e-9)].any()
    # outside the band the amplitude climbs past the cap
    assert max(p["amplitude_mA"] for p, _, _ in pol.history) > ceiling

def test_trials_stay_under_the_supervisors_caps_once_bound_to_them():
    """After a side effect at 20 Hz, 2.0 mA the supervisor caps a band around 20 Hz; a policy
    bound to its ceiling never asks for more there (one left unbound does: the relief peaks
    at 20 Hz, 2.0 mA)."""
    sup = SafetySupervisor(SafetyLimits(), 0.0)
    for t in np.arange(0.5, 80.0, 0.5):       # a beat every 0.8 s, a tick every 0.5 s
        sup.on_beat(t, 800.0)
        sup.on_signal(t, t, 1.0)
        sup.guard(t, Stimulation(2.0, 20.0, 250.0, 30.0, 300.0, True))
    assert sup.last.stim.amplitude_mA == 2.0
    sup.on_side_effect(80.0, "hoarseness")
    assert sup.amplitude_ceiling(20.0, 250.0) < 2.0 <= sup.amplitude_ceiling(5.0, 250.0)

    def asked(bound):
        rng = np.random.default_rng(7)
        pol = SafeBayesPolicy(BayesSettings(rng_seed=0))
        if bound:
            pol.bind_amplitude_ceiling(sup.amplitude_ceiling)
        params, out = pol.current, []
        for _ in range(25):
            f, a = params["frequency_Hz"], params["amplitude_mA"]
            out.append((f, a))
            pol.tell(params, relief(f, a) + 0.3 * rng.standard_normal(), hr_drop(f, a))
            params = pol.ask()
        return out

    over = [(f, a) for f, a in asked(True) if a > sup.amplitude_ceiling(f, 250.0) + 1e-9]
    assert over == []
    assert any(a > sup.amplitude_ceiling(f, 250.0) + 1e-9 for f, a in asked(False))


def _constant_relief_run(relief_nrs, trials=8, min_s=0.0):
    """The runtime loop on a patient whose estimated pain sits `relief_nrs` below the
    unstimulated reference whenever stimulation is on."""
    pol = SafeBayesPolicy(BayesSettings(non_responder_epochs=3, non_responder_min_amp_mA=0.5,
                                        reference_s=0.0, trial_s=600.0, washout_s=300.0,
                                        climb=False, non_responder_min_s=min_s,
                                        non_responder_threshold=0.3))
    pol.reset(0.0)
    current = Stimulation()
    kinds = []
    for k in range(600 * trials + 1):
        t = float(k)
        state = StateEstimate(t=t, hr_bpm=70.0, pain_sd=0.1, baseline_ready=True,
                              pain_mean=6.0 - (relief_nrs if current.enabled else 0.0))
        if k > 0 and k % 600 == 0:
            kinds += [e.kind for e in pol.on_epoch(t, state)]
        current = pol.decide(t, state, current)
    return pol, kinds


def test_a_trial_without_a_report_is_not_scored_and_the_best_setting_follows():
    """Reports come in every other trial only (the patient asleep in the others): those trials
    teach safety but not relief, and each is followed by the best setting by posterior mean."""
    pol = SafeBayesPolicy(BayesSettings(reference_s=0.0, trial_s=600.0, washout_s=300.0,
                                        climb=False))
    pol.reset(0.0)
    nan = float("nan")
    current, rated, reasons = Stimulation(), nan, []
    for k in range(600 * 9 + 1):
        t = float(k)
        trial = k // 600
        if trial % 2 == 0 and k % 600 == 450:
            rated = t                    # a report in the scored part of even trials
        state = StateEstimate(t=t, hr_bpm=70.0, pain_sd=0.3, baseline_ready=True,
                              pain_mean=6.0 - (1.0 if current.enabled else 0.0),
                              fed_t=(nan,) * 4 + (rated, nan))   # INPUT_ROLES: ratings 5th
        if k > 0 and k % 600 == 0:
            n = pol.hr_gp.n
            before = pol.objective.mean.copy()
            events = pol.on_epoch(t, state)
            reasons.append(events[-1].data["reason"])
            assert pol.hr_gp.n == n + 1                 # safety learnt from every trial
            if trial % 2 == 0:                          # the trial that ended is odd
                assert np.array_equal(pol.objective.mean, before)
                reach = pol.safe_mask() & (pol.grid[:, 1] <= current.amplitude_mA + 0.5 + 1e-9)
                best = pol._argmax(pol.objective.mean, pol._amplitude_edge(reach))
                assert pol.current == pol.params_at(best)
        current = pol.decide(t, state, current)
    assert len(pol.history) == 5 == pol.objective.n            # trials 0, 2, 4, 6, 8
    assert all(r.startswith("best so far") for r in reasons[1::2])
    assert not any(r.startswith("best so far") for r in reasons[0::2])


def test_on_epoch_reports_non_responder_once():
    pol, kinds = _constant_relief_run(0.0)
    assert kinds.count("policy.non_responder") == 1
    assert pol.non_responder
    assert pol.current["amplitude_mA"] == pytest.approx(0.5)
    # relief builds over days: no verdict until non_responder_min_s after the first dosed trial
    late, late_kinds = _constant_relief_run(0.0, trials=12, min_s=1800.0)
    assert late.non_responder
    assert late_kinds.index("policy.non_responder") - kinds.index("policy.non_responder") == 3


def test_non_responder_judged_against_the_unstimulated_reference():
    """No change from one trial to the next (relief does not build within a trial here), but a
    steady 1 NRS below the reference: a responder. 0.1 NRS below (the threshold is 0.3): a
    non-responder."""
    pol, kinds = _constant_relief_run(1.0)
    assert not pol.non_responder and "policy.non_responder" not in kinds
    assert all(obj == pytest.approx(1.0) for _, obj, _ in pol.history)
    pol, kinds = _constant_relief_run(0.1)
    assert pol.non_responder and kinds.count("policy.non_responder") == 1
