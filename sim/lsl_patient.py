"""The virtual patient in real time over LSL, as a rig's amplifiers and generator would appear.

Outlets (PREFIX-ECG, -RR, -Resp, -EDA, -Ratings, and the ground truth PREFIX-Truth that only
tests and the demo report read) carry the patient's streams with explicit time stamps:
simulated time is mapped onto `pylsl.local_clock()` at start, and the patient is advanced in
small steps in real time. The patient's generator listens to `vnsloop-command` (bound by
name and, if given, source_id), checks every command against the hard envelope, applies it,
and falls back to stimulation off by itself when no command has arrived for 2 s.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time

import numpy as np
import pylsl
from pylsl.util import LostError

from sim.command import OFF, Stimulation
from sim.ecg_synth import warmup as ecg_warmup
from sim.envelope import check_command
from sim.model import TRUTH_NAMES
from sim.patient import VirtualPatient, warmup

COMMAND_STREAM = "vnsloop-command"
COMMAND_CHANNELS = 7
TRUTH_EXTRA = ("amplitude_mA", "frequency_Hz", "pulse_width_us", "enabled")
_TRUTH_UNITS = {"pain": "NRS", "hr_bpm": "bpm", "resp_rate_bpm": "breaths/min",
                "amplitude_mA": "mA", "frequency_Hz": "Hz", "pulse_width_us": "us"}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _info(name: str, type_: str, labels: tuple[str, ...], units: dict[str, str] | str,
          rate: float, fmt: int, source_id: str) -> pylsl.StreamInfo:
    info = pylsl.StreamInfo(name, type_, len(labels), rate, fmt, source_id)
    chans = info.desc().append_child("channels")
    for label in labels:
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
        unit = units if isinstance(units, str) else units.get(label, "a.u.")
        ch.append_child_value("unit", unit)
        ch.append_child_value("type", type_)
    info.desc().append_child_value("manufacturer", "vnsloop virtual patient")
    return info


class LSLPatient:
    """Runs `patient` in real time behind LSL outlets named PREFIX-*.

    `start()` creates the outlets and pins simulated time to the LSL clock; each `step()`
    reads commands, advances the patient to now and pushes what it emitted; `close()` ends
    it. `run()` does all three until `seconds` have passed or `stop` is set.
    """

    def __init__(self, patient: VirtualPatient, prefix: str = "vnsloop-patient", *,
                 command_source_id: str | None = None, step_s: float = 0.02,
                 watchdog_s: float = 2.0, ecg_fs: float | None = None, log=_progress):
        self.patient = patient
        self.prefix = prefix
        self.command_source_id = command_source_id
        self.step_s = float(step_s)
        self.watchdog_s = float(watchdog_s)
        if ecg_fs is None:                     # the rate `patient` was built with; 0: RR only
            ecg_fs = getattr(patient, "ecg_fs", None)
        self.ecg_fs = float(ecg_fs or 0.0)
        self.log = log
        self.counts = {"commands_received": 0, "limit_violations": 0, "fallbacks_to_off": 0,
                       "beats_sent": 0, "ecg_samples": 0, "ratings_sent": 0,
                       "command_stream_bindings": 0}
        self.violations_by_rule: dict[str, int] = {}
        self._stim = OFF
        self._last_cmd: float | None = None   # local_clock of the last command
        self._watchdog_tripped = False
        self._inlet: pylsl.StreamInlet | None = None
        self._inlet_uid = ""
        self._dead: set[str] = set()          # uids of command streams that went away
        self._resolver: pylsl.ContinuousResolver | None = None
        self._next_resolve = 0.0
        self._ambiguous_warned = False
        self._outlets: dict[str, pylsl.StreamOutlet] = {}
        self._offset = 0.0
        self._t_start = 0.0
        self._sim_t0 = 0.0
        self._truth_sum: dict[str, float] = {}
        self._truth_n = 0
        self._pain_max = -math.inf

    @property
    def source_ids(self) -> dict[str, str]:
        base = f"{self.prefix}-seed{self.patient.seed}"
        kinds = ("ECG", "RR", "Resp", "EDA", "Ratings", "Truth")
        return {f"{self.prefix}-{k}": f"{base}-{k}" for k in kinds}

    @property
    def stim(self) -> Stimulation:
        return self._stim

    # --- lifecycle ---

    def start(self) -> None:
        p, sid = self.patient, self.source_ids
        pre = self.prefix
        irr = pylsl.IRREGULAR_RATE
        f32, f64, txt = pylsl.cf_float32, pylsl.cf_double64, pylsl.cf_string
        specs = {}
        if self.ecg_fs:
            specs["ECG"] = ("ECG", ("ECG",), "mV", self.ecg_fs, f32)
        specs.update({
            "RR": ("RR", ("RR",), "ms", irr, f32),
            "Resp": ("Resp", ("Resp",), "a.u.", p.resp_fs, f32),
            "EDA": ("EDA", ("EDA",), "uS", p.eda_fs, f32),
            "Ratings": ("Markers", ("rating",), "NRS", irr, txt),
            "Truth": ("Truth", TRUTH_NAMES + TRUTH_EXTRA, _TRUTH_UNITS, 1.0 / p.truth_dt, f64),
        })
        for kind, (type_, labels, units, rate, fmt) in specs.items():
            name = f"{pre}-{kind}"
            self._outlets[kind] = pylsl.StreamOutlet(
                _info(name, type_, labels, units, rate, fmt, sid[name]))
        pred = f"name='{COMMAND_STREAM}'"
        if self.command_source_id:
            pred += f" and source_id='{self.command_source_id}'"
        self._resolver = pylsl.ContinuousResolver(pred=pred)
        now = pylsl.local_clock()
        self._offset = now - p.t
        self._t_start = now
        self._sim_t0 = p.t
        self.log(f"patient {p.profile} seed {p.seed}: streams {pre}-* up, "
                 f"listening to {COMMAND_STREAM}"
                 + (f" ({self.command_source_id})" if self.command_source_id else ""))

    def close(self) -> None:
        # Inlets go before outlets, and nothing is left for the LSL threads to touch.
        self._inlet = None
        self._resolver = None
        self._outlets.clear()

    def run(self, seconds: float | None = None, stop: threading.Event | None = None,
            progress_every_s: float = 10.0) -> dict:
        self.start()
        try:
            end = math.inf if seconds is None else self._t_start + seconds
            next_step = self._t_start
            next_log = self._t_start + progress_every_s
            while not (stop is not None and stop.is_set()):
                now = pylsl.local_clock()
                if now >= end:
                    break
                self.step(min(now, end))
                if now >= next_log:
                    self.log(self._progress_line(now))
                    next_log += progress_every_s
                next_step += self.step_s
                delay = min(next_step, end) - pylsl.local_clock()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_step = pylsl.local_clock()   # fell behind: no catch-up burst
            self.step(min(pylsl.local_clock(), end))
        finally:
            self.close()
        return self.summary()

    # --- one step ---

    def step(self, now: float | None = None) -> None:
        now = pylsl.local_clock() if now is None else now
        self._read_commands(now)
        if (self._last_cmd is not None and not self._watchdog_tripped
                and now - self._last_cmd > self.watchdog_s):
            self._watchdog_tripped = True
            self.counts["fallbacks_to_off"] += 1
            self._stim = OFF
            self.log(f"no command for {self.watchdog_s:g} s: stimulation off")
        t_end = now - self._offset
        if t_end > self.patient.t:
            self._push(self.patient.advance(t_end, self._stim))

    def _read_commands(self, now: float) -> None:
        if self._inlet is None:
            if now >= self._next_resolve:
                self._next_resolve = now + 0.25
                self._bind()
            if self._inlet is None:
                return
        try:
            samples, _ = self._inlet.pull_chunk(timeout=0.0)
        except LostError:
            self.log(f"{COMMAND_STREAM} lost: resolving again")
            self._dead.add(self._inlet_uid)
            self._inlet = None
            return
        for s in samples:
            stim = Stimulation.from_sample(s)
            self.counts["commands_received"] += 1
            bad = check_command(stim)
            if bad:
                self.counts["limit_violations"] += 1
                for rule in bad:
                    self.violations_by_rule[rule] = self.violations_by_rule.get(rule, 0) + 1
            # Out-of-range settings reach the patient (their harm is what tests look for);
            # non-numbers cannot, so the generator switches off instead.
            self._stim = stim if all(math.isfinite(v) for v in s[1:]) else OFF
            self._last_cmd = now
            self._watchdog_tripped = False

    def _bind(self) -> None:
        found = [i for i in self._resolver.results()
                 if i.uid() not in self._dead and i.channel_count() == COMMAND_CHANNELS]
        if not found:
            return
        sids = {i.source_id() for i in found}
        if len(found) > 1 and (len(sids) > 1 or "" in sids):
            # Two controllers' command streams: like the controller, refuse to guess.
            if not self._ambiguous_warned:
                self.log(f"{len(found)} {COMMAND_STREAM} streams: not binding "
                         "(pin one with --command-source-id)")
                self._ambiguous_warned = True
            return
        info = max(found, key=lambda i: i.created_at())   # a restarted controller: the newest
        # No open_stream(): the first pull connects in the background, so a step never blocks.
        self._inlet = pylsl.StreamInlet(info, max_buflen=10, recover=False)
        self._inlet_uid = info.uid()
        self._ambiguous_warned = False
        self.counts["command_stream_bindings"] += 1
        self.log(f"bound to {COMMAND_STREAM} ({info.source_id()})")

    def _push(self, out) -> None:
        o, off = self._outlets, self._offset
        if "ECG" in o and len(out.ecg):
            o["ECG"].push_chunk(out.ecg.astype(np.float32).reshape(-1, 1),
                                (out.ecg_t + off).tolist())
            self.counts["ecg_samples"] += len(out.ecg)
        if len(out.beat_t):
            o["RR"].push_chunk(out.rr_ms.astype(np.float32).reshape(-1, 1),
                               (out.beat_t + off).tolist())
            self.counts["beats_sent"] += len(out.beat_t)
        if len(out.resp):
            o["Resp"].push_chunk(out.resp.astype(np.float32).reshape(-1, 1),
                                 (out.resp_t + off).tolist())
        if len(out.eda):
            o["EDA"].push_chunk(out.eda.astype(np.float32).reshape(-1, 1),
                                (out.eda_t + off).tolist())
        for t, text in out.ratings:
            o["Ratings"].push_sample([text], t + off)
            self.counts["ratings_sent"] += 1
        n = len(out.truth_t)
        if n:
            s = self._stim
            extra = [s.amplitude_mA, s.frequency_Hz, s.pulse_width_us, float(s.enabled)]
            rows = np.column_stack([out.truth[k] for k in TRUTH_NAMES]
                                   + [np.full(n, v) for v in extra])
            o["Truth"].push_chunk(rows, (out.truth_t + off).tolist())
            for k in ("pain", "vagal", "hr_bpm", "stim_on", "mood"):
                self._truth_sum[k] = self._truth_sum.get(k, 0.0) + float(out.truth[k].sum())
            self._pain_max = max(self._pain_max, float(out.truth["pain"].max()))
            self._truth_n += n

    # --- reporting ---

    def _progress_line(self, now: float) -> str:
        c = self.counts
        return (f"t={now - self._t_start:.0f} s  beats {c['beats_sent']}  commands "
                f"{c['commands_received']}  violations {c['limit_violations']}  "
                f"fallbacks {c['fallbacks_to_off']}  stim {'on' if self._stim.enabled else 'off'}")

    def summary(self) -> dict:
        mean = {k: v / self._truth_n for k, v in self._truth_sum.items()}
        return {
            "seconds": round(self.patient.t - self._sim_t0, 3),   # simulated = real time
            **self.counts,
            "violations_by_rule": dict(self.violations_by_rule),
            "pain_mean": mean.get("pain", float("nan")),
            "pain_max": self._pain_max if self._truth_n else float("nan"),
            "vagal_mean": mean.get("vagal", float("nan")),
            "hr_mean_bpm": mean.get("hr_bpm", float("nan")),
            "mood_mean": mean.get("mood", float("nan")),
            "stim_on_fraction": mean.get("stim_on", float("nan")),
            "patient_counters": self.patient.counters,
            "streams": self.source_ids,
        }


def run_patient_command(args) -> dict:
    """`vnsloop patient`: the virtual patient in real time until --seconds, Ctrl-C or SIGTERM."""
    if args.ecg_fs and not 125.0 <= args.ecg_fs <= 1000.0:
        raise ValueError(f"--ecg-fs {args.ecg_fs} is outside 125 to 1000 Hz (0: RR only)")
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda signum, frame: stop.set())
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _progress("compiling the patient model ...")
        warmup()
        if args.ecg_fs:
            ecg_warmup()
        patient = VirtualPatient(args.profile, args.seed, ecg_fs=args.ecg_fs or None)
        lp = LSLPatient(patient, args.prefix, ecg_fs=args.ecg_fs,
                        command_source_id=args.command_source_id)
        result = lp.run(args.seconds, stop)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    _progress(f"patient stopped after {result['seconds']:.1f} s")
    return {"command": "patient", "ok": True, "profile": args.profile, "seed": args.seed,
            "prefix": args.prefix, **result}
