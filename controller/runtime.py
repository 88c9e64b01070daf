"""The control loop: inputs in, guarded commands out.

`ControlLoop` is clock-agnostic: it is fed chunks and ticked at times taken from the data
clock. The same object runs on a rig (LSL inlets, real time), in lockstep with the virtual
patient and over a recorded XDF file (virtual clock), so there is one code path to trust.

Paths, fastest first:
- operator STOP and a bradycardic beat go straight to the supervisor and out, in `feed`
  (and `operator`, for the operator's own thread on a rig);
- an exhalation onset opens a respiratory-gated burst, also in `feed`;
- the control tick estimates the state, asks the policy, guards and sends.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from controller.config import Config
from controller.estimation import EstimationSettings, StateEstimator
from controller.outlets import OutputLog
from controller.policies import make_policy
from controller.safety import SafetyLimits, SafetySupervisor
from controller.types import INPUT_ROLES, Command, Stimulation, StateEstimate
from signals.chunk import Chunk
from signals.ecg import RPeakDetector
from signals.eda import EDAProcessor
from signals.events import Event
from signals.hrv import StreamingHRV
from signals.ratings import classify_marker, parse_rating
from signals.resp import RespirationProcessor
from signals.rr import RRCorrector


class TimestampRing:
    """Recent sample time stamps by absolute sample index, so that a beat confirmed a few
    chunks after its sample can still be given the time the source stamped on it."""

    def __init__(self, fs: float, seconds: float = 4.0):
        self.fs = fs
        self.buf = np.zeros(max(64, int(fs * seconds)))
        self.count = 0

    def push(self, ts: np.ndarray) -> None:
        n, size = len(ts), len(self.buf)
        if n > size:   # a chunk longer than the ring keeps only its tail
            self.count += n - size
            ts, n = ts[n - size:], size
        i = self.count % size
        k = min(n, size - i)
        self.buf[i:i + k] = ts[:k]
        if k < n:
            self.buf[:n - k] = ts[k:]
        self.count += n

    def time_of(self, index: int) -> float:
        size = len(self.buf)
        if index < self.count - size:
            # older than the ring: extrapolate back at the nominal rate
            return self.buf[(self.count - size) % size] - (self.count - size - index) / self.fs
        return float(self.buf[index % size])


class ControlLoop:
    def __init__(self, config: Config, outputs: OutputLog, t0: float):
        self.config = config
        self.out = outputs
        self.t0 = t0
        self.supervisor = SafetySupervisor(SafetyLimits.from_config(config), t0)
        self.policy = make_policy(config.policy.kind, getattr(config.policy, config.policy.kind))
        # A policy that searches settings keeps its trials under the envelope's caps (charge
        # limit, regions marked unsafe by side effects) at every setting, not only the current.
        bind = getattr(self.policy, "bind_amplitude_ceiling", None)
        if bind is not None:
            bind(self.supervisor.amplitude_ceiling)
        self.policy.reset(t0)
        self.estimator = StateEstimator(EstimationSettings(**config.estimation_kwargs()), t0)
        self._dosed: Stimulation | None = None
        # The spectrum feeds a pain observation made every few minutes; recomputing it every
        # few seconds would dominate the tick.
        self.hrv = StreamingHRV(freq_every_s=30.0)
        self.rr_corrector = RRCorrector()
        self._ecg: RPeakDetector | None = None
        self._ecg_times: TimestampRing | None = None
        self._resp: RespirationProcessor | None = None
        self._eda: EDAProcessor | None = None
        self.epoch_s = config.epoch_s
        self._next_epoch = t0 + self.epoch_s
        self.state = StateEstimate(t=t0)
        self.fed_t: dict[str, float] = {}
        # The loop's start defines its baseline period: a replay needs it.
        self.event(Event(t0, "loop.started", "runtime", "control loop started",
                          {"t0": t0, "policy": config.policy.kind, "tick_hz": config.tick_hz}))
        self.proposal: Stimulation = Stimulation()
        self.last_beat_t: float | None = None
        self.beats = 0
        self.gate_until = -math.inf
        self.gating = config.gating.enabled
        self.burst_s = config.gating.burst_s
        self.exhalation_onsets: list[float] = []
        self.gate_bursts: list[float] = []
        self.tick_compute_ns: list[int] = []
        self.n_commands = 0

    # ---- sample and beat paths -------------------------------------------------------------
    def feed(self, chunk: Chunk) -> None:
        ts = chunk.timestamps
        if len(ts) == 0:
            return
        role = chunk.role
        self._note_fed(role, float(ts[0]), float(ts[-1]))
        if role == "ecg":
            self._feed_ecg(chunk)
        elif role == "rr":
            self._to_hrv([t for t, rr in zip(ts.tolist(), chunk.data[:, 0].tolist())
                          if self._beat(t, rr)])
        elif role == "resp":
            self._feed_resp(chunk)
        elif role == "eda":
            if self._eda is None:
                self.set_input_rate("eda", self._estimated_fs(chunk))
            for ev in self._eda.process(chunk.data[:, 0], ts):
                self.event(ev)
                if ev.kind == "eda.scr":
                    self.estimator.scr(ev.data["onset_t"], ev.data["amplitude_uS"])
        elif role in ("ratings", "operator"):
            for t, text in zip(chunk.timestamps, chunk.data):
                self._marker(float(t), text if isinstance(text, str) else str(text[0]))

    def operator(self, t: float, text: str) -> None:
        """One operator marker, from the thread that waits on the operator stream on a rig: a
        STOP leaves before the bookkeeping that `feed` does first for other inputs."""
        self._marker(t, text)
        self._note_fed("operator", t, t)

    def _note_fed(self, role: str, first: float, last: float) -> None:
        fed = self.fed_t.get(role)
        if fed is None:
            # Tells a replay where this input began for the live loop.
            self.event(Event(first, "input.started", role, f"first {role} sample fed",
                             {"first_t": first}))
            fed = -math.inf
        self.fed_t[role] = max(fed, last)

    @staticmethod
    def _estimated_fs(chunk: Chunk) -> float:
        """For an input whose header gave no rate (`set_input_rate` was not called)."""
        ts = chunk.timestamps
        return float((len(ts) - 1) / (ts[-1] - ts[0])) if len(ts) > 1 and ts[-1] > ts[0] else 250.0

    def set_input_rate(self, role: str, fs: float) -> None:
        """Nominal rates from the stream headers; processors reset when a rate changes."""
        if role == "ecg" and (self._ecg is None or self._ecg.fs != fs):
            self._ecg = RPeakDetector(fs)
            self._ecg_times = TimestampRing(fs)
        elif role == "resp" and (self._resp is None or self._resp.fs != fs):
            self._resp = RespirationProcessor(fs)
        elif role == "eda" and (self._eda is None or self._eda.fs != fs):
            self._eda = EDAProcessor(fs)

    def _feed_ecg(self, chunk: Chunk) -> None:
        if self._ecg is None:
            self.set_input_rate("ecg", self._estimated_fs(chunk))
        x = chunk.data[:, 0]
        self._ecg_times.push(chunk.timestamps)
        peaks = self._ecg.process(x)
        if len(peaks) == 0:
            return
        beats = []
        for idx in peaks.tolist():
            t = self._ecg_times.time_of(idx)
            rr = (t - self.last_beat_t) * 1000.0 if self.last_beat_t is not None else float("nan")
            if self._beat(t, rr):
                beats.append(t)
        self._to_hrv(beats)

    def _beat(self, t: float, rr_ms: float) -> bool:
        """The safety side of a beat, at once; False for a beat not after the last one."""
        if self.last_beat_t is not None and t <= self.last_beat_t:
            return False
        self.last_beat_t = t
        self.beats += 1
        quality = self._ecg.quality if self._ecg is not None else 1.0
        self.supervisor.on_signal(t, t, quality)
        if math.isfinite(rr_ms):
            self.emit(*self.supervisor.on_beat(t, rr_ms))
        return True

    def _to_hrv(self, beat_times: list[float]) -> None:
        """The beats of one chunk through artefact correction into the HRV window, in one call
        (the corrector is independent of the supervisor, so the order between them is free)."""
        if not beat_times:
            return
        ts, rr, _flags = self.rr_corrector.process(np.array(beat_times))
        for tb, r in zip(ts.tolist(), rr.tolist()):
            self.hrv.update(tb, r)

    def _feed_resp(self, chunk: Chunk) -> None:
        if self._resp is None:
            self.set_input_rate("resp", self._estimated_fs(chunk))
        for t_on in self._resp.process(chunk.data[:, 0], chunk.timestamps):
            self.exhalation_onsets.append(t_on)
            if self.gating:
                self._gate(float(chunk.timestamps[-1]))

    def _gate(self, t: float) -> None:
        """A RAVANS-style burst: stimulate for burst_s from the exhalation onset just found."""
        if not self.proposal.enabled or self.proposal.amplitude_mA <= 0:
            return
        self.gate_until = t + self.burst_s
        self.gate_bursts.append(t)
        self._guard_and_send(t, self._gated(self.proposal, True))

    def _gated(self, stim: Stimulation, on: bool) -> Stimulation:
        return replace(stim, enabled=on, train_on_s=self.burst_s,
                       train_off_s=max(self.burst_s, stim.train_off_s if on else self.burst_s))

    def _marker(self, t: float, text: str) -> None:
        if text == "STOP":   # the one marker that must not wait for parsing
            self._operator_stop(t)
            return
        kind, payload = classify_marker(text)
        if kind == "operator" and payload == "STOP":
            self._operator_stop(t)
        elif kind == "operator":
            self.emit(*self.supervisor.on_operator(t, payload))
        elif kind == "rating":
            value, ev = parse_rating(text, t, "ratings")
            if ev is not None:
                self.event(ev)
            if value is not None:
                self.estimator.rating(t, value)
        elif kind == "side_effect":
            for ev in self.supervisor.on_side_effect(t, str(payload)):
                self.event(ev)
            self.policy.notify_unsafe(t, self.supervisor.last.stim, f"side effect: {payload}")
        else:
            self.event(Event(t, "marker.unknown", "ratings", f"unreadable marker {text!r}"))

    def _operator_stop(self, t: float) -> None:
        cmd = self.supervisor.operator_stop(t)
        self.emit(cmd, [])
        self.event(self.supervisor.operator_stop_event(cmd))

    # ---- control tick ----------------------------------------------------------------------
    def tick(self, t: float) -> Command:
        start = time.perf_counter_ns()
        quality = self._ecg.quality if self._ecg is not None else 1.0
        self.supervisor.on_signal(t, self.last_beat_t, quality)
        feats = self.hrv.features()
        eda = self._eda.tonic if self._eda is not None else float("nan")
        resp = self._resp.rate_bpm if self._resp is not None else float("nan")
        self.state = self.estimator.update(t, feats, eda, resp, quality)
        fed = self.fed_t
        self.state.fed_t = tuple([fed.get(r, math.nan) for r in INPUT_ROLES])
        if t >= self._next_epoch:
            self._next_epoch += self.epoch_s
            for ev in self.policy.on_epoch(t, self.state):
                self.event(ev)
        # Policies that adapt amplitude work inside the envelope's current cap (charge limit,
        # regions marked unsafe by side effects), so that the supervisor need not clamp them.
        set_limit = getattr(self.policy, "set_amplitude_limit", None)
        if set_limit is not None:
            set_limit(self.supervisor.amplitude_ceiling(self.proposal.frequency_Hz,
                                                        self.proposal.pulse_width_us))
        self.proposal = self.policy.decide(t, self.state, self.supervisor.last.stim)
        stim = self.proposal
        if self.gating:
            stim = self._gated(stim, t < self.gate_until and stim.enabled)
        cmd = self._guard_and_send(t, stim)
        self.out.send_state(self.state)
        self.tick_compute_ns.append(time.perf_counter_ns() - start)
        return cmd

    def _guard_and_send(self, t: float, stim: Stimulation) -> Command:
        cmd, evs = self.supervisor.guard(t, stim)
        self.emit(cmd, evs)
        return cmd

    def emit(self, cmd: Command | None, events: list[Event]) -> None:
        if cmd is not None:
            self.out.send_command(cmd)
            self.n_commands += 1
            # an unchanged setting is re-sent as the same object: the estimator has it already
            if cmd.stim is not self._dosed:
                self._dosed = cmd.stim
                self.estimator.stimulation(cmd.t, cmd.stim)
        for ev in events:
            self.event(ev)

    def event(self, ev: Event) -> None:
        self.out.send_event(ev)

    @staticmethod
    def warm_up(config: Config, input_rates: dict[str, float]) -> None:
        """Compile (or load from numba's cache) every kernel the loop uses, on a throwaway loop
        fed synthetic inputs, so that no tick of the real loop waits for the JIT."""
        loop = ControlLoop(config, OutputLog(), 0.0)
        t = np.arange(0.0, 8.0, 1.0 / 250.0)
        for role, fs in input_rates.items():
            if fs > 0 and role in ("ecg", "resp", "eda"):
                loop.set_input_rate(role, fs)
        beats = np.arange(0.8, 8.0, 0.8)
        ecg = np.zeros_like(t)
        ecg[np.searchsorted(t, beats)] = 1.0
        fs_ecg = input_rates.get("ecg", 250.0) or 250.0
        te = np.arange(0.0, 8.0, 1.0 / fs_ecg)
        loop.feed(Chunk("ecg", np.interp(te, t, ecg)[:, None], te))
        loop.feed(Chunk("rr", np.full((len(beats), 1), 800.0), beats + 8.0))
        for role in ("resp", "eda"):
            fs = input_rates.get(role, 25.0) or 25.0
            tr = np.arange(0.0, 8.0, 1.0 / fs)
            loop.feed(Chunk(role, np.sin(tr)[:, None] + 2.0, tr))
        loop.feed(Chunk("ratings", ["NRS:5", "SIDE_EFFECT:cough"], np.array([9.0, 9.5])))
        loop.feed(Chunk("operator", ["STOP", "RESUME"], np.array([9.6, 9.7])))
        for k in range(1, 60):
            loop.tick(8.0 + k / 4.0)

    def stop(self, t: float, reason: str, source: str = "runtime") -> None:
        """The loop's last act, live or in replay: stimulation off as for an operator STOP."""
        self._operator_stop(t)
        self.event(Event(t, "loop.stopped", source, f"loop stopped: {reason}"))

    def tick_stats_us(self) -> dict[str, float]:
        if not self.tick_compute_ns:
            return {"p50": float("nan"), "p99": float("nan")}
        a = np.asarray(self.tick_compute_ns) / 1000.0
        return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}
