"""The virtual patient over real LSL on loopback: its streams, and its generator's behaviour
towards the command stream (envelope violations counted, fallback to off after 2 s)."""
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pylsl
import pytest

from sim.lsl_patient import LSLPatient
from sim.patient import VirtualPatient

pytestmark = pytest.mark.lsl
ROOT = Path(__file__).resolve().parents[1]


def _resolve(name: str, timeout: float = 30.0) -> pylsl.StreamInfo:
    found = pylsl.resolve_byprop("name", name, 1, timeout)
    assert found, f"stream {name} not found within {timeout} s"
    return found[0]


def _command_outlet(source_id: str) -> pylsl.StreamOutlet:
    return pylsl.StreamOutlet(pylsl.StreamInfo("vnsloop-command", "Stimulation", 7,
                                               pylsl.IRREGULAR_RATE, pylsl.cf_double64,
                                               source_id))


def _pull_until(inlet, done, timeout: float):
    """Pull chunks until done(all samples so far) or the deadline; returns (data, stamps)."""
    data, stamps = [], []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        d, ts = inlet.pull_chunk(timeout=0.2)
        data += d
        stamps += ts
        if data and done(np.asarray(data)):
            break
    return np.asarray(data), np.asarray(stamps)


def test_patient_process_streams_counts_violations_and_falls_back(uid):
    cmd_sid = f"{uid}-command"
    cmd = _command_outlet(cmd_sid)
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "patient", "--seconds", "60", "--prefix", uid,
         "--seed", "3", "--command-source-id", cmd_sid, "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    inlets = []
    try:
        expect = {"ECG": ("ECG", 500.0), "RR": ("RR", 0.0), "Resp": ("Resp", 25.0),
                  "EDA": ("EDA", 4.0), "Ratings": ("Markers", 0.0), "Truth": ("Truth", 1.0)}
        infos = {k: _resolve(f"{uid}-{k}") for k in expect}
        for k, (type_, rate) in expect.items():
            assert infos[k].type() == type_ and infos[k].nominal_srate() == rate
            assert infos[k].source_id() == f"{uid}-seed3-{k}"
        ecg_in, rr_in, truth_in = (pylsl.StreamInlet(infos[k], max_buflen=30)
                                   for k in ("ECG", "RR", "Truth"))
        inlets += [ecg_in, rr_in, truth_in]
        for inlet in inlets:
            inlet.open_stream(timeout=10.0)
        full = truth_in.info(timeout=5.0)
        labels = []
        ch = full.desc().child("channels").child("channel")
        while not ch.empty():
            labels.append(ch.child_value("label"))
            ch = ch.next_sibling()
        assert {"pain", "vagal", "hr_bpm", "stim_on", "enabled"} <= set(labels)
        assert ecg_in.info(timeout=5.0).desc().child("channels").child("channel") \
            .child_value("unit") == "mV"
        enabled = labels.index("enabled")

        assert cmd.wait_for_consumers(30.0), "the patient never bound to the command stream"
        # 9 mA is out of the envelope, NaN is no number: two violations of four commands
        for seq, amp in enumerate([1.0, 9.0, float("nan"), 1.2], start=1):
            cmd.push_sample([seq, amp, 20.0, 250.0, 10.0, 10.0, 1.0])
            time.sleep(0.2)
        # Silence now: within 2 s (+ a truth sample) the generator must switch itself off.
        def on_then_off(d):
            return d[:, enabled].max() > 0.5 and d[-1, enabled] < 0.5

        truth, _ = _pull_until(truth_in, on_then_off, 15.0)
        assert truth[:, enabled].max() == 1.0 and truth[-1, enabled] == 0.0

        rr, rr_t = rr_in.pull_chunk(timeout=1.0, max_samples=1000)
        ecg, ecg_t = ecg_in.pull_chunk(timeout=1.0, max_samples=100000)
        assert len(rr) >= 2 and 40 < 60000.0 / np.mean(rr) < 130
        assert len(ecg) > 500
        assert np.median(np.diff(ecg_t)) == pytest.approx(1 / 500.0, rel=1e-3)
    finally:
        del inlets
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        del cmd
    assert proc.returncode == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["commands_received"] == 4
    assert res["limit_violations"] == 2
    assert res["violations_by_rule"] == {"amplitude 0-3.5 mA": 1, "finite": 1}
    assert res["fallbacks_to_off"] == 1
    assert res["beats_sent"] >= 2 and 40 < res["hr_mean_bpm"] < 130
    assert 0.0 <= res["pain_mean"] <= 10.0


def test_rr_only_patient_rebinds_a_restarted_command_stream(uid):
    lp = LSLPatient(VirtualPatient("migraine", 1), uid, command_source_id=f"{uid}-command",
                    step_s=0.02, log=lambda msg: None)
    stop = threading.Event()
    result = {}
    th = threading.Thread(target=lambda: result.update(lp.run(20.0, stop)))
    th.start()
    try:
        rr_info = _resolve(f"{uid}-RR", 10.0)
        assert rr_info.type() == "RR"
        assert not pylsl.resolve_byprop("name", f"{uid}-ECG", 1, 0.5)
        for _ in range(2):          # the controller restarts: the patient binds again
            cmd = _command_outlet(f"{uid}-command")
            assert cmd.wait_for_consumers(10.0)
            n = lp.counts["commands_received"]
            cmd.push_sample([1, 0.5, 10.0, 250.0, 5.0, 5.0, 1.0])
            deadline = time.monotonic() + 5.0
            while lp.counts["commands_received"] == n and time.monotonic() < deadline:
                time.sleep(0.02)
            del cmd
            time.sleep(0.3)
    finally:
        stop.set()
        th.join(10.0)
    assert not th.is_alive()
    assert result["commands_received"] == 2
    assert result["command_stream_bindings"] == 2
    assert result["limit_violations"] == 0
