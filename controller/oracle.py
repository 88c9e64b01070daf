"""The oracle a policy is measured against: the best *fixed* setting for one virtual patient.

A grid search over (frequency, amplitude) inside the policy's search envelope, each candidate
held as a constant command with the clinical duty cycle (30 s on / 5 min off) on a fresh
`VirtualPatient(profile, seed)` for the whole duration, from t = 0. Settings that made the
patient report discomfort, have bradycardia during stimulation or asystole are excluded: the
oracle must be safe too. Bradycardia in sleep away from the trains is not the setting's doing
(the unstimulated twin has it as well, and relief, which lowers sympathetic tone, makes it a
little more frequent): it does not exclude a setting. Patient-only runs are about 1e6 x real
time, so 50-odd candidates over 14 days take well under a minute.

A fixed setting reaches a patient only through the safety supervisor, whose interlock stops
stimulation at any beat under the bradycardia limit, stimulated or not, and locks it out for
minutes: a patient whose heart rate dips under it in sleep gets a fraction of the night's
stimulation under any policy. With the supervisor's limits, the best candidates are therefore
held through it too (`run_supervised`, a few seconds each) and the oracle is the best of
those; `vnsloop sim` and `vnsloop compare` measure policies against that oracle.

The score is the same as `vnsloop sim`'s `pain_reduction`: the mean true pain of the
unstimulated twin (same profile and seed) minus the mean true pain under the candidate, both
over every truth sample of the run. The model's random streams do not depend on the command
or on how time is chunked, so the twin is the same noise realisation throughout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from controller.safety import RECENT_BEATS, SafetyLimits, SafetySupervisor
from controller.types import Stimulation as ControllerStimulation
from sim.command import OFF, Stimulation
from sim.patient import VirtualPatient

# Frequencies roughly log-spaced over 5 to 30 Hz (the afferent tuning curve is log-normal in
# frequency), amplitudes every 0.25 mA (the clinical titration step).
DEFAULT_FREQUENCIES_HZ = (5.0, 7.0, 10.0, 14.0, 20.0, 25.0, 30.0)
DEFAULT_AMP_STEP_MA = 0.25
CHUNK_S = 6 * 3600.0
# Look-ahead of a supervised run: a chunk is re-run when it holds a stopping beat.
SUPERVISED_CHUNK_S = 60.0
RAMP_STEP_S = 1.0        # while the supervisor ramps the amplitude back up


def oracle_grid(freq_range=(5.0, 30.0), amp_max_mA: float = 2.5, *,
                frequencies=DEFAULT_FREQUENCIES_HZ, amp_min_mA: float = 0.75,
                amp_step_mA: float = DEFAULT_AMP_STEP_MA) -> list[tuple[float, float]]:
    """(frequency, amplitude) candidates inside the envelope; the range ends are always in."""
    lo, hi = float(freq_range[0]), float(freq_range[1])
    freqs = sorted({f for f in frequencies if lo <= f <= hi} | {lo, hi})
    amps = np.arange(amp_min_mA, amp_max_mA + 1e-9, amp_step_mA)
    if len(amps) == 0 or amps[-1] < amp_max_mA - 1e-9:
        amps = np.append(amps, amp_max_mA)
    return [(float(f), float(round(a, 6))) for f in freqs for a in amps]


@dataclass
class FixedRun:
    """One constant command held on a fresh patient."""

    stim: Stimulation
    pain_mean: float
    counters: dict[str, int] = field(default_factory=dict)

    def safe_against(self, twin: "FixedRun | None" = None) -> bool:
        """No discomfort report, no limit violation, no bradycardia during stimulation, and
        no more asystole than the unstimulated twin has on its own."""
        c = self.counters
        t = twin.counters if twin is not None else {}
        return (c.get("discomfort_events", 0) == 0 and c.get("limit_violations", 0) == 0
                and c.get("stim_bradycardia_events", 0) == 0
                and c.get("asystole_events", 0) <= t.get("asystole_events", 0))


def run_fixed(profile: str, seed: int, stim: Stimulation, duration: float,
              params=None) -> FixedRun:
    """Mean true pain (every truth sample, as `simulate` keeps them) and the patient's
    counters after holding `stim` for `duration` s."""
    p = VirtualPatient(profile, seed, params=params)
    total, n = 0.0, 0
    t_end = p.t + duration
    while p.t < t_end - 1e-9:
        out = p.advance(min(p.t + CHUNK_S, t_end), stim)
        pain = out.truth["pain"]
        total += float(pain.sum())
        n += len(pain)
    return FixedRun(stim, total / n if n else float("nan"), p.counters)


def run_supervised(profile: str, seed: int, stim: Stimulation, duration: float,
                   limits: SafetyLimits, params=None,
                   chunk_s: float = SUPERVISED_CHUNK_S) -> FixedRun:
    """`run_fixed`, with `stim` held through the safety supervisor, as every command is: a
    bradycardic beat or a pause stops stimulation at that beat and locks it out (longer while
    such beats go on), and the setting comes back up the supervisor's ramp. The patient runs
    in chunks; a chunk that holds a stopping beat is re-run from a checkpoint up to that beat.
    The counters add `interlock_stops` and `locked_out_s`."""
    p = VirtualPatient(profile, seed, params=params)
    sup = SafetySupervisor(limits, p.t)
    long_rr_ms = min(60000.0 / limits.bradycardia_hr_min_bpm, 1000.0 * limits.rr_pause_max_s)
    wanted = ControllerStimulation.from_array(stim.as_array())
    total, n, stops, locked_s = 0.0, 0, 0, 0.0
    held = (None, OFF)
    t_end = p.t + duration
    while p.t < t_end - 1e-9:
        t = p.t
        cmd, _ = sup.guard(t, wanted)
        if held[0] is not cmd.stim:
            held = (cmd.stim, Stimulation.from_sample(cmd.as_sample()))
        if t < sup.lockout_until:
            step = min(sup.lockout_until - t, CHUNK_S)
            locked_s += min(step, t_end - t)
        elif cmd.stim.amplitude_mA < wanted.amplitude_mA:
            step = RAMP_STEP_S
        else:
            step = chunk_s
        saved = p.checkpoint()
        out = p.advance(min(t + step, t_end), held[1])
        stop_t = _feed_beats(sup, out, long_rr_ms)
        if stop_t is not None and held[1].enabled:
            stops += 1
            p.restore(saved)
            out = p.advance(stop_t, held[1])
        pain = out.truth["pain"]
        total += float(pain.sum())
        n += len(pain)
    counters = dict(p.counters, interlock_stops=stops, locked_out_s=int(locked_s))
    return FixedRun(stim, total / n if n else float("nan"), counters)


def _feed_beats(sup: SafetySupervisor, out, long_rr_ms: float) -> float | None:
    """Give the supervisor a chunk's beats; the time of the first beat that stopped
    stimulation, if any. A chunk without a long interval cannot stop anything: only its last
    beats are fed, which leave the supervisor as all of them would (it keeps the last few
    normal intervals, to tell a compensatory pause after an ectopic beat)."""
    rr = out.rr_ms
    start = 0 if len(rr) and rr.max() >= long_rr_ms - 1e-9 else max(len(rr) - RECENT_BEATS, 0)
    for tb, r in zip(out.beat_t[start:].tolist(), rr[start:].tolist()):
        cmd, _ = sup.on_beat(tb, r)
        if cmd is not None:
            return tb
    return None


def baseline_pain(profile: str, seed: int, duration: float, params=None) -> float:
    """Mean true pain of the unstimulated twin."""
    return run_fixed(profile, seed, OFF, duration, params).pain_mean


def oracle_search(profile: str, seed: int, duration: float, *, freq_range=(5.0, 30.0),
                  amp_max_mA: float = 2.5, pulse_width_us: float = 250.0,
                  train_on_s: float = 30.0, train_off_s: float = 300.0,
                  grid=None, params=None, limits: SafetyLimits | None = None) -> dict:
    """The best safe fixed setting and its pain reduction.

    With `limits`, each candidate is held through a safety supervisor with those limits
    (`run_supervised`), as a policy's commands are: for a patient whose heart rate dips under
    the bradycardia limit in sleep, the interlock keeps stimulation off for hours a night,
    which no policy behind the supervisor can avoid. Candidates go in order of their
    unsupervised relief, which bounds the supervised one, until none left can beat the best;
    `unsupervised` then holds the best setting and relief without the supervisor.

    Returns `params` (frequency_Hz, amplitude_mA, pulse_width_us; None if no candidate was
    safe), `pain_reduction`, `baseline_pain`, `candidates` and `safe_candidates` (counts), and
    `grid`: one row per candidate (frequency_Hz, amplitude_mA, pain_reduction, safe).
    Pain reduction is against the unstimulated twin, run here (about a second per 14 days);
    its mean pain equals `vnsloop sim`'s twin's, whatever the chunking."""
    if grid is None:
        grid = oracle_grid(freq_range, amp_max_mA)
    twin = run_fixed(profile, seed, OFF, duration, params)
    pain0 = twin.pain_mean
    rows = []
    best = None
    for f, a in grid:
        stim = Stimulation(a, f, pulse_width_us, train_on_s, train_off_s, True)
        run = run_fixed(profile, seed, stim, duration, params)
        red = pain0 - run.pain_mean
        rows.append({"frequency_Hz": f, "amplitude_mA": a, "pain_reduction": red,
                     "safe": run.safe_against(twin), "discomfort_events": run.counters["discomfort_events"],
                     "bradycardia_events": run.counters["bradycardia_events"],
                     "stim_bradycardia_events": run.counters["stim_bradycardia_events"]})
        if rows[-1]["safe"] and (best is None or red > best["pain_reduction"]):
            best = rows[-1]
    unsupervised = best
    if limits is not None and best is not None:
        best = None
        for row in sorted((r for r in rows if r["safe"]), key=lambda r: -r["pain_reduction"]):
            if best is not None and row["pain_reduction"] <= best["pain_reduction"]:
                break
            stim = Stimulation(row["amplitude_mA"], row["frequency_Hz"], pulse_width_us,
                               train_on_s, train_off_s, True)
            run = run_supervised(profile, seed, stim, duration, limits, params)
            row.update(supervised_pain_reduction=pain0 - run.pain_mean,
                       interlock_stops=run.counters["interlock_stops"],
                       locked_out_s=run.counters["locked_out_s"])
            if best is None or row["supervised_pain_reduction"] > best["pain_reduction"]:
                best = dict(row, pain_reduction=row["supervised_pain_reduction"])
    return {
        "supervised": limits is not None,
        "unsupervised": None if unsupervised is None else {
            "params": {"frequency_Hz": unsupervised["frequency_Hz"],
                       "amplitude_mA": unsupervised["amplitude_mA"]},
            "pain_reduction": unsupervised["pain_reduction"]},
        "params": None if best is None else {"frequency_Hz": best["frequency_Hz"],
                                             "amplitude_mA": best["amplitude_mA"],
                                             "pulse_width_us": float(pulse_width_us)},
        "pain_reduction": float("nan") if best is None else best["pain_reduction"],
        "baseline_pain": pain0,
        "baseline_counters": twin.counters,
        "candidates": len(rows),
        "safe_candidates": sum(r["safe"] for r in rows),
        "grid": rows,
    }


def oracle_for_config(profile: str, seed: int, duration: float, config) -> dict:
    """`oracle_search` over the Bayesian policy's search envelope of `config` (a `Config`),
    each candidate held through a supervisor with the config's safety limits."""
    b = config.policy.bayes
    return oracle_search(profile, seed, duration,
                         freq_range=(b.frequency_min_Hz, b.frequency_max_Hz),
                         amp_max_mA=b.amplitude_max_mA, pulse_width_us=b.pulse_width_us,
                         limits=SafetyLimits.from_config(config))
