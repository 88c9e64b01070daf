"""`vnsloop sim`: a command source in lockstep with the virtual patient, faster than real time.

`simulate(patient, command_source, duration, tick_s)` is the loop: every tick the patient is
advanced with the command in force, then the command source sees what the patient emitted and
gives the next command. `vnsloop sim` uses the full controller (`LockstepController`) as the
command source, whatever the policy; every run also simulates an unstimulated twin with the
same seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from controller.config import Config, default_config, load_config
from controller.lockstep import LockstepController, estimate_quality
from controller.summary import progress
from controller.types import STATE_CHANNELS
from sim.command import OFF, Stimulation
from sim.model import MIN_RR_S
from sim.patient import PatientOutput, VirtualPatient, warmup

KEPT_TRUTH = ("pain", "mood", "hr_bpm", "stim_on", "inhibition", "vagal")

CommandSource = Callable[[float, "PatientOutput | None"], Stimulation]


@dataclass
class SimRecord:
    """What a run kept: beats, some ground truth, command changes, markers, counters."""

    beat_t: np.ndarray
    rr_ms: np.ndarray
    truth_t: np.ndarray
    truth: dict[str, np.ndarray]
    commands: list[tuple[float, Stimulation]] = field(default_factory=list)
    ratings: list[tuple[float, str]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0


def simulate(patient: VirtualPatient, command_source: CommandSource, duration: float,
             tick_s: float = 1.0, *, label: str = "sim") -> SimRecord:
    """Run `patient` for `duration` s, asking `command_source(t, output)` every `tick_s`."""
    t_start = patient.t
    n_ticks = int(np.ceil(duration / tick_s - 1e-9))
    n_beats = int(duration / MIN_RR_S) + 3 * n_ticks + 3
    n_truth = int(duration / patient.truth_dt) + 2 * n_ticks + 2
    beat_t, rr_ms = np.empty(n_beats), np.empty(n_beats)
    truth_t = np.empty(n_truth)
    truth = {k: np.empty(n_truth) for k in KEPT_TRUTH}
    rec = SimRecord(beat_t, rr_ms, truth_t, truth)
    nb = nt = 0
    stim = command_source(t_start, None)
    rec.commands.append((t_start, stim))
    report_every = max(1, n_ticks // 10) if duration >= 6 * 3600 else 0
    wall0 = time.perf_counter()
    for k in range(1, n_ticks + 1):
        t_next = min(t_start + k * tick_s, t_start + duration)
        out = patient.advance(t_next, stim)
        b = len(out.beat_t)
        beat_t[nb:nb + b] = out.beat_t
        rr_ms[nb:nb + b] = out.rr_ms
        nb += b
        n = len(out.truth_t)
        truth_t[nt:nt + n] = out.truth_t
        for name, buf in truth.items():
            buf[nt:nt + n] = out.truth[name]
        nt += n
        if out.ratings:
            rec.ratings.extend(out.ratings)
        new = command_source(t_next, out)
        if new is not stim and new != stim:
            rec.commands.append((t_next, new))
        stim = new
        if report_every and k % report_every == 0:
            progress(f"{label}: {(t_next - t_start) / 3600:.1f} of {duration / 3600:.1f} h")
    rec.wall_seconds = time.perf_counter() - wall0
    rec.sim_seconds = patient.t - t_start
    rec.beat_t, rec.rr_ms, rec.truth_t = beat_t[:nb], rr_ms[:nb], truth_t[:nt]
    rec.truth = {k: v[:nt] for k, v in truth.items()}
    rec.counters = patient.counters
    return rec


def constant(stim: Stimulation) -> CommandSource:
    return lambda t, out: stim


def _tail_mean(x: np.ndarray, fraction: float = 0.25) -> float:
    return float(np.mean(x[int(len(x) * (1 - fraction)):])) if len(x) else float("nan")


# Settings a simulation uses unless its --config file sets them: a 1 Hz control tick (the
# slowest the loop allows, about 9,000x real time in lockstep; every safety path that acts
# within a tick, such as bradycardia, runs on beats in `feed` anyway) and Bayesian epochs of
# 15 min (relief builds up over minutes and wears off over 15 to 30 min).
SIM_DEFAULTS = {("loop", "tick_hz"): 1.0, ("policy", "bayes", "epoch_s"): 900.0}


def _given_keys(path) -> set[tuple[str, ...]]:
    """The (section, ..., key) paths a TOML file sets."""
    import tomllib
    with open(path, "rb") as fh:
        d = tomllib.load(fh)
    keys: set[tuple[str, ...]] = set()

    def walk(x, prefix):
        for k, v in x.items():
            if isinstance(v, dict):
                walk(v, (*prefix, k))
            else:
                keys.add((*prefix, k))
    walk(d, ())
    return keys


def sim_config(args) -> Config:
    path = getattr(args, "config", None)
    base = load_config(path) if path else default_config()
    given = _given_keys(path) if path else set()
    d = base.to_dict()
    d["policy"]["kind"] = args.policy
    for key, value in SIM_DEFAULTS.items():
        if key not in given:
            section = d
            for name in key[:-1]:
                section = section[name]
            section[key[-1]] = value
    return Config.from_dict(d)


class EpochTracker:
    """A command source around the lockstep controller that attributes the patient's own
    counts of side effects (discomfort reports, bradycardia, asystole) to the policy's epochs,
    i.e. to the setting each epoch tried. The patient's counters are ground truth the
    controller never sees; this is bookkeeping for the report only."""

    # bradycardia in sleep away from the trains is not a trial's doing (see controller.oracle)
    COUNTED = ("discomfort_events", "stim_bradycardia_events", "asystole_events")

    def __init__(self, controller: LockstepController, patient: VirtualPatient):
        self.controller = controller
        self.patient = patient
        self.policy = controller.loop.policy
        self._last = {k: 0 for k in self.COUNTED}
        self._epoch_mark = controller.loop._next_epoch
        self.trials: list[dict] = []
        self._open_trial(patient.t)

    def _open_trial(self, t: float) -> None:
        current = getattr(self.policy, "current", None)
        self.trials.append({"t_start": t, "params": dict(current) if current else None,
                            **{k: 0 for k in self.COUNTED}, "at": []})

    def __call__(self, t: float, out: PatientOutput | None) -> Stimulation:
        if out is not None:
            counters = self.patient.counters
            trial = self.trials[-1]
            for k in self.COUNTED:
                new = counters[k] - self._last[k]
                if new:
                    trial[k] += new
                    s = self.patient.stim
                    trial["at"].append({"frequency_Hz": s.frequency_Hz,
                                        "amplitude_mA": s.amplitude_mA,
                                        "pulse_width_us": s.pulse_width_us, "event": k})
                self._last[k] = counters[k]
        cmd = self.controller(t, out)
        mark = self.controller.loop._next_epoch
        if mark != self._epoch_mark:             # an epoch boundary passed in this tick
            self._epoch_mark = mark
            self._open_trial(t)
        return cmd

    def unsafe(self) -> list[dict]:
        """Epochs (with the setting the policy chose for them) in which the patient counted a
        side effect, and the settings in force when it happened."""
        return [{"t_start": tr["t_start"], "params": tr["params"],
                 **{k: tr[k] for k in self.COUNTED}, "at": tr["at"]}
                for tr in self.trials if any(tr[k] for k in self.COUNTED)]


def run_sim_command(args) -> dict:
    if args.days is not None:
        duration = args.days * 86400.0
    else:
        duration = (args.hours if args.hours is not None else 24.0) * 3600.0
    if not duration > 0:
        raise ValueError("duration must be > 0 (--hours or --days)")
    config = sim_config(args)
    ecg_fs = 500.0 if args.ecg else None
    warmup()
    patient = VirtualPatient(args.profile, args.seed, ecg_fs=ecg_fs)
    twin = VirtualPatient(args.profile, args.seed, ecg_fs=ecg_fs)
    controller = LockstepController(config, patient, use_ecg=args.ecg)
    tracker = EpochTracker(controller, patient) if args.policy == "bayes" else None
    stim_rec = simulate(patient, tracker or controller, duration, 1.0 / config.tick_hz,
                        label="stimulated")
    base_rec = simulate(twin, constant(OFF), duration, 3600.0, label="baseline twin")
    state_t, state = controller.out.state_array()
    col = {name: i for i, name in enumerate(STATE_CHANNELS)}
    quality = estimate_quality(state_t, state[:, col["pain_mean"]], state[:, col["pain_sd"]],
                               stim_rec.truth_t, stim_rec.truth["pain"],
                               skip_s=config.estimation.baseline_s)
    events = controller.out.events

    from controller.report import plot_sim_report
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"sim_{args.profile}_{args.policy}_seed{args.seed}.png"
    title = f"vnsloop sim: {args.profile}, policy {args.policy}, seed {args.seed}"
    plot_sim_report(stim_rec, base_rec, png, title=title)

    pain = float(np.mean(stim_rec.truth["pain"]))
    pain0 = float(np.mean(base_rec.truth["pain"]))
    c = stim_rec.counters
    extra = bayes_summary(args, config, controller, tracker, duration, pain0 - pain, pain0) \
        if tracker is not None else {}
    return {
        "command": "sim", "ok": True,
        "profile": args.profile, "policy": args.policy, "seed": args.seed,
        "sim_seconds": stim_rec.sim_seconds,
        "wall_seconds": stim_rec.wall_seconds,
        "realtime_factor": stim_rec.sim_seconds / max(stim_rec.wall_seconds, 1e-9),
        "pain_true_mean": pain,
        "pain_true_baseline_mean": pain0,
        "pain_reduction": pain0 - pain,
        "mood_change": _tail_mean(stim_rec.truth["mood"]) - _tail_mean(base_rec.truth["mood"]),
        "rescue_doses": c["rescue_doses"],
        "rescue_doses_baseline": base_rec.counters["rescue_doses"],
        "bradycardia_events": c["bradycardia_events"],
        "stim_bradycardia_events": c["stim_bradycardia_events"],
        "asystole_events": c["asystole_events"],
        "discomfort_events": c["discomfort_events"],
        "limit_violations": c["limit_violations"],
        "stim_duty": float(np.mean(stim_rec.truth["stim_on"])),
        "safety_interventions": sum(e.kind.startswith("safety.") for e in events),
        "commands": controller.loop.n_commands,
        **quality,
        "tick_p50_us": controller.loop.tick_stats_us()["p50"],
        "tick_p99_us": controller.loop.tick_stats_us()["p99"],
        "report": str(png),
        **extra,
    }


def bayes_summary(args, config: Config, controller: LockstepController, tracker: EpochTracker,
                  duration: float, pain_reduction: float, pain0: float, *,
                  oracle: bool = True) -> dict:
    """What `vnsloop sim --policy bayes` adds: the policy's pick, its epochs and whether it
    called the patient a non-responder, the side effects its trials caused, and the best safe
    fixed setting for this patient (the oracle) with the share of its relief this run got."""
    policy = controller.loop.policy
    unsafe = tracker.unsafe()
    res = {
        "best_params": policy.best_params,
        "epochs": sum(e.kind == "policy.decision" for e in controller.out.events),
        "epochs_scored": len(policy.history),
        "epoch_s": config.epoch_s,
        "non_responder": bool(policy.non_responder),
        "non_responder_at_s": next((e.t - controller.loop.t0 for e in controller.out.events
                                    if e.kind == "policy.non_responder"), None),
        "unsafe_trials": len(unsafe),
        "unsafe_trial_list": unsafe,
    }
    if oracle:
        from controller.oracle import oracle_for_config
        found = oracle_for_config(args.profile, args.seed, duration, config)
        best = found["pain_reduction"]
        res.update({
            "oracle_params": found["params"],
            "oracle_pain_reduction": best,
            "oracle_candidates": found["candidates"],
            "oracle_safe_candidates": found["safe_candidates"],
            "oracle_fraction": pain_reduction / best if best > 0 else float("nan"),
        })
        free = found["unsupervised"]
        if free is not None:
            # the same search with the patient alone, no supervisor: an upper bound
            res["oracle_unsupervised"] = dict(free, fraction=pain_reduction / free["pain_reduction"]
                                              if free["pain_reduction"] > 0 else float("nan"))
    return res
