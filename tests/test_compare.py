"""`vnsloop compare`: the cohort study, locally and on a local Dask cluster."""
import argparse
import json
import sys

import numpy as np
import pytest

from controller.compare import (TitrationSchedule, daily_means, run_compare_command, run_tasks,
                                summarise, tasks_for)
from sim.patient import PatientOutput

E = np.empty(0)


def _out(ratings):
    return PatientOutput(E, E, E, E, E, E, E, E, ratings, E, E, {})


def test_titration_steps_up_then_back_after_a_side_effect():
    s = TitrationSchedule(step_days=2.0)
    assert s(0.0, None).amplitude_mA == 0.25
    assert s(2 * 86400.0 - 1, _out([])).amplitude_mA == 0.25
    assert s(2 * 86400.0, _out([])).amplitude_mA == 0.5
    assert s(4 * 86400.0, _out([])).amplitude_mA == 0.75
    stim = s(4 * 86400.0 + 60, _out([(4 * 86400.0 + 30, "SIDE_EFFECT:hoarseness")]))
    assert stim.amplitude_mA == 0.5 and stim.enabled
    assert s(20 * 86400.0, _out([])).amplitude_mA == 0.5          # stays
    assert s(21 * 86400.0, _out([(0, "SIDE_EFFECT:cough")])).amplitude_mA == 0.5


def test_daily_means():
    t = np.arange(0, 3 * 86400.0, 600.0)
    x = (t // 86400.0).astype(float)
    assert np.allclose(daily_means(t, x, 0.0, 3 * 86400.0), [0, 1, 2])


TASKS = tasks_for(["fibromyalgia"], ["open", "bayes"], patients=2, days=0.25, seed=3)


def _strip(results):
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in results]


@pytest.fixture(scope="module")
def local_results():
    return run_tasks(TASKS, workers=2)


def test_compare_locally(local_results):
    res = local_results
    assert [(r["policy"], r["seed"]) for r in res] == [("open", 3), ("open", 4),
                                                       ("bayes", 3), ("bayes", 4)]
    rows = summarise(res)
    assert [(r["profile"], r["policy"], r["patients"]) for r in rows] == [
        ("fibromyalgia", "open", 2), ("fibromyalgia", "bayes", 2)]
    for r in rows:
        assert r["limit_violations"] == 0
        # the patient's count of slow beats during or just after trains is part of all of them
        assert 0 <= r["stim_bradycardia_events"] <= r["bradycardia_events"]
        assert np.isfinite(r["pain_reduction_mean"]) and r["pain_reduction_sd"] >= 0
    assert rows[0]["non_responders_found"] is None and rows[1]["non_responders_found"] in (0, 1, 2)
    # open loop at 1.5 mA helps within hours; the two patients differ
    assert rows[0]["pain_reduction_mean"] > 0
    assert res[0]["pain_reduction"] != res[1]["pain_reduction"]


def test_compare_on_a_local_dask_cluster_matches(local_results):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        res = run_tasks(TASKS, scheduler=cluster.scheduler_address)
    assert _strip(res) == _strip(local_results)
    assert summarise(res) == summarise(local_results)


def test_compare_command_json_and_plot(tmp_path, local_results, monkeypatch, capsys):
    import controller.compare as compare
    monkeypatch.setattr(compare, "run_tasks", lambda tasks, **kw: local_results)
    args = argparse.Namespace(profiles="fibromyalgia", policies="open,bayes", patients=2,
                              days=0.25, seed=3, workers=2, scheduler=None, out=str(tmp_path),
                              json=True)
    res = run_compare_command(args)
    assert res["ok"] and res["runs"] == 4 and len(res["rows"]) == 2
    assert res["rows"] == summarise(local_results)
    png = tmp_path / "compare_fibromyalgia_seed3.png"
    assert res["plot"] == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    json.dumps(res)                          # the CLI's JSON line
    assert "pain red." in capsys.readouterr().out


def test_scheduler_without_dask_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(RuntimeError, match="dask"):
        run_tasks(TASKS[:1], scheduler="tcp://127.0.0.1:1")


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        tasks_for(["fibromyalgia"], ["magic"], 1, 1.0)
