"""`vnsloop compare`: an in-silico study of policies over virtual cohorts.

For every (profile, policy, patient) the controller runs in lockstep with a virtual patient
(`run_one`, a picklable top-level function returning a small dict), next to the unstimulated
twin (same profile and seed). Patients are seeds seed..seed+N-1, drawn around each profile by
`sim.profiles.patient_params`. Runs go to local processes (`concurrent.futures`) or, with
`--scheduler ADDRESS`, to a Dask cluster; the same seeds give the same results either way.

Besides the controller's policies (open, pid, bayes), the policy `titration` is the clinical
up-titration schedule as a command source of its own: start at 0.25 mA and add 0.25 mA every
`step_days` days until the patient reports a side effect, then step back 0.25 mA and stay
(20 Hz, 250 us, 30 s on / 5 min off). It does not go through the controller (a clinic does not
either), so it is counted by the patient alone.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.summary import progress

DAY = 86400.0
CONTROLLER_POLICIES = ("open", "pid", "bayes")
POLICIES = (*CONTROLLER_POLICIES, "titration")
BENEFIT_NRS = 0.5          # days to benefit: daily mean true pain this far below the twin's


# ---- the clinical titration schedule -------------------------------------------------------

@dataclass
class TitrationSchedule:
    """Clinical up-titration as a `simulate()` command source."""

    start_mA: float = 0.25
    step_mA: float = 0.25
    step_days: float = 2.0
    max_mA: float = 3.5
    frequency_Hz: float = 20.0
    pulse_width_us: float = 250.0
    train_on_s: float = 30.0
    train_off_s: float = 300.0

    def __post_init__(self) -> None:
        self.amplitude = self.start_mA
        self.tolerated = False             # a side effect was reported: stay where we are
        self._t_next = None
        self.side_effects = 0

    def _stim(self):
        from sim.command import Stimulation
        return Stimulation(self.amplitude, self.frequency_Hz, self.pulse_width_us,
                           self.train_on_s, self.train_off_s, self.amplitude > 0)

    def __call__(self, t: float, out):
        if self._t_next is None:
            self._t_next = t + self.step_days * DAY
        if out is not None and any(text.startswith("SIDE_EFFECT") for _, text in out.ratings):
            self.side_effects += 1
            if not self.tolerated:
                self.tolerated = True
                self.amplitude = max(self.amplitude - self.step_mA, 0.0)
        if not self.tolerated and t >= self._t_next:
            self._t_next += self.step_days * DAY
            self.amplitude = min(self.amplitude + self.step_mA, self.max_mA)
        return self._stim()


# ---- one run -------------------------------------------------------------------------------

def _config(policy: str, overrides: dict | None):
    from controller.config import Config, default_config
    from controller.simulate import SIM_DEFAULTS
    d = default_config().to_dict()
    d["policy"]["kind"] = policy
    for key, value in SIM_DEFAULTS.items():
        section = d
        for name in key[:-1]:
            section = section[name]
        section[key[-1]] = value
    for dotted, value in (overrides or {}).items():
        *path, last = dotted.split(".")
        section = d
        for name in path:
            section = section[name]
        section[last] = value
    return Config.from_dict(d)


class _LeanLog:
    """An `OutputLog` that keeps events but not the state stream (1 Hz over weeks is large)."""

    def __init__(self) -> None:
        self.events = []

    def send_command(self, cmd) -> None:
        pass

    def send_state(self, est) -> None:
        pass

    def send_event(self, ev) -> None:
        self.events.append(ev)


def daily_means(t: np.ndarray, x: np.ndarray, t0: float, duration: float) -> np.ndarray:
    days = max(int(math.ceil(duration / DAY - 1e-9)), 1)
    idx = np.clip(((t - t0) // DAY).astype(np.int64), 0, days - 1)
    s = np.bincount(idx, weights=x, minlength=days)
    c = np.bincount(idx, minlength=days)
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / c


def run_one(task: dict) -> dict:
    """One (profile, policy, seed) run and its twin; a small picklable dict back.

    `task`: profile, policy, seed, days, and optionally `config` (dotted overrides of the sim
    config, e.g. {"policy.bayes.epoch_s": 600.0}) and `titration` (TitrationSchedule fields)."""
    from controller.lockstep import LockstepController
    from controller.simulate import EpochTracker, constant, simulate
    from sim.command import OFF
    from sim.patient import VirtualPatient, warmup

    profile, policy, seed = task["profile"], task["policy"], int(task["seed"])
    duration = float(task["days"]) * DAY
    wall0 = time.perf_counter()
    warmup()
    patient = VirtualPatient(profile, seed)
    twin = VirtualPatient(profile, seed)
    tracker = controller = None
    with contextlib.redirect_stderr(io.StringIO()):      # simulate's own progress lines
        if policy == "titration":
            source = TitrationSchedule(**task.get("titration", {}))
            tick_s = 60.0
        elif policy in CONTROLLER_POLICIES:
            config = _config(policy, task.get("config"))
            controller = LockstepController(config, patient, use_ecg=False)
            controller.out = controller.loop.out = _LeanLog()
            source = tracker = EpochTracker(controller, patient) if policy == "bayes" else None
            source = source or controller
            tick_s = 1.0 / config.tick_hz
        else:
            raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
        rec = simulate(patient, source, duration, tick_s)
        base = simulate(twin, constant(OFF), duration, 3600.0)
    t0 = rec.commands[0][0]
    pain = float(np.mean(rec.truth["pain"]))
    pain0 = float(np.mean(base.truth["pain"]))
    daily = daily_means(base.truth_t, base.truth["pain"], t0, duration) - \
        daily_means(rec.truth_t, rec.truth["pain"], t0, duration)
    hit = np.flatnonzero(daily >= BENEFIT_NRS)
    c = rec.counters
    res = {
        "profile": profile, "policy": policy, "seed": seed, "days": float(task["days"]),
        "pain_reduction": pain0 - pain,
        "pain_true_mean": pain, "pain_true_baseline_mean": pain0,
        "daily_reduction": [float(x) for x in daily],
        "days_to_benefit": int(hit[0]) + 1 if len(hit) else None,
        "discomfort_events": c["discomfort_events"],
        "bradycardia_events": c["bradycardia_events"],
        "stim_bradycardia_events": c["stim_bradycardia_events"],
        "asystole_events": c["asystole_events"],
        "rescue_doses": c["rescue_doses"],
        "rescue_doses_baseline": base.counters["rescue_doses"],
        "limit_violations": c["limit_violations"],
        "non_responder": None,
        "wall_seconds": time.perf_counter() - wall0,
    }
    if policy == "bayes":
        pol = controller.loop.policy
        res.update(non_responder=bool(pol.non_responder), best_params=pol.best_params,
                   epochs_scored=len(pol.history), unsafe_trials=len(tracker.unsafe()))
    if policy == "titration":
        res.update(final_amplitude_mA=source.amplitude, tolerated=source.tolerated)
    if task.get("oracle"):
        from controller.oracle import oracle_for_config
        found = oracle_for_config(profile, seed, duration, _config("bayes", task.get("config")))
        best = found["pain_reduction"]
        res.update(oracle_params=found["params"], oracle_pain_reduction=best,
                   oracle_fraction=res["pain_reduction"] / best if best > 0 else float("nan"))
    res["wall_seconds"] = time.perf_counter() - wall0
    return res


# ---- running many --------------------------------------------------------------------------

def tasks_for(profiles, policies, patients: int, days: float, seed: int = 0,
              config: dict | None = None, titration: dict | None = None) -> list[dict]:
    out = []
    for profile in profiles:
        for policy in policies:
            if policy not in POLICIES:
                raise ValueError(f"unknown policy {policy!r}; expected some of {POLICIES}")
            for s in range(seed, seed + patients):
                t = {"profile": profile, "policy": policy, "seed": s, "days": days}
                if config:
                    t["config"] = dict(config)
                if titration:
                    t["titration"] = dict(titration)
                out.append(t)
    return out


def _key(r: dict):
    return (r["profile"], r["policy"], r["seed"])


def _sorter(tasks: list[dict]):
    """Results in the order of the tasks (profile, then policy as asked, then seed)."""
    order = {_key(t): i for i, t in enumerate(tasks)}
    return lambda r: order.get(_key(r), len(order))


def run_tasks(tasks: list[dict], *, workers: int | None = None, scheduler: str | None = None,
              client=None) -> list[dict]:
    """Run every task locally (processes) or on a Dask cluster; results sorted by
    (profile, policy, seed), with progress on stderr as runs finish."""
    n = len(tasks)
    results: list[dict] = []
    t0 = time.perf_counter()

    def done(r: dict) -> None:
        results.append(r)
        progress(f"compare: {len(results)}/{n} done: {r['profile']} {r['policy']} seed "
                 f"{r['seed']}: pain -{r['pain_reduction']:.2f} NRS, "
                 f"{r['discomfort_events']} discomfort ({time.perf_counter() - t0:.0f} s)")

    if client is not None or scheduler:
        try:
            from dask.distributed import Client, as_completed
        except ImportError as e:
            raise RuntimeError("--scheduler needs dask.distributed: pip install "
                               "'dask[distributed]' (or the project's 'dask' extra)") from e
        own = client is None
        client = client or Client(scheduler)
        try:
            futures = client.map(run_one, tasks, pure=False)
            for fut in as_completed(futures):
                done(fut.result())
        finally:
            if own:
                client.close()
    elif workers == 1:
        for t in tasks:
            done(run_one(t))
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed as cf_completed
        workers = workers or os.cpu_count() or 1
        with ProcessPoolExecutor(max_workers=min(workers, max(n, 1))) as pool:
            for fut in cf_completed([pool.submit(run_one, t) for t in tasks]):
                done(fut.result())
    return sorted(results, key=_sorter(tasks))


def _mean_sd(x: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in x if v is not None], float)
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(results: list[dict]) -> list[dict]:
    """One row per (profile, policy), in the order they first appear."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["profile"], r["policy"]), []).append(r)
    rows = []
    for (profile, policy), rs in groups.items():
        m, sd = _mean_sd([r["pain_reduction"] for r in rs])
        benefit = [r["days_to_benefit"] for r in rs if r["days_to_benefit"] is not None]
        rows.append({
            "profile": profile, "policy": policy, "patients": len(rs),
            "pain_reduction_mean": m, "pain_reduction_sd": sd,
            "days_to_benefit_median": float(np.median(benefit)) if benefit else None,
            "benefit_reached": len(benefit),
            "discomfort_events": sum(r["discomfort_events"] for r in rs),
            "bradycardia_events": sum(r["bradycardia_events"] for r in rs),
            "stim_bradycardia_events": sum(r["stim_bradycardia_events"] for r in rs),
            "asystole_events": sum(r["asystole_events"] for r in rs),
            "rescue_doses": sum(r["rescue_doses"] for r in rs),
            "rescue_doses_baseline": sum(r["rescue_doses_baseline"] for r in rs),
            "non_responders_found": (sum(bool(r["non_responder"]) for r in rs)
                                     if policy == "bayes" else None),
            "limit_violations": sum(r["limit_violations"] for r in rs),
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    head = ("profile", "policy", "n", "pain red. (NRS)", "days to benefit", "discomf.",
            "brady (in trains)", "rescue (twin)", "non-resp.", "limit viol.")
    lines = []
    for r in rows:
        dtb = r["days_to_benefit_median"]
        lines.append((r["profile"], r["policy"], str(r["patients"]),
                      f"{r['pain_reduction_mean']:.2f} ± {r['pain_reduction_sd']:.2f}",
                      f"{dtb:g} ({r['benefit_reached']}/{r['patients']})" if dtb is not None
                      else f"- (0/{r['patients']})",
                      str(r["discomfort_events"]),
                      f"{r['bradycardia_events']} ({r['stim_bradycardia_events']})",
                      f"{r['rescue_doses']} ({r['rescue_doses_baseline']})",
                      "-" if r["non_responders_found"] is None else str(r["non_responders_found"]),
                      str(r["limit_violations"])))
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*l) for l in lines)])


def plot_compare(results: list[dict], path) -> Path:
    """Pain reduction by policy, one panel per profile: a box per policy with the patients
    as jittered points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(dict.fromkeys(r["profile"] for r in results))
    policies = list(dict.fromkeys(r["policy"] for r in results))
    fig, axes = plt.subplots(1, len(profiles), figsize=(1.0 + 1.6 * len(policies) * len(profiles), 4.2),
                             sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    for ax, profile in zip(axes[0], profiles):
        data = [[r["pain_reduction"] for r in results
                 if r["profile"] == profile and r["policy"] == p] for p in policies]
        ax.boxplot(data, widths=0.5, showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=14, color=f"C{i - 1}",
                       zorder=3, alpha=0.8)
        ax.set_xticks(range(1, len(policies) + 1), policies)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_title(profile)
    axes[0][0].set_ylabel("pain reduction vs unstimulated twin (NRS)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_compare_command(args) -> dict:
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.patients < 1:
        raise ValueError("--patients must be >= 1")
    if not args.days > 0:
        raise ValueError("--days must be > 0")
    from sim.profiles import PROFILES
    for p in profiles:
        if p not in PROFILES:
            raise ValueError(f"unknown profile {p!r}; choose from {sorted(PROFILES)}")
    tasks = tasks_for(profiles, policies, args.patients, args.days, args.seed)
    progress(f"compare: {len(tasks)} runs of {args.days:g} days"
             + (f" on Dask at {args.scheduler}" if args.scheduler else
                f" on {args.workers or os.cpu_count()} local processes"))
    wall0 = time.perf_counter()
    results = run_tasks(tasks, workers=args.workers, scheduler=args.scheduler)
    rows = summarise(results)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_compare(results, out_dir / f"compare_{'_'.join(profiles)}_seed{args.seed}.png")
    print(format_rows(rows))
    return {
        "command": "compare", "ok": True,
        "profiles": profiles, "policies": policies, "patients": args.patients,
        "days": args.days, "seed": args.seed, "runs": len(results),
        "wall_seconds": time.perf_counter() - wall0,
        "limit_violations": sum(r["limit_violations"] for r in rows),
        "rows": rows,
        "results": results,
        "plot": str(png),
        "_table_keys": ["runs", "wall_seconds", "limit_violations", "plot"],
    }
