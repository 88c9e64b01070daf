"""Report figures (PNG) of simulation runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _window_means(t: np.ndarray, x: np.ndarray, t0: float, win: float):
    """Means of x over consecutive windows of `win` s from t0 (empty windows are NaN)."""
    if len(t) == 0:
        return np.empty(0), np.empty(0)
    idx = ((t - t0) // win).astype(np.int64)
    n = int(idx[-1]) + 1
    s = np.bincount(idx, weights=x, minlength=n)
    c = np.bincount(idx, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return t0 + (np.arange(n) + 0.5) * win, s / c


def rolling_rmssd(beat_t: np.ndarray, rr_ms: np.ndarray, t0: float, win: float = 300.0):
    """RMSSD (ms) over consecutive windows; successive differences over 300 ms (ectopy,
    pauses) are left out, as a clinician would."""
    d = np.diff(rr_ms)
    keep = np.abs(d) < 300.0
    tc, ms = _window_means(beat_t[1:][keep], d[keep] ** 2, t0, win)
    return tc, np.sqrt(ms)


def plot_sim_report(stim_rec, base_rec, path, title: str = "vnsloop sim") -> Path:
    """Pain (true, stimulated vs the unstimulated twin), heart rate, RMSSD and stimulation.

    `stim_rec` and `base_rec` are `controller.simulate.SimRecord`s of the same patient."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = stim_rec.commands[0][0]
    span = stim_rec.sim_seconds
    win = 300.0 if span <= 2 * 86400 else 1800.0
    h = 1.0 / 3600.0
    fig, ax = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    for rec, label, color in ((base_rec, "no stimulation (twin)", "0.55"),
                              (stim_rec, "stimulated", "C3")):
        tc, pain = _window_means(rec.truth_t, rec.truth["pain"], t0, win)
        ax[0].plot((tc - t0) * h, pain, color=color, label=label)
        tc, hr = _window_means(rec.beat_t, 60000.0 / rec.rr_ms, t0, win)
        ax[1].plot((tc - t0) * h, hr, color=color, label=label)
        tc, rmssd = rolling_rmssd(rec.beat_t, rec.rr_ms, t0, win)
        ax[2].plot((tc - t0) * h, rmssd, color=color, label=label)
    ax[0].set_ylabel("true pain (NRS)")
    ax[0].set_ylim(0, 10)
    ax[0].legend(loc="upper right")
    ax[1].set_ylabel("heart rate (bpm)")
    ax[2].set_ylabel(f"RMSSD (ms, {win / 60:.0f} min)")

    # commanded amplitude as a step line, and the delivered duty per window
    ts = [t for t, _ in stim_rec.commands] + [t0 + span]
    amps = [s.amplitude_mA if s.enabled else 0.0 for _, s in stim_rec.commands]
    ax[3].step((np.array(ts) - t0) * h, amps + amps[-1:], where="post", color="C0",
               label="amplitude (mA)")
    tc, duty = _window_means(stim_rec.truth_t, stim_rec.truth["stim_on"], t0, win)
    ax[3].plot((tc - t0) * h, duty * 3.5, color="C1", label="delivered duty x 3.5")
    ax[3].set_ylim(-0.1, 3.8)
    ax[3].set_ylabel("stimulation")
    ax[3].set_xlabel("time (h)")
    ax[3].legend(loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
