"""Offline replay of recorded XDF sessions: `vnsloop replay FILE|FOLDER ... [--realtime]`.

As fast as possible (the default), a fresh `ControlLoop` with an `OutputLog` runs over the
recording on the data clock:
- inputs are fed in steps that end at the control ticks, each step holding every sample
  stamped in (previous tick, this tick] (running maximum of the stamps, so that samples whose
  stamps go back after a clock reset are still fed once, in file order);
- ticks fall at exact multiples of 1/tick_hz from the recording's start, or, when the file
  holds a recorded vnsloop session, at the recorded tick times (the `vnsloop-state` stamps,
  which the live loop sends once per tick with the tick's time; failing that the command
  stamps that no immediate-path event claims), so that the same inputs give the same
  decisions and `decision_mismatches` counts real differences;
- everything odd about the file (gaps, clock resets, empty or unmapped streams, corruption,
  odd rates, multichannel inputs) arrives as source events and is forwarded into the log;
  an exception inside one chunk or tick becomes a `replay.error` event and the replay goes on.
A data gap longer than `MAX_TICKED_GAP_S` is ticked through for that long (the stale-input
rule acts on it as it would live) and then skipped to just before the data resume, with a
`replay.skip` event; the tick phase is kept.

Outputs in --out: `<stem>-replay-commands.csv`, `<stem>-replay-states.csv` (header `t` plus
COMMAND_CHANNELS / STATE_CHANNELS), `<stem>-replay-events.jsonl` (one `Event` per line) and the
session report PNG.

Several files (or a folder, for the `.xdf` files in it) replay as a batch on a process pool,
each to its own outputs; a file that cannot be read is reported in the batch's summary and the
others go on.

`--realtime` re-streams the recording as LSL outlets (names and source_ids get a suffix so
that they never bind in place of a live device) for a rig to consume, until the end or Ctrl-C.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controller.config import Config, default_config, load_config
from controller.outlets import COMMAND_STREAM, EVENTS_STREAM, STATE_STREAM, OutputLog
from controller.runtime import ControlLoop
from controller.summary import _clean, progress
from controller.types import COMMAND_CHANNELS, STATE_CHANNELS
from signals.chunk import Chunk
from signals.clock import VirtualClock
from signals.ecg import RPeakDetector
from signals.events import Event
from signals.xdf_source import MAX_EVENTS_PER_STREAM, XDFRestreamer, XDFSource

MAX_TICKED_GAP_S = 120.0      # tick through this much of a data gap, then skip to the data
# Tolerances of the decision comparison (the commands are floats sent as double64).
TOL_AMPLITUDE_MA = 0.02
TOL_FREQUENCY_HZ = 0.05
TOL_PULSE_WIDTH_US = 1.0
TOL_TIME_S = 1e-3             # clock-offset noise between streams of one recording
IMMEDIATE_KINDS = ("safety.operator", "safety.bradycardia")

_C = {name: i for i, name in enumerate(COMMAND_CHANNELS)}


# ---- the comparison ------------------------------------------------------------------------

def compare_decisions(recorded_t, recorded_cmds, replayed_t, replayed_cmds, *,
                      tol_amplitude_mA: float = TOL_AMPLITUDE_MA,
                      tol_frequency_Hz: float = TOL_FREQUENCY_HZ,
                      tol_pulse_width_us: float = TOL_PULSE_WIDTH_US,
                      tol_time_s: float = TOL_TIME_S) -> int:
    """How many recorded commands the replay disagrees with.

    A command holds until the next one. For each recorded command (time t, in time order),
    the replayed command in effect at t (the last one stamped at or before t + tol_time_s) must
    have the same `enabled` and, when enabled, amplitude, frequency and pulse width within the
    tolerances (settings of a disabled command do not reach the patient). A recorded command
    with no replayed command yet in effect counts as a mismatch. Commands are rows in
    COMMAND_CHANNELS order (seq first); seq numbers are not compared.
    """
    rt = np.asarray(recorded_t, float).ravel()
    pt = np.asarray(replayed_t, float).ravel()
    rc = np.asarray(recorded_cmds, float).reshape(len(rt), -1) if len(rt) else \
        np.zeros((0, len(COMMAND_CHANNELS)))
    pc = np.asarray(replayed_cmds, float).reshape(len(pt), -1) if len(pt) else \
        np.zeros((0, len(COMMAND_CHANNELS)))
    if rc.shape[1] != len(COMMAND_CHANNELS) or pc.shape[1] != len(COMMAND_CHANNELS):
        raise ValueError(f"commands need {len(COMMAND_CHANNELS)} columns ({', '.join(COMMAND_CHANNELS)})")
    if len(rt) == 0:
        return 0
    order = np.argsort(pt, kind="stable")
    pt, pc = pt[order], pc[order]
    idx = np.searchsorted(pt, rt + tol_time_s, side="right") - 1
    mismatches = 0
    for i, j in enumerate(idx):
        if j < 0:
            mismatches += 1
            continue
        a, b = rc[i], pc[j]
        en_a, en_b = a[_C["enabled"]] > 0.5, b[_C["enabled"]] > 0.5
        if en_a != en_b:
            mismatches += 1
        elif en_a and not (
                _close(a[_C["amplitude_mA"]], b[_C["amplitude_mA"]], tol_amplitude_mA)
                and _close(a[_C["frequency_Hz"]], b[_C["frequency_Hz"]], tol_frequency_Hz)
                and _close(a[_C["pulse_width_us"]], b[_C["pulse_width_us"]], tol_pulse_width_us)):
            mismatches += 1
    return mismatches


def _close(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


# ---- the replay ----------------------------------------------------------------------------

@dataclass
class ReplayResult:
    source: XDFSource
    loop: ControlLoop
    log: OutputLog
    tick_times: str                      # "grid" or "recorded"
    n_ticks: int
    wall_s: float                        # the feed/tick loop alone
    setup_s: float                       # loop construction (JIT caches, detector set-up)
    load_s: float                        # reading the file
    errors: int = 0
    recorded_commands: tuple[np.ndarray, np.ndarray] | None = None
    decision_mismatches: int | None = None
    skipped_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return float(self.source.duration_s)

    @property
    def realtime_factor(self) -> float:
        return self.duration_s / self.wall_s if self.wall_s > 0 else float("inf")


def parse_role_map(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        role, sep, name = str(item).partition("=")
        if not sep or not role.strip() or not name.strip():
            raise ValueError(f"--map {item!r}: expected ROLE=STREAM, e.g. ecg=ECG-lead-II")
        out[role.strip()] = name.strip()
    return out


def build_config(config_path: str | None, policy: str | None) -> Config:
    config = load_config(config_path) if config_path else default_config()
    if policy:
        config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, kind=policy))
    return config


def _recorded_events(source: XDFSource) -> list[dict]:
    rec = source.recorded(EVENTS_STREAM)
    if rec is None:
        return []
    out = []
    for t, row in zip(rec[0], rec[1]):
        try:
            d = json.loads(row if isinstance(row, str) else row[0])
            d["_t"] = float(t)
            out.append(d)
        except (ValueError, TypeError, IndexError):
            continue
    return out


def _recorded_tick_times(source: XDFSource, rec_cmd, rec_events: list[dict]) -> np.ndarray | None:
    """The live loop's tick times: it sends one state per tick, stamped with the tick time."""
    st = source.recorded(STATE_STREAM)
    if st is not None and len(st[0]):
        return np.maximum.accumulate(np.asarray(st[0], float))
    if rec_cmd is None or not len(rec_cmd[0]):
        return None
    immediate = {int(e["data"]["seq"]) for e in rec_events
                 if e.get("kind") in IMMEDIATE_KINDS and isinstance(e.get("data"), dict)
                 and "seq" in e["data"]}
    seq = rec_cmd[1][:, _C["seq"]]
    keep = np.array([int(s) not in immediate for s in seq], bool)
    return np.maximum.accumulate(np.asarray(rec_cmd[0], float)[keep])


def _grid_ticks(t0: float, t_end: float, tick_s: float, data_t: np.ndarray) -> tuple[np.ndarray, float, list[tuple[float, float]]]:
    """Ticks at t0 + k * tick_s up to t_end, thinned inside long data gaps."""
    n = int(math.floor((t_end - t0) / tick_s + 1e-9))
    if n <= 0:
        return np.array([t_end]), 0.0, []
    if len(data_t) < 2:
        return t0 + tick_s * np.arange(1, n + 1), 0.0, []
    d = np.diff(data_t)
    big = np.flatnonzero(d > MAX_TICKED_GAP_S + 2 * tick_s)
    if len(big) == 0:
        return t0 + tick_s * np.arange(1, n + 1), 0.0, []
    keep = np.ones(n, bool)
    k = np.arange(1, n + 1)
    t = t0 + tick_s * k
    skips, skipped = [], 0.0
    for i in big:
        a = data_t[i] + MAX_TICKED_GAP_S         # tick through this much of the gap
        b = data_t[i + 1] - tick_s               # resume one tick before the data
        drop = (t > a) & (t < b)
        if drop.any():
            keep &= ~drop
            skips.append((a, b))
            skipped += b - a
    return t[keep], skipped, skips


def _split(ts_env: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.searchsorted(ts_env, edges, side="right")


def _config_differs(started: dict | None, config: Config) -> Event | None:
    """A replay under another policy or tick rate than the recorded session's (its
    `loop.started` event) makes other decisions by design: say so, before anyone reads its
    mismatches as a fault."""
    if started is None:
        return None
    data = started.get("data", {})
    live = (data.get("policy"), data.get("tick_hz"))
    here = (config.policy.kind, config.tick_hz)
    if live[0] is None or (live[0] == here[0] and live[1] == here[1]):
        return None
    return Event(started["_t"], "replay.config_differs", "replay",
                 f"the recorded session ran the {live[0]!r} policy at {live[1]} Hz, this "
                 f"replay runs {here[0]!r} at {here[1]} Hz: decisions will differ (pass the "
                 "session's configuration with --config)",
                 {"recorded_policy": live[0], "recorded_tick_hz": live[1],
                  "policy": here[0], "tick_hz": here[1]})


def replay_file(path: str | Path, config: Config | None = None,
                role_map: dict[str, str] | None = None, *,
                tick_times: np.ndarray | str | None = "auto",
                max_chunk_s: float = 1.0) -> ReplayResult:
    """Run a fresh controller over the recording as fast as possible (see the module doc).

    `tick_times`: "auto" (recorded ticks when the file holds a vnsloop session, else the grid),
    "grid", or an explicit array of data-clock times.
    Raises FileNotFoundError / ValueError for a missing or non-XDF file; nothing else in the
    file raises.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if not p.is_file():
        raise ValueError(f"{p} is not a file")
    config = config or default_config()
    t_load = time.perf_counter()
    source = XDFSource(p, role_map)
    load_s = time.perf_counter() - t_load

    rec_cmd = source.recorded(COMMAND_STREAM)
    if rec_cmd is not None and rec_cmd[1].shape[1] != len(COMMAND_CHANNELS):
        source.events.append(Event(source.t_start, "replay.recorded_commands", "replay",
                                   f"recorded {COMMAND_STREAM} has {rec_cmd[1].shape[1]} channels, "
                                   f"expected {len(COMMAND_CHANNELS)}: not compared"))
        rec_cmd = None
    rec_events = _recorded_events(source)
    started = next((e for e in reversed(rec_events) if e.get("kind") == "loop.started"), None)
    differs = _config_differs(started, config)
    if differs is not None:
        source.events.append(differs)
    tick_s = 1.0 / config.tick_hz

    # inputs: each role's whole recording, split below at the step edges
    chunks = {}
    for c in source.chunks():
        ok = np.isfinite(c.timestamps)
        if not ok.all():   # damaged sample data (stamps read as NaN/inf): drop, report
            source.events.append(Event(source.t_start, "replay.bad_timestamps", c.role,
                                       f"{c.role}: {int((~ok).sum())} samples with non-finite "
                                       "time stamps dropped", {"samples": int((~ok).sum())}))
            idx = np.flatnonzero(ok)
            c = Chunk(c.role, [c.data[i] for i in idx] if isinstance(c.data, list) else c.data[idx],
                      c.timestamps[idx])
        if len(c):
            chunks[c.role] = c
    # each input's stamps as fed (their running maximum: see the module's docstring)
    fed_stamps = {role: np.maximum.accumulate(c.timestamps) for role, c in chunks.items()}
    data_t = np.sort(np.concatenate(list(fed_stamps.values()))) if chunks else np.zeros(0)

    mode = "grid"
    skipped, skips = 0.0, []
    t0 = source.t_start
    if isinstance(tick_times, np.ndarray) or isinstance(tick_times, (list, tuple)):
        ticks = np.maximum.accumulate(np.asarray(tick_times, float))
        mode = "given"
        if len(ticks):
            t0 = min(t0, float(ticks[0]) - tick_s)
    else:
        ticks = None
        if tick_times in ("auto", None):
            ticks = _recorded_tick_times(source, rec_cmd, rec_events)
        if ticks is not None and len(ticks):
            mode = "recorded"
            # the live loop started one tick period before its first tick
            st = source.recorded(STATE_STREAM)
            live_tick_s = tick_s
            if st is not None:
                fs = next((s.fs for s in source.streams if s.name == STATE_STREAM), 0.0)
                live_tick_s = 1.0 / fs if fs > 0 else tick_s
            t0 = (float(started["data"]["t0"]) if started is not None
                  else float(ticks[0]) - live_tick_s)
        else:
            ticks, skipped, skips = _grid_ticks(t0, source.t_end, tick_s, data_t)
    for a, b in skips:
        source.events.append(Event(a, "replay.skip", "replay",
                                   f"no input for {b - a + MAX_TICKED_GAP_S:.0f} s: ticking "
                                   f"stopped after {MAX_TICKED_GAP_S:g} s, resumes at the data",
                                   {"from": a, "to": b, "skipped_s": b - a}))
    if "ecg" in chunks:
        fs_ecg = next((st.fs for st in source.streams if st.role == "ecg"), 0.0)
        ev_inv = ecg_polarity_event(chunks["ecg"], fs_ecg)
        if ev_inv is not None:
            source.events.append(ev_inv)
    source.events.sort(key=lambda e: e.t)
    stop_t = next((e["_t"] for e in rec_events if e.get("kind") == "loop.stopped"), None) \
        if mode == "recorded" else None

    t_setup = time.perf_counter()
    log = OutputLog()
    loop = ControlLoop(config, log, t0)
    for st in source.streams:
        if st.role in ("ecg", "resp", "eda") and st.fs > 0:
            try:
                loop.set_input_rate(st.role, st.fs)
            except Exception as e:  # an odd header must not stop the replay
                log.send_event(Event(t0, "replay.error", st.role,
                                     f"set_input_rate({st.role}, {st.fs}) failed: {e!r}"))
    if "ecg" in chunks and loop._ecg is not None:   # load the detector's JIT cache here,
        RPeakDetector(loop._ecg.fs).process(np.zeros(64))   # not inside the timed loop
    setup_s = time.perf_counter() - t_setup

    # step edges: every tick, plus extra edges so that no step holds more than max_chunk_s
    edges = np.asarray(ticks, float)
    t_last = max(source.t_end, float(edges[-1]) if len(edges) else source.t_end)
    if max_chunk_s > 0 and len(data_t):
        grid = np.arange(source.t_start + max_chunk_s, t_last + max_chunk_s, max_chunk_s)
        grid = grid[np.searchsorted(data_t, grid - max_chunk_s, side="left") <
                    np.searchsorted(data_t, grid, side="right")]   # only where data lie
        edges_all = np.union1d(edges, grid)
    else:
        edges_all = edges
    if not len(edges_all) or edges_all[-1] < source.t_end:
        edges_all = np.append(edges_all, source.t_end)
    is_tick = np.isin(edges_all, edges)
    pos_start: dict[str, int] = {}   # where the live loop began each input
    split = {role: (c, _split(fed_stamps[role], edges_all)) for role, c in chunks.items()}
    if mode == "recorded":
        _cut_at_watermarks(split, fed_stamps, source, edges_all, is_tick)
        for e in rec_events:
            if e.get("kind") == "input.started" and e.get("source") in split:
                _, cut = split[e["source"]]
                stamps = fed_stamps[e["source"]]
                first = np.searchsorted(stamps, e["data"]["first_t"] - _stamp_tolerance(stamps),
                                        side="left")
                pos_start[e["source"]] = int(first)
                cut[:] = np.maximum(cut, first)
    ev = source.events
    ev_t = np.array([e.t for e in ev]) if ev else np.zeros(0)
    ev_split = np.searchsorted(ev_t, edges_all, side="right")

    clock = VirtualClock(t0)
    errors = 0
    n_ticks = 0
    pos = {role: pos_start.get(role, 0) for role in chunks}
    ev_pos = 0
    # events stamped before the loop's start (file-level) go first
    t_wall = time.perf_counter()
    for k, t_edge in enumerate(edges_all):
        if t_edge > clock.now():
            clock.advance_to(float(t_edge))
        j = ev_split[k]
        for e in ev[ev_pos:j]:
            log.send_event(e)
        ev_pos = j
        for role, (c, cut) in split.items():
            i0, i1 = pos[role], int(cut[k])
            if i1 > i0:
                pos[role] = i1
                data = c.data[i0:i1]
                try:
                    loop.feed(Chunk(role, data, c.timestamps[i0:i1]))
                except Exception as e:
                    errors += 1
                    log.send_event(Event(float(c.timestamps[i1 - 1]), "replay.error", role,
                                         f"{role} chunk of {i1 - i0} samples failed: {e!r}",
                                         {"samples": i1 - i0}))
        if stop_t is not None and t_edge >= stop_t:
            loop.stop(stop_t, "end of the recorded session", "replay")
            stop_t = None
        if is_tick[k]:
            try:
                loop.tick(float(t_edge))
            except Exception as e:
                errors += 1
                log.send_event(Event(float(t_edge), "replay.error", "runtime",
                                     f"tick failed: {e!r}"))
            n_ticks += 1
    # whatever is left (samples stamped after the last edge, late events)
    for role, (c, cut) in split.items():
        if pos[role] < len(c):
            try:
                loop.feed(Chunk(role, c.data[pos[role]:], c.timestamps[pos[role]:]))
            except Exception as e:
                errors += 1
                log.send_event(Event(source.t_end, "replay.error", role, f"last chunk failed: {e!r}"))
    for e in ev[ev_pos:]:
        log.send_event(e)
    if stop_t is not None:
        loop.stop(stop_t, "end of the recorded session", "replay")
    wall_s = time.perf_counter() - t_wall

    res = ReplayResult(source=source, loop=loop, log=log, tick_times=mode, n_ticks=n_ticks,
                       wall_s=wall_s, setup_s=setup_s, load_s=load_s, errors=errors,
                       recorded_commands=rec_cmd, skipped_s=skipped)
    if rec_cmd is not None and len(rec_cmd[0]):
        rt, rc = log.command_array()
        res.decision_mismatches = compare_decisions(rec_cmd[0], rec_cmd[1], rt, rc)
    return res


def _cut_at_watermarks(split: dict, fed_stamps: dict, source: XDFSource, edges: np.ndarray,
                       is_tick: np.ndarray) -> None:
    """Where the recorded `vnsloop-state` carries the live loop's input watermarks (the last
    sample time fed per input at each tick), cut each input there instead of at the tick time:
    the live loop had fed what had arrived, not what was stamped before the tick."""
    st = source.recorded(STATE_STREAM)
    if st is None or st[1].shape[1] != len(STATE_CHANNELS):
        return
    rec_t, rec = st
    col = {name: i for i, name in enumerate(STATE_CHANNELS)}
    tick_idx = np.flatnonzero(is_tick)
    # recorded ticks, in order, match the recorded state samples
    k_state = np.searchsorted(rec_t, edges[tick_idx] - TOL_TIME_S, side="left")
    for role, (_, cut) in split.items():
        key = f"fed_t_{role}"
        if key not in col:
            continue
        stamps = fed_stamps[role]
        tol = _stamp_tolerance(stamps)
        for k, ks in zip(tick_idx, k_state):
            if ks < len(rec_t):
                w = rec[ks, col[key]]
                cut[k] = np.searchsorted(stamps, w + tol, side="right") if np.isfinite(w) else 0
        # cuts between ticks must not run past the next tick's watermark
        cut[:] = np.minimum.accumulate(cut[::-1])[::-1]


def _stamp_tolerance(stamps: np.ndarray) -> float:
    """How far a recorded watermark may sit from the stamp of the sample it names.

    The live loop kept the stamps as its inlet corrected them; pyxdf maps each stream with a
    line fitted to all of LabRecorder's clock offsets, so the same sample reads back tens of
    microseconds away (either way; up to ~75 us on loopback). Half a sample period, at most
    TOL_TIME_S, keeps the named sample and never takes in its neighbour."""
    d = np.diff(stamps)
    d = d[d > 0]
    return min(TOL_TIME_S, 0.5 * float(np.median(d))) if len(d) else TOL_TIME_S


def ecg_polarity_event(chunk: Chunk, fs: float) -> Event | None:
    """An `replay.ecg_inverted` event when the lead looks inverted (R waves pointing down):
    after removing each second's median, the deepest excursions outweigh the highest ones."""
    x = np.asarray(chunk.data, float)[:, 0]
    n = int(fs) if fs > 0 else 250
    m = (len(x) // n) * n
    if m < 4 * n:
        return None
    blocks = x[:m].reshape(-1, n)
    good = np.all(np.isfinite(blocks), axis=1)
    if good.sum() < 4:
        return None
    b = blocks[good]
    d = b - np.median(b, axis=1, keepdims=True)
    hi, lo = np.percentile(d, 99.5), -np.percentile(d, 0.5)
    if lo > 1.5 * hi and lo > 0:
        return Event(float(chunk.timestamps[0]), "replay.ecg_inverted", "ecg",
                     f"ECG looks inverted (downward peaks {lo:.3g} vs upward {hi:.3g}); the "
                     "detector is polarity-blind, but check the lead", {"down": lo, "up": hi})
    return None


# ---- outputs -------------------------------------------------------------------------------

def _write_csv(path: Path, header: tuple[str, ...], t: np.ndarray, rows: np.ndarray) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("t", *header))
        for ti, row in zip(t.tolist(), rows.tolist()):
            w.writerow([repr(ti), *("" if v != v else repr(v) for v in row)])
    return path


def _event_line(ev: Event) -> str:
    try:
        return ev.to_json()
    except (ValueError, TypeError):
        return json.dumps(_clean(ev.to_dict()), default=str, allow_nan=False)


def write_outputs(res: ReplayResult, out_dir: str | Path, stem: str | None = None) -> dict[str, str]:
    from controller.session_report import SessionData, plot_session

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or res.source.path.stem
    ct, c = res.log.command_array()
    st, s = res.log.state_array()
    files = {
        "commands_csv": _write_csv(out / f"{stem}-replay-commands.csv", COMMAND_CHANNELS, ct, c),
        "states_csv": _write_csv(out / f"{stem}-replay-states.csv", STATE_CHANNELS, st, s),
    }
    ej = out / f"{stem}-replay-events.jsonl"
    with ej.open("w") as fh:
        for ev in res.log.events:
            fh.write(_event_line(ev) + "\n")
    files["events_jsonl"] = ej
    data = SessionData(st, s, ct, c, [(e.t, e.kind) for e in res.log.events],
                       title=f"vnsloop replay {res.source.path.name} ({res.loop.policy.name} policy)"
                       if hasattr(res.loop.policy, "name") else f"vnsloop replay {res.source.path.name}")
    png = out / f"{stem}-replay-report.png"
    try:
        files["report"] = plot_session(data, png)
    except Exception as e:   # a report problem must not hide the replay's results
        progress(f"replay: report failed: {e!r}")
        files["report"] = None
    return {k: (str(v) if v is not None else None) for k, v in files.items()}


def count_gaps(events: list[Event]) -> int:
    n = 0
    for e in events:
        if e.kind == "xdf.gap":
            n += int(e.data["n_gaps"]) - MAX_EVENTS_PER_STREAM if "n_gaps" in e.data else 1
    return max(n, 0)


def summarize(res: ReplayResult) -> dict:
    kinds: dict[str, int] = {}
    for e in res.log.events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    return {
        "file": str(res.source.path),
        "roles": {r: res.source.streams[k].name for r, k in res.source.roles.items()},
        "duration_s": res.duration_s,
        "wall_s": res.wall_s,
        "realtime_factor": res.realtime_factor,
        "load_s": res.load_s,
        "setup_s": res.setup_s,
        "ticks": res.n_ticks,
        "tick_times": res.tick_times,
        "beats": res.loop.beats,
        "gaps": count_gaps(res.source.events),
        "commands": len(res.log.commands),
        "events": len(res.log.events),
        "event_kinds": kinds,
        "errors": res.errors,
        "skipped_s": res.skipped_s,
        "recorded_commands": None if res.recorded_commands is None else int(len(res.recorded_commands[0])),
        "decision_mismatches": res.decision_mismatches,
    }


# ---- real-time re-streaming ----------------------------------------------------------------

def restream(path: str | Path, *, suffix: str | None = None, seconds: float | None = None) -> dict:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    suffix = suffix or f"-replay-{uuid.uuid4().hex[:6]}"
    rs = XDFRestreamer(p, suffix=suffix)
    src = rs.source
    streamed = [{"name": st.name + suffix, "type": st.type, "source_id": (st.source_id or st.name) + suffix,
                 "fs": st.fs, "channels": st.channel_count, "samples": st.n_samples}
                for st in src.streams if st.n_samples and not st.name.startswith("vnsloop-")]
    progress(f"replay --realtime: {p.name}, {src.duration_s:.1f} s, streaming "
             + ", ".join(s["name"] for s in streamed) + "  (Ctrl-C stops)")
    err: list[BaseException] = []

    def run():
        try:
            rs.run(seconds)
        except BaseException as e:  # reported below
            err.append(e)

    th = threading.Thread(target=run, daemon=True, name="xdf-restreamer")
    t_start = time.monotonic()
    th.start()
    interrupted = False
    try:
        next_p = 10.0
        while th.is_alive():
            th.join(0.2)
            el = time.monotonic() - t_start
            if el >= next_p:
                progress(f"  streamed {el:6.1f} / {src.duration_s:.1f} s")
                next_p += 10.0
    except KeyboardInterrupt:
        interrupted = True
        rs.stop()
        th.join(2.0)
    elapsed = time.monotonic() - t_start
    rs.close()
    if err:
        raise RuntimeError(f"re-streaming failed: {err[0]!r}")
    return {"file": str(p), "realtime": True, "suffix": suffix, "streams": streamed,
            "duration_s": src.duration_s, "streamed_s": elapsed, "interrupted": interrupted,
            "_table_keys": ["file", "suffix", "duration_s", "streamed_s", "interrupted"]}


# ---- the command ---------------------------------------------------------------------------

def xdf_files(paths: list[str | Path]) -> list[Path]:
    """The files named, in order; a folder stands for the `.xdf` files below it, sorted."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() == ".xdf" and q.is_file())
            if not found:
                raise FileNotFoundError(f"{p}: no .xdf files in this folder")
            files += found
        else:
            files.append(p)
    return files


def replay_to_outputs(path: Path, config: Config, role_map: dict[str, str],
                      out_dir: str | Path) -> dict:
    """One file replayed, its outputs written; the summary as `vnsloop replay FILE` gives it."""
    res = replay_file(path, config, role_map)
    out = summarize(res)
    out.update(write_outputs(res, out_dir))
    return out


def _batch_item(task: tuple) -> dict:
    """A batch member, in a worker process: an unreadable file is a row, not an exception."""
    path, config, role_map, out_dir = task
    try:
        return replay_to_outputs(path, config, role_map, out_dir)
    except (FileNotFoundError, ValueError) as e:
        return {"file": str(path), "error": str(e)}


BATCH_SUMS = ("duration_s", "wall_s", "beats", "gaps", "commands", "events", "errors")


def replay_batch(files: list[Path], config: Config, role_map: dict[str, str],
                 out_dir: str | Path, workers: int | None = None) -> dict:
    """Every file replayed (in parallel on `workers` processes, default: the cores), each to
    its own outputs in `out_dir` (in a numbered subfolder when two files share a name)."""
    out = Path(out_dir)
    unique = len({f.stem for f in files}) == len(files)
    tasks = [(f, config, role_map, out if unique else out / f"{i:03d}")
             for i, f in enumerate(files)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    rows: list[dict | None] = [None] * len(tasks)
    t0 = time.perf_counter()

    def done(i: int, row: dict) -> None:
        rows[i] = row
        n = sum(r is not None for r in rows)
        what = (f"error: {row['error']}" if "error" in row else
                f"{row['duration_s']:.0f} s in {row['wall_s']:.2f} s "
                f"({row['realtime_factor']:.0f}x), {row['beats']} beats, "
                f"mismatches {row['decision_mismatches']}")
        progress(f"replay {n}/{len(tasks)}: {Path(row['file']).name}: {what}")

    if workers == 1:
        for i, task in enumerate(tasks):
            done(i, _batch_item(task))
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_batch_item, task): i for i, task in enumerate(tasks)}
            for fut in as_completed(futures):
                done(futures[fut], fut.result())
    ok = [r for r in rows if "error" not in r]
    compared = [r["decision_mismatches"] for r in ok if r["decision_mismatches"] is not None]
    total = {k: sum(r[k] for r in ok) for k in BATCH_SUMS}
    return {
        "files": rows,
        "n_files": len(rows),
        "failed": [{"file": r["file"], "error": r["error"]} for r in rows if "error" in r],
        **total,
        "realtime_factor": total["duration_s"] / max(total["wall_s"], 1e-9),
        "elapsed_s": time.perf_counter() - t0,
        "workers": workers,
        "decision_mismatches": sum(compared) if compared else None,
        "files_compared": len(compared),
    }


def format_batch(res: dict) -> str:
    """One line per file, for the end of a batch."""
    head = f"{'file':<40} {'duration_s':>10} {'x real time':>11} {'beats':>7} {'gaps':>5} " \
           f"{'commands':>8} {'mismatches':>10}"
    lines = [head]
    for r in res["files"]:
        name = Path(r["file"]).name[:40]
        if "error" in r:
            lines.append(f"{name:<40} error: {r['error']}")
            continue
        mm = "-" if r["decision_mismatches"] is None else r["decision_mismatches"]
        lines.append(f"{name:<40} {r['duration_s']:>10.1f} {r['realtime_factor']:>11.0f} "
                     f"{r['beats']:>7} {r['gaps']:>5} {r['commands']:>8} {mm:>10}")
    return "\n".join(lines)


def run_replay_command(args) -> dict:
    paths = getattr(args, "files", None) or [args.file]
    if getattr(args, "realtime", False):
        if len(paths) != 1 or not Path(paths[0]).is_file():
            raise ValueError("--realtime re-streams one XDF file")
        return restream(paths[0])
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    files = xdf_files(paths)
    role_map = parse_role_map(getattr(args, "map", None))
    config = build_config(getattr(args, "config", None), getattr(args, "policy", None))
    out_dir = getattr(args, "out", "reports") or "reports"
    if len(files) > 1 or Path(paths[0]).is_dir():
        progress(f"replay: {len(files)} files ({config.policy.kind} policy, "
                 f"tick {config.tick_hz:g} Hz)")
        res = replay_batch(files, config, role_map, out_dir, workers)
        print(format_batch(res))
        res["ok"] = not res["failed"]
        res["_table_keys"] = ["n_files", "duration_s", "wall_s", "elapsed_s", "realtime_factor",
                              "beats", "gaps", "commands", "events", "errors",
                              "decision_mismatches", "files_compared"]
        return res
    path = files[0]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    beside = path.with_suffix(".toml")
    if getattr(args, "config", None) is None and beside.is_file():
        # `vnsloop demo` writes the session's configuration beside its recording
        config = build_config(str(beside), getattr(args, "policy", None))
        progress(f"replay: configuration from {beside}")
    progress(f"replay: {path.name} ({config.policy.kind} policy, tick {config.tick_hz:g} Hz)")
    out = replay_to_outputs(path, config, role_map, out_dir)
    progress(f"replay: {out['duration_s']:.1f} s of data in {out['wall_s']:.3f} s "
             f"({out['realtime_factor']:.0f}x real time), {out['beats']} beats, "
             f"{out['commands']} commands, {out['events']} events")
    if "replay.config_differs" in out["event_kinds"]:
        progress("replay: the session was recorded under another policy or tick rate; its "
                 "decisions are compared anyway (pass its configuration with --config)")
    out["_table_keys"] = ["file", "duration_s", "wall_s", "realtime_factor", "beats", "gaps",
                          "commands", "events", "errors", "decision_mismatches", "report"]
    return out
