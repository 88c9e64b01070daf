"""The closed loop in lockstep with the virtual patient: the same ControlLoop as on a rig,
checked against the simulator's ground truth and the patient's own envelope check."""
import numpy as np
import pytest

from controller.config import Config, default_config
from controller.lockstep import LockstepController, gating_delays
from controller.outlets import OutputLog
from controller.runtime import ControlLoop
from controller.simulate import simulate
from signals.chunk import Chunk
from sim.command import Stimulation
from sim.envelope import check_command
from sim.patient import VirtualPatient


def config(**overrides) -> Config:
    d = default_config().to_dict()
    d["loop"]["tick_hz"] = 1.0
    for path, value in overrides.items():
        node = d
        *keys, last = path.split(".")
        for k in keys:
            node = node[k]
        node[last] = value
    return Config.from_dict(d)


def run(profile, seed, hours, cfg, tick_s=1.0):
    patient = VirtualPatient(profile, seed)
    ctl = LockstepController(cfg, patient, use_ecg=False)
    rec = simulate(patient, ctl, hours * 3600.0, tick_s)
    return patient, ctl, rec


@pytest.mark.parametrize("policy", ["open", "pid"])
def test_every_command_is_inside_the_envelope_and_the_patient_counts_no_violation(policy):
    patient, ctl, rec = run("fibromyalgia", 2, 3.0, config(**{"policy.kind": policy,
                                                              "estimation.baseline_s": 600.0}))
    _, cmds = ctl.out.command_array()
    assert len(cmds) >= 3 * 3600
    assert not any(check_command(Stimulation.from_sample(c)) for c in cmds)
    assert patient.counters["limit_violations"] == 0
    assert cmds[:, 6].any(), "the policy never stimulated"
    assert np.all(np.diff(cmds[:, 0]) >= 1), "sequence numbers must increase"
    # no stimulation during the baseline period
    t, _ = ctl.out.command_array()
    assert not cmds[t < 600.0, 6].any()


def test_cardiac_sensitive_under_pid_meets_the_bradycardia_interlock_and_recovers():
    # A deep heart-rate target drives the efferent (B-fibre) effect; this patient's low
    # efferent threshold brings bradycardic beats in the evening, when heart rate is lowest.
    cfg = config(**{"policy.kind": "pid", "policy.pid.setpoint": -10.0,
                    "policy.pid.output_max_mA": 3.5})
    patient, ctl, rec = run("cardiac_sensitive", 0, 24.0, cfg)
    stops = [e for e in ctl.out.events
             if e.kind == "safety.bradycardia" and "rr_ms" in e.data]
    assert stops, "the bradycardia interlock was never met"
    t_stop = stops[0].t
    assert stops[0].data["hr_bpm"] < 50.0
    t, cmds = ctl.out.command_array()
    after = t >= t_stop
    # the command sent in the same beat is off
    assert cmds[after][0, 6] == 0 and cmds[after][0, 1] == 0
    locked = (t >= t_stop) & (t < t_stop + 600.0)
    assert not cmds[locked, 6].any(), "stimulation during the 10 min lockout"
    assert cmds[t >= t_stop + 600.0, 6].any(), "the loop never resumed after the lockout"
    # the heart recovers once stimulation is off
    tt, hr = rec.truth_t, rec.truth["hr_bpm"]
    hr_at = hr[(tt >= t_stop - 30) & (tt < t_stop)].mean()
    hr_off = hr[(tt >= t_stop + 120) & (tt < t_stop + 600)].mean()
    assert hr_off > hr_at + 3.0
    assert patient.counters["asystole_events"] == 0
    assert patient.counters["limit_violations"] == 0


def test_respiratory_gating_bursts_follow_true_exhalation_onsets():
    cfg = config(**{"policy.kind": "open", "gating.enabled": True, "estimation.baseline_s": 60.0})
    patient = VirtualPatient("fibromyalgia", 4)
    ctl = LockstepController(cfg, patient, use_ecg=False)
    simulate(patient, ctl, 600.0, 0.05)
    bursts = np.asarray(ctl.loop.gate_bursts)
    onsets = np.asarray(ctl.true_exhalation_onsets)
    breaths = np.sum(onsets > 120.0)
    assert len(bursts[bursts > 120.0]) >= 0.8 * breaths
    delays = gating_delays(bursts.tolist(), onsets.tolist())
    print(f"gating delay from true exhalation onset: median {np.median(delays) * 1000:.0f} ms, "
          f"p95 {np.percentile(delays, 95) * 1000:.0f} ms over {len(delays)} bursts")
    assert np.median(delays) < 0.6 and np.percentile(delays, 95) < 1.0
    # bursts are delivered: enabled commands of burst length, duty within limits
    _, cmds = ctl.out.command_array()
    on = cmds[cmds[:, 6] > 0]
    assert len(on) and np.all(on[:, 4] == cfg.gating.burst_s)
    assert patient.counters["limit_violations"] == 0


class OrderedLog(OutputLog):
    """An output log that also keeps the order in which commands and events were sent."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def send_command(self, cmd) -> None:
        self.order.append("command")
        super().send_command(cmd)

    def send_event(self, ev) -> None:
        self.order.append(ev.kind)
        super().send_event(ev)


def test_an_operator_stop_is_sent_before_anything_else_and_only_resume_re_enables():
    cfg = config(**{"policy.kind": "open", "policy.open.wait_for_baseline": False,
                    "policy.open.amplitude_mA": 1.0})
    log = OrderedLog()
    loop = ControlLoop(cfg, log, 0.0)
    t = 0.0
    while not loop.supervisor.last.stim.enabled and t < 60.0:
        t += 0.8
        loop.feed(Chunk("rr", np.array([[800.0]]), np.array([t])))
        loop.tick(t)
    assert loop.supervisor.last.stim.enabled, "the open policy never stimulated"
    n_commands = len(log.commands)
    log.order.clear()
    loop.operator(t + 0.1, "STOP")   # the rig's operator thread calls this directly
    assert log.order[0] == "command"
    assert log.commands[n_commands][6] == 0.0 and log.commands[n_commands][1] == 0.0
    assert {"safety.operator", "input.started"} <= set(log.order[1:])
    assert loop.fed_t["operator"] == t + 0.1       # the replay's watermark, as `feed` keeps it
    for k in range(1, 20):
        loop.feed(Chunk("rr", np.array([[800.0]]), np.array([t + 0.8 * k])))
        loop.tick(t + 0.8 * k)
        assert not loop.supervisor.last.stim.enabled
    loop.operator(t + 16.0, " resume ")
    for k in range(21, 40):
        loop.feed(Chunk("rr", np.array([[800.0]]), np.array([t + 0.8 * k])))
        loop.tick(t + 0.8 * k)
    assert loop.supervisor.last.stim.enabled
