"""The report of a closed-loop session (a live run, a demo or a lockstep simulation): heart
rate, HRV, the pain estimate against the truth when a simulator supplied it, stimulation and
events, as one PNG."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from controller.outlets import COMMAND_STREAM, EVENTS_STREAM, STATE_STREAM  # noqa: E402
from controller.types import COMMAND_CHANNELS, STATE_CHANNELS  # noqa: E402


@dataclass
class SessionData:
    """What a report plots; built from an XDF recording or straight from the loop's log."""

    state_t: np.ndarray
    state: np.ndarray                       # columns: STATE_CHANNELS
    command_t: np.ndarray
    command: np.ndarray                     # columns: COMMAND_CHANNELS
    events: list[tuple[float, str]] = field(default_factory=list)   # (t, kind)
    truth_t: np.ndarray | None = None
    truth: dict[str, np.ndarray] | None = None
    title: str = "vnsloop session"


def _channel_labels(stream: dict) -> list[str]:
    try:
        chans = stream["info"]["desc"][0]["channels"][0]["channel"]
        return [c["label"][0] for c in chans]
    except (KeyError, IndexError, TypeError):
        return []


def session_from_xdf(path: Path) -> SessionData:
    import pyxdf

    streams, _ = pyxdf.load_xdf(str(path), synchronize_clocks=True, dejitter_timestamps=False)
    by_name = {s["info"]["name"][0]: s for s in streams}
    missing = [n for n in (COMMAND_STREAM, STATE_STREAM) if n not in by_name]
    if missing:
        raise RuntimeError(f"{path} holds no {', '.join(missing)} stream: not a vnsloop session")

    def arr(name: str, width: int) -> tuple[np.ndarray, np.ndarray]:
        s = by_name[name]
        return (np.asarray(s["time_stamps"], float),
                np.asarray(s["time_series"], float).reshape(-1, width))

    st_t, st = arr(STATE_STREAM, len(STATE_CHANNELS))
    c_t, c = arr(COMMAND_STREAM, len(COMMAND_CHANNELS))
    events = []
    if EVENTS_STREAM in by_name:
        s = by_name[EVENTS_STREAM]
        for t, row in zip(s["time_stamps"], s["time_series"]):
            try:
                events.append((float(t), json.loads(row[0])["kind"]))
            except (ValueError, KeyError, TypeError):
                events.append((float(t), "unreadable"))
    truth_t = truth = None
    for s in streams:
        if s["info"]["type"][0] == "Truth" and len(s["time_stamps"]):
            labels = _channel_labels(s)
            data = np.asarray(s["time_series"], float)
            truth_t = np.asarray(s["time_stamps"], float)
            truth = {lab: data[:, i] for i, lab in enumerate(labels)}
    return SessionData(st_t, st, c_t, c, events, truth_t, truth, title=f"vnsloop session {path.name}")


def plot_session(data: SessionData, png: Path) -> Path:
    t0 = data.state_t[0] if len(data.state_t) else 0.0
    scale, unit = (3600.0, "h") if len(data.state_t) and data.state_t[-1] - t0 > 7200 else (1.0, "s")

    def tt(t):
        return (np.asarray(t) - t0) / scale

    col = {name: i for i, name in enumerate(STATE_CHANNELS)}
    fig, ax = plt.subplots(5, 1, figsize=(11, 12), sharex=True)
    ax[0].plot(tt(data.state_t), data.state[:, col["hr_bpm"]], label="estimated HR")
    if data.truth is not None and "hr_bpm" in data.truth:
        ax[0].plot(tt(data.truth_t), data.truth["hr_bpm"], lw=0.8, alpha=0.7, label="true HR")
    ax[0].axhline(50, color="r", ls=":", lw=0.8, label="bradycardia limit")
    ax[0].set_ylabel("heart rate (bpm)")
    ax[0].legend(loc="upper right", fontsize=8)

    ax[1].plot(tt(data.state_t), data.state[:, col["rmssd_ms"]], label="RMSSD (ms)")
    ax[1].plot(tt(data.state_t), data.state[:, col["vagal_index"]] * 10, label="vagal index ×10")
    ax[1].set_ylabel("HRV")
    ax[1].legend(loc="upper right", fontsize=8)

    m, sd = data.state[:, col["pain_mean"]], data.state[:, col["pain_sd"]]
    ax[2].plot(tt(data.state_t), m, label="pain estimate")
    ax[2].fill_between(tt(data.state_t), m - 1.645 * sd, m + 1.645 * sd, alpha=0.25,
                       label="90% interval")
    if data.truth is not None and "pain" in data.truth:
        ax[2].plot(tt(data.truth_t), data.truth["pain"], color="k", lw=0.8, label="true pain")
    ax[2].set_ylim(0, 10)
    ax[2].set_ylabel("pain (NRS)")
    ax[2].legend(loc="upper right", fontsize=8)

    ccol = {name: i for i, name in enumerate(COMMAND_CHANNELS)}
    if len(data.command_t):
        amp = data.command[:, ccol["amplitude_mA"]] * (data.command[:, ccol["enabled"]] > 0.5)
        ax[3].step(tt(data.command_t), amp, where="post", label="amplitude (enabled)")
        ax[3].step(tt(data.command_t), data.command[:, ccol["frequency_Hz"]] / 10, where="post",
                   alpha=0.6, label="frequency /10 (Hz)")
    ax[3].set_ylabel("stimulation (mA)")
    ax[3].legend(loc="upper right", fontsize=8)

    kinds = sorted({k for _, k in data.events})
    for i, k in enumerate(kinds):
        ts = [t for t, kk in data.events if kk == k]
        ax[4].plot(tt(ts), np.full(len(ts), i), "|", ms=12)
    ax[4].set_yticks(range(len(kinds)), kinds, fontsize=7)
    ax[4].set_xlabel(f"time ({unit})")
    ax[4].set_title("events", fontsize=9)
    fig.suptitle(data.title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def plot_session_report(xdf: Path, out_dir: Path) -> Path:
    return plot_session(session_from_xdf(xdf), out_dir / (xdf.stem + "-report.png"))
