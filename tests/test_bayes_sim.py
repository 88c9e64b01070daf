"""`vnsloop sim --policy bayes`: the keys it adds, safety, the oracle, non-responders.

Runs in process (run_sim_command with an argparse Namespace) to save the interpreter start-up;
`tests/test_sim_cli.py` covers the subprocess path."""
import argparse
import math

import pytest

from controller.compare import run_one
from controller.oracle import oracle_grid, oracle_search, run_fixed, run_supervised
from controller.safety import SafetyLimits
from controller.simulate import run_sim_command, sim_config
from sim.command import OFF, Stimulation

BAYES_KEYS = {"best_params", "epochs", "non_responder", "oracle_params",
              "oracle_pain_reduction", "oracle_fraction", "unsafe_trials"}
PARAM_KEYS = {"frequency_Hz", "amplitude_mA", "pulse_width_us"}


def _args(tmp_path, profile, days, seed, config=None):
    return argparse.Namespace(profile=profile, policy="bayes", days=days, hours=None,
                              seed=seed, ecg=False, config=config, out=str(tmp_path), json=True)


@pytest.fixture(scope="module")
def fibro(tmp_path_factory):
    return run_sim_command(_args(tmp_path_factory.mktemp("fibro"), "fibromyalgia", 1.0, 1))


def test_sim_config_defaults_for_simulation(tmp_path):
    cfg = sim_config(_args(tmp_path, "fibromyalgia", 1.0, 0))
    assert cfg.tick_hz == 1.0 and cfg.epoch_s == 900.0 and cfg.policy.kind == "bayes"
    toml = tmp_path / "c.toml"
    toml.write_text("[loop]\ntick_hz = 2.0\n[policy.bayes]\nepoch_s = 300.0\n")
    cfg = sim_config(_args(tmp_path, "fibromyalgia", 1.0, 0, config=str(toml)))
    assert cfg.tick_hz == 2.0 and cfg.epoch_s == 300.0      # a config file wins


def test_bayes_sim_fibromyalgia_is_safe_and_complete(fibro):
    r = fibro
    assert BAYES_KEYS <= r.keys()
    assert r["limit_violations"] == 0
    assert r["sim_seconds"] == 86400.0
    assert set(r["best_params"]) == PARAM_KEYS and set(r["oracle_params"]) == PARAM_KEYS
    assert 5.0 <= r["best_params"]["frequency_Hz"] <= 30.0
    assert 0.0 < r["best_params"]["amplitude_mA"] <= 2.5
    # a day of 15-min runtime epochs: a 2-h unstimulated reference, a climb (a decision per
    # epoch), then 2-h trials (a decision each), scored only when a report came in their scored
    # part: not overnight (23:00 to 07:00 here), so at most 16 of the 24 h hold scored trials
    assert r["epochs"] <= 86400 / 900
    assert 1 <= r["epochs_scored"] <= 16 * 3600 / 7200
    assert r["epochs_scored"] < r["epochs"] - 1
    assert isinstance(r["non_responder"], bool)
    assert r["oracle_pain_reduction"] > 0.0
    assert math.isclose(r["oracle_fraction"], r["pain_reduction"] / r["oracle_pain_reduction"])
    # every side effect the patient counted falls in some trial, and only such trials count
    events = r["discomfort_events"] + r["stim_bradycardia_events"] + r["asystole_events"]
    assert r["stim_bradycardia_events"] <= r["bradycardia_events"]
    assert r["unsafe_trials"] == len(r["unsafe_trial_list"]) <= events
    assert (r["unsafe_trials"] > 0) == (events > 0)
    assert sum(t["discomfort_events"] + t["stim_bradycardia_events"] + t["asystole_events"]
               for t in r["unsafe_trial_list"]) == events


# Over one day the responder is not called a non-responder. (Over 14 days it was, for
# fibromyalgia seeds 1 and 2 in bench/bayes_cohort.py: see the report on issue 5.)
def test_bayes_does_not_call_a_responder_a_non_responder(fibro):
    assert fibro["non_responder"] is False


def test_oracle_is_the_best_safe_fixed_setting():
    days = 1.0
    found = oracle_search("fibromyalgia", 2, days * 86400.0)
    grid = found["grid"]
    assert found["candidates"] == len(grid) == len(oracle_grid()) >= 40
    # some candidates break a constraint (high charge at high frequency: discomfort) ...
    assert 0 < found["safe_candidates"] < found["candidates"]
    assert not all(row["safe"] for row in grid)
    # ... the oracle is none of them, it helps, and it is the best of the safe ones
    p = found["params"]
    assert found["pain_reduction"] > 0.0
    assert found["pain_reduction"] == max(row["pain_reduction"] for row in grid if row["safe"])
    again = run_fixed("fibromyalgia", 2, Stimulation(p["amplitude_mA"], p["frequency_Hz"],
                                                     p["pulse_width_us"], 30.0, 300.0, True),
                      days * 86400.0)
    assert again.counters["discomfort_events"] == 0
    assert again.counters["stim_bradycardia_events"] == 0
    assert math.isclose(found["baseline_pain"] - again.pain_mean, found["pain_reduction"])
    assert 5.0 <= p["frequency_Hz"] <= 30.0 and 0.0 < p["amplitude_mA"] <= 2.5


# Fibromyalgia seed 2's heart rate dips under 50 bpm in sleep when stimulated: the
# supervisor's interlock stops stimulation at such a beat and locks it out, for hours a night.
def test_supervised_fixed_run_is_what_the_controller_delivers():
    day = 86400.0
    stim = Stimulation(1.75, 14.0, 250.0, 30.0, 300.0, True)
    twin = run_fixed("fibromyalgia", 2, OFF, day).pain_mean
    alone = twin - run_fixed("fibromyalgia", 2, stim, day).pain_mean
    run = run_supervised("fibromyalgia", 2, stim, day, SafetyLimits())
    supervised = twin - run.pain_mean
    assert run.counters["interlock_stops"] > 0 and run.counters["locked_out_s"] >= 600.0
    assert run.counters["limit_violations"] == 0
    assert 0.0 < supervised < alone
    # the open policy at that setting through the whole controller, in lockstep
    open_loop = run_one({"profile": "fibromyalgia", "policy": "open", "seed": 2, "days": 1.0,
                         "config": {"policy.open.amplitude_mA": 1.75,
                                    "policy.open.frequency_Hz": 14.0}})
    assert open_loop["limit_violations"] == 0
    delivered = open_loop["pain_reduction"]
    assert abs(delivered - supervised) < 0.25 * abs(delivered - alone)
    assert delivered <= supervised * 1.02


def test_supervised_oracle_is_the_best_setting_behind_the_supervisor():
    found = oracle_search("fibromyalgia", 2, 86400.0, limits=SafetyLimits())
    rows = [r for r in found["grid"] if r["safe"]]
    held = [r for r in rows if "supervised_pain_reduction" in r]
    best = max(held, key=lambda r: r["supervised_pain_reduction"])
    assert found["supervised"] and found["params"]["frequency_Hz"] == best["frequency_Hz"]
    assert found["params"]["amplitude_mA"] == best["amplitude_mA"]
    assert found["pain_reduction"] == best["supervised_pain_reduction"]
    # the interlock costs relief here, so more than one candidate had to be held through it
    assert found["pain_reduction"] < found["unsupervised"]["pain_reduction"]
    assert 1 < len(held) < len(rows)
    assert all(r["supervised_pain_reduction"] <= r["pain_reduction"] + 1e-9 for r in held)
    # the candidates left out could not have won: their relief without the supervisor bounds it
    assert all(r["pain_reduction"] <= found["pain_reduction"] for r in rows if r not in held)


# Relief builds over days, so no verdict comes before non_responder_min_s (3 days) of
# therapeutic dose; seed 1 of the non_responder profile is flagged on day 5. (Seed 2 was not
# flagged within 14 days: its trials' relief estimates stay within noise of the 0.2 NRS
# threshold; see the note on issue 5.)
def test_bayes_sim_finds_the_non_responder(tmp_path):
    r = run_sim_command(_args(tmp_path, "non_responder", 5.0, 1))
    assert r["limit_violations"] == 0
    assert r["non_responder"] is True
    assert 3 * 86400.0 < r["non_responder_at_s"] < 5 * 86400.0
    # the oracle agrees that little is to be had
    assert r["oracle_pain_reduction"] < 0.5
