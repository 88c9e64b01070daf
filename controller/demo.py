"""`vnsloop demo` (and `make demo`): the virtual patient in its own process, the controller
against it over real LSL in real time, the session recorded to XDF by LabRecorder, a report
and a summary. The controller sees only the patient's physiological streams; the patient's
ground-truth stream goes to the recording, for the report, never to the controller."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from controller.config import Config, default_config, save_config
from controller.rig import run_realtime
from controller.session_report import plot_session_report
from controller.summary import progress

PATIENT_KINDS = ("ECG", "Resp", "EDA", "Ratings", "Truth")


def demo_config(prefix: str, seed: int, policy: str, seconds: float) -> Config:
    d = default_config().to_dict()
    d["streams"] = {
        role: {"name": f"{prefix}-{kind}", "source_id": f"{prefix}-seed{seed}-{kind}"}
        for role, kind in (("ecg", "ECG"), ("resp", "Resp"), ("eda", "EDA"), ("ratings", "Ratings"))}
    # A one-minute demo cannot afford the five-minute baseline of a real session.
    d["estimation"]["baseline_s"] = max(30.0, min(300.0, seconds / 2))
    d["policy"]["kind"] = policy
    d["policy"]["bayes"]["epoch_s"] = max(10.0, seconds / 6)
    return Config.from_dict(d)


def _start_patient(prefix: str, args, command_source_id: str, seconds: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "controller.cli", "patient", "--profile", args.profile,
           "--seed", str(args.seed), "--prefix", prefix, "--seconds", f"{seconds:.1f}",
           "--command-source-id", command_source_id, "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _patient_summary(proc: subprocess.Popen) -> dict:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"the virtual patient ended without a summary: {err.strip()[-500:]}")
    return json.loads(lines[-1])


def run_demo_command(args) -> dict:
    uid = uuid.uuid4().hex[:8]
    prefix = f"vnsloop-demo-{uid}"
    ctrl_id = f"vnsloop-demo-ctl-{uid}"
    out_dir = Path(args.out)
    xdf = out_dir / f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uid}.xdf"
    config = demo_config(prefix, args.seed, args.policy, args.seconds)
    # Saved beside the recording: `vnsloop replay FILE` finds it and reproduces the session.
    config_path = xdf.with_suffix(".toml")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, config_path)
    progress(f"starting the virtual patient ({args.profile}, seed {args.seed}) as {prefix}")
    patient = _start_patient(prefix, args, ctrl_id + "-command", args.seconds + 60)
    try:
        res = run_realtime(config, seconds=args.seconds, record=str(xdf), source_id=ctrl_id,
                           extra_record_ids=[f"{prefix}-seed{args.seed}-Truth"],
                           resolve_timeout=15.0)
    finally:
        patient_res = _patient_summary(patient)
    loop = res["loop"]
    report = plot_session_report(xdf, out_dir)
    ticks = loop.tick_stats_us()
    events = res["outputs"].events
    return {
        "seconds": res["t_end"] - res["t0"], "policy": args.policy, "profile": args.profile,
        "commands": loop.n_commands, "beats": loop.beats,
        "commands_received_by_patient": patient_res.get("commands_received"),
        "limit_violations": patient_res.get("limit_violations"),
        "fallbacks_to_off": patient_res.get("fallbacks_to_off"),
        "safety_interventions": sum(e.kind.startswith("safety.") for e in events),
        "events": len(events), "stop_reason": res["stop_reason"],
        "max_amplitude_mA": max((c[1] for c in res["outputs"].commands), default=0.0),
        "pain_estimate_last": loop.state.pain_mean,
        "xdf": str(xdf), "config": str(config_path), "report": str(report),
        "tick_p50_us": ticks["p50"], "tick_p99_us": ticks["p99"],
    }
