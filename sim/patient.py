"""The virtual patient: owns the model state and advances it over spans of simulated time."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim import model as m
from sim.command import OFF, Stimulation
from sim.envelope import check_command
from sim.profiles import PatientParams, patient_params

_RATING_TEXT = {**{float(v): f"NRS:{v}" for v in range(11)},
                float(m.CODE_HOARSENESS): "SIDE_EFFECT:hoarseness",
                float(m.CODE_COUGH): "SIDE_EFFECT:cough"}
_EMPTY = np.empty(0)


@dataclass
class PatientOutput:
    """Everything the patient emitted in (t_prev, t_end]."""

    beat_t: np.ndarray                 # R-peak times, s
    rr_ms: np.ndarray                  # RR interval ending at each beat, ms
    ecg_t: np.ndarray                  # empty unless ecg_fs
    ecg: np.ndarray                    # mV
    resp_t: np.ndarray
    resp: np.ndarray                   # a.u.
    eda_t: np.ndarray
    eda: np.ndarray                    # µS
    ratings: list                      # [(t, "NRS:6" | "SIDE_EFFECT:hoarseness" | ...)]
    exhalation_onsets: np.ndarray      # true exhalation onset times, s
    truth_t: np.ndarray
    truth: dict = field(default_factory=dict)   # name -> array on truth_t (model.TRUTH_NAMES)


class VirtualPatient:
    """One simulated patient. `advance(t_end, stim)` holds `stim` over (t, t_end].

    The generator applies the ON/OFF train itself; the train restarts when stimulation is
    switched on or the duty cycle changes. Two patients in one process never share random state.
    """

    def __init__(self, profile: str = "fibromyalgia", seed: int = 0, *, ecg_fs=None,
                 resp_fs: float = 25.0, eda_fs: float = 4.0, t0: float = 0.0,
                 truth_dt: float = 1.0, params: PatientParams | None = None):
        self.profile = profile
        self.seed = int(seed)
        self.params = params if params is not None else patient_params(profile, seed)
        self.resp_fs = float(resp_fs)
        self.eda_fs = float(eda_fs)
        self.truth_dt = float(truth_dt)
        if self.truth_dt <= 0.0:
            raise ValueError("truth_dt must be > 0")
        self._par = m.with_derived(self.params.as_array())
        self._st = np.zeros(len(m.STATE_NAMES))
        self._rng = m.seed_streams(self.seed)
        m.init_state(self._st, self._rng, self._par, float(t0), self.resp_fs, self.eda_fs,
                     self.truth_dt)
        self._stim = OFF
        self._stim_arr = OFF.as_array()
        self._offs = np.zeros(12, np.int64)
        self._cnt = np.zeros(6, np.int64)
        self.limit_violations = 0
        self._ecg = None
        self.ecg_fs = float(ecg_fs) if ecg_fs else None
        if ecg_fs:
            from sim.ecg_synth import ECGSynthesizer  # written separately; heavy
            self._ecg = ECGSynthesizer(ecg_fs, self.seed)

    @property
    def t(self) -> float:
        return float(self._st[m.S_T])

    @property
    def stim(self) -> Stimulation:
        return self._stim

    @property
    def counters(self) -> dict[str, int]:
        c = {k: int(self._st[i]) for k, i in m.COUNTER_SLOTS.items()}
        c["limit_violations"] = self.limit_violations
        return c

    rescue_doses = property(lambda self: int(self._st[m.S_RESCUE_DOSES]))
    bradycardia_events = property(lambda self: int(self._st[m.S_BRADYCARDIA_EVENTS]))
    asystole_events = property(lambda self: int(self._st[m.S_ASYSTOLE_EVENTS]))
    discomfort_events = property(lambda self: int(self._st[m.S_DISCOMFORT_EVENTS]))

    def _set_stim(self, stim: Stimulation) -> None:
        if stim == self._stim:
            self._stim = stim
            return
        if check_command(stim):
            self.limit_violations += 1
        prev = self._stim
        # A generator restarts its train when switched on or when the duty cycle changes;
        # an amplitude or frequency change takes effect within the running cycle.
        if stim.enabled and (not prev.enabled or stim.train_on_s != prev.train_on_s
                             or stim.train_off_s != prev.train_off_s):
            self._st[m.S_CYCLE_START] = self._st[m.S_T]
        self._stim = stim
        self._stim_arr = stim.as_array()

    def checkpoint(self) -> tuple:
        """The state, for `restore`: the model is deterministic given it (random streams
        included), so a stretch can be re-run, e.g. to stop at a beat seen in a look-ahead."""
        if self._ecg is not None:
            raise ValueError("checkpoint: the ECG synthesiser's state is not kept; use ecg_fs=None")
        return (self._st.copy(), self._rng.copy(), self._stim, self.limit_violations)

    def restore(self, checkpoint: tuple) -> None:
        st, rng, stim, violations = checkpoint
        self._st[:] = st
        self._rng[:] = rng
        self._stim, self._stim_arr = stim, stim.as_array()
        self.limit_violations = violations

    def advance(self, t_end: float, stim: Stimulation = OFF) -> PatientOutput:
        if stim is not self._stim:
            self._set_stim(stim)
        t = float(self._st[m.S_T])
        span = t_end - t
        if not span >= 0.0:
            raise ValueError(f"cannot advance from {t} back to {t_end}")
        # upper bounds of what (t, t_end] can hold, laid out in one block
        nb = int(span / m.MIN_RR_S) + 3
        nr = int(span * self.resp_fs) + 2
        nx = int(span * m.MAX_RESP_BPM / 60.0) + 2
        ne = int(span * self.eda_fs) + 2
        nt = int(span / self.truth_dt) + 2
        nq = int(span / m.DISCOMFORT_GAP_S) + 4
        o_resp_t = 2 * nb
        o_resp = o_resp_t + nr
        o_exh = o_resp + nr
        o_eda_t = o_exh + nx
        o_eda = o_eda_t + ne
        o_truth_t = o_eda + ne
        o_truth = o_truth_t + nt
        o_rating_t = o_truth + m.N_TRUTH * nt
        o_rating = o_rating_t + nq
        # one assignment: a dozen item assignments to the array cost more than the kernel
        self._offs[:] = (0, nb, o_resp_t, o_resp, o_exh, o_eda_t, o_eda, o_truth_t, o_truth, nt,
                         o_rating_t, o_rating)
        out = np.empty(o_rating + nq)
        c = self._cnt
        m.advance_kernel(self._st, self._rng, self._par, self._stim_arr, float(t_end), out,
                         self._offs, c)
        b, r, x, e, n, q = c.tolist()
        beat_t = out[:b]
        rr_ms = out[nb:nb + b]
        if q:
            ratings = [(float(tq), _RATING_TEXT[code])
                       for tq, code in zip(out[o_rating_t:o_rating_t + q],
                                           out[o_rating:o_rating + q])]
        else:
            ratings = []
        # the rows of the truth block as views, one slice for all of them
        truth = dict(zip(m.TRUTH_NAMES,
                         out[o_truth:o_truth + m.N_TRUTH * nt].reshape(m.N_TRUTH, nt)[:, :n]))
        if self._ecg is not None:
            ecg_t, ecg = self._ecg.render(t, float(t_end), beat_t, rr_ms,
                                          resp_bpm=float(self._st[m.S_RESP_BPM]))
        else:
            ecg_t = ecg = _EMPTY
        return PatientOutput(beat_t, rr_ms, ecg_t, ecg, out[o_resp_t:o_resp_t + r],
                             out[o_resp:o_resp + r], out[o_eda_t:o_eda_t + e],
                             out[o_eda:o_eda + e], ratings, out[o_exh:o_exh + x],
                             out[o_truth_t:o_truth_t + n], truth)


def warmup() -> None:
    """Compile (or load from cache) the kernels before any timed loop."""
    p = VirtualPatient("fibromyalgia", 1, ecg_fs=250.0)
    p.advance(5.0, Stimulation(1.0, 20.0, 250.0, 2.0, 2.0, True))
    p.advance(10.0, OFF)
