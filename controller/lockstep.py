"""The controller in lockstep with the virtual patient: the same `ControlLoop` as on a rig,
fed the patient's outputs as chunks on a virtual clock, so that days of therapy simulate in
seconds through the code that runs live."""
from __future__ import annotations

import numpy as np

from controller.config import Config
from controller.outlets import OutputLog
from controller.runtime import ControlLoop
from signals.chunk import Chunk
from sim.command import Stimulation as PatientStimulation
from sim.patient import PatientOutput, VirtualPatient


class LockstepController:
    """A `simulate()` command source: patient output in, the guarded command out."""

    def __init__(self, config: Config, patient: VirtualPatient, *, use_ecg: bool):
        self.out = OutputLog()
        self.loop = ControlLoop(config, self.out, patient.t)
        self.use_ecg = use_ecg
        if use_ecg:
            self.loop.set_input_rate("ecg", patient.ecg_fs)
        self.loop.set_input_rate("resp", patient.resp_fs)
        self.loop.set_input_rate("eda", patient.eda_fs)
        self.true_exhalation_onsets: list[float] = []   # ground truth, for the gating report
        self._sent: tuple[object, PatientStimulation] | None = None

    def __call__(self, t: float, out: PatientOutput | None) -> PatientStimulation:
        if out is not None:
            self.feed(out)
        cmd = self.loop.tick(t)
        # The supervisor re-sends an unchanged setting as the same object: the patient then
        # gets the same object too and needs no comparison.
        if self._sent is None or self._sent[0] is not cmd.stim:
            self._sent = (cmd.stim, PatientStimulation.from_sample(cmd.as_sample()))
        return self._sent[1]

    def feed(self, out: PatientOutput) -> None:
        loop = self.loop
        self.true_exhalation_onsets.extend(out.exhalation_onsets.tolist())
        if self.use_ecg:
            loop.feed(Chunk("ecg", out.ecg[:, None], out.ecg_t))
        else:
            loop.feed(Chunk("rr", out.rr_ms[:, None], out.beat_t))
        loop.feed(Chunk("resp", out.resp[:, None], out.resp_t))
        loop.feed(Chunk("eda", out.eda[:, None], out.eda_t))
        if out.ratings:
            loop.feed(Chunk("ratings", [text for _, text in out.ratings],
                            np.array([t for t, _ in out.ratings])))


def estimate_quality(state_t: np.ndarray, pain_mean: np.ndarray, pain_sd: np.ndarray,
                     truth_t: np.ndarray, truth_pain: np.ndarray, skip_s: float) -> dict:
    """How well the pain estimate follows the hidden truth: correlation, and the share of time
    the truth lies inside the 90% interval, after the first `skip_s` (baseline, no reports)."""
    keep = truth_t >= truth_t[0] + skip_s
    tt, truth = truth_t[keep], truth_pain[keep]
    ok = np.isfinite(pain_mean)
    if ok.sum() < 3 or len(tt) < 3:
        return {"pain_estimate_corr": float("nan"), "pain_interval_coverage": float("nan")}
    m = np.interp(tt, state_t[ok], pain_mean[ok])
    s = np.interp(tt, state_t[ok], pain_sd[ok])
    corr = float(np.corrcoef(m, truth)[0, 1])
    coverage = float(np.mean(np.abs(truth - m) <= 1.645 * s))
    return {"pain_estimate_corr": corr, "pain_interval_coverage": coverage}


def gating_delays(bursts: list[float], true_onsets: list[float]) -> np.ndarray:
    """Delay of each gated burst after the true exhalation onset it answers (the latest one
    before it), in seconds."""
    onsets = np.asarray(true_onsets)
    b = np.asarray(bursts)
    idx = np.searchsorted(onsets, b) - 1
    ok = idx >= 0
    return b[ok] - onsets[idx[ok]]
