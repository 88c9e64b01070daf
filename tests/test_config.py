"""Configuration: defaults, a TOML round trip, and an error naming key and range per bad value."""
from __future__ import annotations

import re

import pytest

from controller.config import Config, ConfigError, default_config, load_config, save_config
from controller.safety import SafetyLimits

BAD = [  # (dict, pattern the message must match: full key, value, allowed range)
    ({"safety": {"amplitude_max_mA": 9.0}},
     r"^safety\.amplitude_max_mA = 9\.0 is outside the allowed range 0 to 3\.5 mA "
     r"\(absolute cap for cervical VNS\)$"),
    ({"safety": {"electrode": "taVNS", "amplitude_max_mA": 5.5}},
     r"safety\.amplitude_max_mA = 5\.5 .* 0 to 5 mA \(absolute cap for taVNS\)"),
    ({"safety": {"frequency_max_Hz": 40}}, r"safety\.frequency_max_Hz = 40\.0 .* 1 to 30 Hz"),
    ({"safety": {"pulse_width_min_us": 50.0}}, r"safety\.pulse_width_min_us = 50\.0 .* 130 to 1000 us"),
    ({"safety": {"shannon_k_max": 1.85}}, r"safety\.shannon_k_max = 1\.85 .* 0 to 1\.5"),
    ({"safety": {"ramp_up_mA_per_s": 0.1}}, r"safety\.ramp_up_mA_per_s = 0\.1 .* to 0\.05 mA/s"),
    ({"safety": {"ramp_down_mA_per_s": 1.0}}, r"safety\.ramp_down_mA_per_s = 1\.0 .* to 0\.25 mA/s"),
    ({"safety": {"train_on_max_s": 90.0}}, r"safety\.train_on_max_s = 90\.0 .* to 60 s"),
    ({"safety": {"duty_max": 0.6}}, r"safety\.duty_max = 0\.6 .* to 0\.5"),
    ({"safety": {"bradycardia_hr_min_bpm": 40.0}}, r"safety\.bradycardia_hr_min_bpm = 40\.0 .* 50 to"),
    ({"safety": {"rr_pause_max_s": 3.0}}, r"safety\.rr_pause_max_s = 3\.0 .* to 2\.5 s"),
    ({"safety": {"lockout_s": 60.0}}, r"safety\.lockout_s = 60\.0 .* 600 to"),
    ({"safety": {"no_beat_hold_s": 5.0}}, r"safety\.no_beat_hold_s = 5\.0 .* to 2 s"),
    ({"safety": {"electrode": "cuff"}}, r"safety\.electrode = 'cuff' is not one of: cervical, taVNS"),
    ({"safety": {"frequency_min_Hz": 25.0, "frequency_max_Hz": 20.0}},
     r"safety\.frequency_min_Hz = 25 is above safety\.frequency_max_Hz = 20"),
    ({"loop": {"tick_hz": 20}}, r"loop\.tick_hz = 20\.0 .* 1 to 10 Hz"),
    ({"loop": {"heartbeat_s": 2.0}}, r"loop\.heartbeat_s = 2\.0 .* to 1 s"),
    ({"loop": {"tick_hz": "fast"}}, r"loop\.tick_hz = 'fast' has the wrong type: expected float, got str"),
    ({"loop": {"tick_hz": True}}, r"loop\.tick_hz = True has the wrong type"),
    ({"loop": {"tick_hz": float("nan")}}, r"loop\.tick_hz = nan must be a finite number"),
    ({"policy": {"kind": "mpc"}}, r"policy\.kind = 'mpc' is not one of: open, pid, bayes"),
    ({"policy": {"open": {"amplitude_mA": 4.0}}},
     r"policy\.open\.amplitude_mA = 4\.0 .* 0 to 3\.5 mA \(safety\.amplitude_max_mA\)"),
    ({"policy": {"open": {"train_on_s": 30.0, "train_off_s": 10.0}}},
     r"policy\.open\.train_off_s = 10\.0 .* 30 to"),
    ({"policy": {"bayes": {"acquisition": "ei"}}}, r"policy\.bayes\.acquisition = 'ei' is not one of"),
    ({"policy": {"pid": {"output_max_mA": 3.0}}, "safety": {"amplitude_max_mA": 2.0}},
     r"policy\.pid\.output_max_mA = 3\.0 .* 0 to 2 mA"),
    ({"gating": {"burst_s": 10.0}}, r"gating\.burst_s = 10\.0 .* 0\.1 to 5 s"),
    ({"estimation": {"physio_min_ratings": 2.5}}, r"estimation\.physio_min_ratings = 2\.5 has the wrong type"),
    ({"streams": {"ecg": {"channel": -1}}}, r"streams\.ecg\.channel = -1 .* 0 to 1023"),
]


@pytest.mark.parametrize("d, pattern", BAD, ids=[p[:40] for _, p in BAD])
def test_bad_values_name_key_and_range(d, pattern):
    with pytest.raises(ConfigError) as e:
        Config.from_dict(d)
    assert isinstance(e.value, ValueError)
    assert re.search(pattern, str(e.value)), str(e.value)


@pytest.mark.parametrize("d, key, allowed", [
    ({"safety": {"amplitud_max_mA": 1.0}}, "safety.amplitud_max_mA", "amplitude_max_mA"),
    ({"polcy": {}}, "polcy", "policy"),
    ({"streams": {"ekg": {}}}, "streams.ekg", "ecg, rr, resp, eda, ratings, operator"),
    ({"streams": {"ecg": {"chanel": 1}}}, "streams.ecg.chanel", "channel"),
    ({"policy": {"pid": {"sample_time": 1.0}}}, "policy.pid.sample_time", "kp"),
])
def test_unknown_keys_are_refused_listing_allowed(d, key, allowed):
    with pytest.raises(ConfigError, match=re.escape(key)) as e:
        Config.from_dict(d)
    assert "unknown key" in str(e.value) and allowed in str(e.value)


def test_defaults():
    c = default_config()
    c._cross_check()
    assert c.tick_hz == 4.0 and c.loop.heartbeat_s <= 1.0
    assert c.policy.kind == "open" and c.policy.open.train_off_s == 300.0
    assert c.policy.pid.target == "hr_change_bpm" and c.policy.pid.setpoint == -2.0
    assert c.policy.bayes.acquisition == "safeopt" and c.epoch_s == c.policy.bayes.epoch_s
    assert not c.gating.enabled and c.gating.burst_s == 1.0
    assert SafetyLimits.from_config(c) == SafetyLimits()
    assert c.safety.amplitude_max_mA == 3.5 and c.safety.electrode_area_cm2 == 0.1
    assert Config.from_dict({}) == c
    assert set(c.estimation_kwargs()) >= {"baseline_s", "rating_noise_sd"}


def test_tavns_gets_its_own_area_and_cap():
    c = Config.from_dict({"safety": {"electrode": "taVNS", "amplitude_max_mA": 5.0}})
    assert c.safety.electrode_area_cm2 == 0.5 and c.safety.amplitude_max_mA == 5.0


def test_stream_specs():
    c = Config.from_dict({"streams": {"ecg": {"name": "amp-ECG", "source_id": "dev1"},
                                      "operator": {}}})
    specs = c.stream_specs()
    assert specs["ecg"] == {"name": "amp-ECG", "type": None, "source_id": "dev1", "channel": 0}
    assert specs["operator"]["type"] == "Markers" and set(specs) == {"ecg", "operator"}
    with pytest.raises(ConfigError, match="same stream"):
        Config.from_dict({"streams": {"ratings": {}, "operator": {}}})


def test_toml_round_trip(tmp_path):
    c = Config.from_dict({
        "streams": {"rr": {"name": "polar-RR", "source_id": "H10"}},
        "loop": {"tick_hz": 10, "heartbeat_s": 0.25},
        "policy": {"kind": "pid", "pid": {"kp": 0.1, "target": "vagal_index", "setpoint": 0.5}},
        "gating": {"enabled": True, "burst_s": 1.0},
        "safety": {"electrode": "taVNS", "amplitude_max_mA": 4.0, "duty_window_s": 60},
        "record": {"path": "out/session \"1\".xdf"}})
    path = tmp_path / "rig.toml"
    save_config(c, path)
    assert load_config(path) == c
    path.write_text(path.read_text().replace("tick_hz = 10.0", "tick_hz = 0.5"))
    with pytest.raises(ConfigError, match=r"rig\.toml: loop\.tick_hz = 0\.5 .* 1 to 10 Hz"):
        load_config(path)
    path.write_text("[loop\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
