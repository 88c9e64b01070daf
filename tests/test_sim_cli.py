"""`vnsloop sim --policy open` end to end, as a subprocess."""
import json
import subprocess
import sys
from pathlib import Path

KEYS = {"sim_seconds", "wall_seconds", "realtime_factor", "profile", "policy", "seed",
        "pain_true_mean", "pain_true_baseline_mean", "pain_reduction", "mood_change",
        "rescue_doses", "bradycardia_events", "discomfort_events", "limit_violations", "report"}


def test_sim_open_loop_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "controller.cli", "sim", "--profile",
                          "fibromyalgia", "--policy", "open", "--hours", "2", "--seed", "1",
                          "--json", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert KEYS <= res.keys()
    assert res["profile"] == "fibromyalgia" and res["policy"] == "open" and res["seed"] == 1
    assert res["sim_seconds"] == 7200.0
    assert res["limit_violations"] == 0
    assert res["realtime_factor"] > 1000.0
    assert res["pain_reduction"] > 0.0
    assert abs(res["pain_true_baseline_mean"] - res["pain_true_mean"]
               - res["pain_reduction"]) < 1e-9
    png = Path(res["report"])
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_sim_refuses_a_bad_config_naming_the_key_and_range(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[safety]\namplitude_max_mA = 9.0\n")
    out = subprocess.run([sys.executable, "-m", "controller.cli", "sim", "--hours", "0.1",
                          "--config", str(cfg), "--json", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ok"] is False
    assert "safety.amplitude_max_mA" in res["error"] and "3.5" in res["error"]
