"""Recorded inputs: an XDF file read back as the same `Chunk`s and `Event`s as live LSL.

Reading choices (pyxdf.load_xdf):
- synchronize_clocks=True, handle_clock_resets=True: LabRecorder stores each stream's raw
  stamps plus clock offsets; applying them maps every stream into the recording host's LSL
  clock domain, which is what a live inlet on that host would have seen.
- dejitter_timestamps=False by default: the live inlet does no dejittering either (see
  lsl_source), so replay sees the same stamps, and gaps stay where they were.
Everything odd about a file (corruption, truncation, empty streams, gaps, clock resets,
ambiguous or missing roles, multichannel inputs, unusual rates) becomes an `Event`, not an
exception; only a file that does not exist or is not XDF at all raises.
"""
from __future__ import annotations

import gzip
import io
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pylsl
import pyxdf

from .chunk import Chunk
from .clock import VirtualClock
from .events import Event

ROLE_TYPES = {"ecg": ("ecg",), "rr": ("rr",), "resp": ("resp",), "eda": ("eda",),
              "ratings": ("markers",), "operator": ("markers",)}
# Both marker roles share a type; the stream name tells them apart.
ROLE_NAME_HINTS = {"ratings": ("rating", "pain", "nrs"), "operator": ("operator", "control", "ctrl")}
# Contract rates (DESIGN stream table) and the ECG rate below which R-peak timing gets coarse.
ROLE_RATES = {"ecg": (125.0, 1000.0), "resp": (25.0, 500.0), "eda": (4.0, 1000.0)}
ECG_MIN_GOOD_FS = 250.0
# The controller's own outputs (defined here, the lowest layer, so that the recorded ones are
# never taken for inputs); read them with .recorded().
CONTROLLER_OUTPUTS = ("vnsloop-command", "vnsloop-state", "vnsloop-events")
MAX_EVENTS_PER_STREAM = 20


@dataclass(frozen=True)
class XDFStreamInfo:
    stream_id: int
    name: str
    type: str
    source_id: str
    hostname: str
    fs: float
    n_samples: int
    channel_count: int
    channel_format: str
    role: str | None


class XDFSource:
    """An XDF recording mapped to input roles; `replay()` steps through it on a VirtualClock."""

    def __init__(self, path: str | Path, role_map: dict[str, str] | None = None, *,
                 channels: dict[str, int] | None = None, dejitter: bool = False,
                 gap_k: float = 10.0, gap_min_s: float = 0.05, reset_s: float = 0.05):
        self.path = Path(path)
        self.events: list[Event] = []
        self.t_start = np.nan              # known once the file is read
        raw = self._load(dejitter)
        self._raw = raw
        self.streams: list[XDFStreamInfo] = []
        for s in raw:
            info = s["info"]
            self.streams.append(XDFStreamInfo(
                stream_id=int(info["stream_id"]), name=_field(info, "name"), type=_field(info, "type"),
                source_id=_field(info, "source_id"), hostname=_field(info, "hostname"),
                fs=float(_field(info, "nominal_srate") or 0.0), n_samples=len(s["time_stamps"]),
                channel_count=int(_field(info, "channel_count") or 0),
                channel_format=_field(info, "channel_format"), role=None))
        firsts = [s["time_stamps"][0] for s in raw if len(s["time_stamps"])]
        lasts = [s["time_stamps"][-1] for s in raw if len(s["time_stamps"])]
        self.t_start = float(min(firsts)) if firsts else 0.0
        self.t_end = float(max(lasts)) if lasts else 0.0
        self.duration_s = self.t_end - self.t_start
        self.events = [replace(e, t=self.t_start) for e in self.events]   # load time = start
        self.roles = self._map_roles(role_map or {})
        role_of = {k: role for role, k in self.roles.items()}
        self.streams = [replace(st, role=role_of.get(k)) for k, st in enumerate(self.streams)]
        self._data = {role: self._role_data(role, k, (channels or {}).get(role, 0))
                      for role, k in self.roles.items()}
        for k, st in enumerate(self.streams):
            self._check_stream(k, st, gap_k, gap_min_s, reset_s)
        self.events.sort(key=lambda e: e.t)

    # -- reading ----------------------------------------------------------------------------
    def _event(self, kind: str, message: str, t: float | None = None, **data) -> None:
        self.events.append(Event(self.t_start if t is None else t, kind,
                                 data.pop("source", "xdf"), message, data))

    def _load(self, dejitter: bool) -> list[dict]:
        blob = _read_bytes(self.path)
        if blob[:4] != b"XDF:":
            raise ValueError(f"{self.path} is not an XDF file")
        end, why = _complete_prefix(blob)
        if why:
            self._event("xdf.corrupt", f"{self.path.name}: {why}", byte=end, size=len(blob))
        sync = dict(synchronize_clocks=True, handle_clock_resets=True, dejitter_timestamps=dejitter)
        # pyxdf first reads the whole file (it skips damaged chunks to the next boundary chunk);
        # when it gives up, the whole chunks before the damage, then the same without sync.
        attempts = [(blob, sync), (blob[:end], sync),
                    (blob[:end], dict(synchronize_clocks=False, dejitter_timestamps=False))]
        streams = []
        with _PyxdfErrors() as errs:
            for data, kw in (attempts[1:] if not why else attempts):
                try:
                    streams, _ = pyxdf.load_xdf(io.BytesIO(data), **kw)
                    break
                except Exception as e:
                    self._event("xdf.corrupt", f"{self.path.name}: pyxdf failed on {len(data)} bytes "
                                f"({e!r})", error=repr(e), size=len(data), **kw)
        for msg in dict.fromkeys(errs.messages):
            self._event("xdf.corrupt", f"{self.path.name}: {msg}")
        return sorted(streams, key=lambda s: int(s["info"]["stream_id"]))

    # -- roles ------------------------------------------------------------------------------
    def _map_roles(self, role_map: dict[str, str]) -> dict[str, int]:
        unknown = set(role_map) - set(ROLE_TYPES)
        if unknown:
            raise ValueError(f"unknown role(s) {sorted(unknown)} in the stream map; roles are "
                             f"{sorted(ROLE_TYPES)}")
        roles: dict[str, int] = {}
        for role, name in role_map.items():
            cands = [k for k, s in enumerate(self.streams) if s.name == name]
            if not cands:
                raise ValueError(f"--map {role}={name}: no stream of that name in {self.path.name}; "
                                 f"streams: {sorted({s.name for s in self.streams})}")
            typed = [k for k in cands if self.streams[k].type.lower() in ROLE_TYPES[role]]
            roles[role] = self._choose(role, typed or cands)
        taken = set(roles.values())
        for role, types in ROLE_TYPES.items():
            if role in roles:
                continue
            hints = ROLE_NAME_HINTS.get(role)
            cands = [k for k, s in enumerate(self.streams)
                     if k not in taken and s.type.lower() in types
                     and s.name not in CONTROLLER_OUTPUTS
                     and (hints is None or any(h in s.name.lower() for h in hints))]
            if cands:
                roles[role] = self._choose(role, cands)
                taken.add(roles[role])
        for k, s in enumerate(self.streams):
            if k not in taken and s.name not in CONTROLLER_OUTPUTS:
                self._event("xdf.unmapped_stream", f"stream {s.name!r} (type {s.type!r}) has no role",
                            stream=s.name, type=s.type, stream_id=s.stream_id)
        return roles

    def _choose(self, role: str, cands: list[int]) -> int:
        """Prefer a stream with data, then the lowest stream id: deterministic across runs."""
        best = min(cands, key=lambda k: (self.streams[k].n_samples == 0, self.streams[k].stream_id))
        if len(cands) > 1:
            alts = [{"name": self.streams[k].name, "type": self.streams[k].type,
                     "source_id": self.streams[k].source_id, "stream_id": self.streams[k].stream_id}
                    for k in cands]
            self._event("xdf.ambiguous", f"role {role!r}: {len(cands)} streams fit, using "
                        f"{self.streams[best].name!r} (id {self.streams[best].stream_id}); "
                        f"choose with --map {role}=STREAM", source=role, alternatives=alts)
        return best

    def _role_data(self, role: str, k: int, channel: int):
        s, st = self._raw[k], self.streams[k]
        if st.channel_count > 1:
            self._event("xdf.multichannel", f"role {role!r}: stream {st.name!r} has "
                        f"{st.channel_count} channels, using channel {channel}", source=role,
                        channel=channel, channel_count=st.channel_count)
        if not 0 <= channel < max(st.channel_count, 1):
            raise ValueError(f"role {role!r}: channel {channel} out of range for {st.name!r} "
                             f"({st.channel_count} channels)")
        ts = np.asarray(s["time_stamps"], dtype=np.float64)
        if st.channel_format == "string":
            data = [row[channel] for row in s["time_series"]]
        else:
            # an empty stream has no samples to infer the width from: take it from the header
            width = max(st.channel_count, 1)
            data = np.asarray(s["time_series"], dtype=np.float64).reshape(len(ts), width)
            data = data[:, channel:channel + 1]
        return ts, np.maximum.accumulate(ts) if len(ts) else ts, data

    def _check_stream(self, k: int, st: XDFStreamInfo, gap_k: float, gap_min_s: float,
                      reset_s: float) -> None:
        src = st.role or st.name
        if st.n_samples == 0:
            self._event("xdf.empty_stream", f"stream {st.name!r} (type {st.type!r}) has no samples",
                        source=src, stream=st.name, stream_id=st.stream_id)
            return
        ts = np.asarray(self._raw[k]["time_stamps"], dtype=np.float64)
        segs = self._raw[k]["info"].get("clock_segments") or []
        for (_, _), (i1, _) in zip(segs, segs[1:]):
            self._event("xdf.clock_reset", f"stream {st.name!r}: the source clock was reset "
                        "(new clock-offset segment)", t=float(ts[i1]), source=src,
                        stream=st.name, via="clock_offsets", sample=int(i1))
        d = np.diff(ts)
        # An irregular stream's stamps are the times its samples are about (vnsloop-events
        # stamps an input's first sample, fed after the loop started): order is not promised,
        # and a reset there shows in its clock offsets.
        back = np.flatnonzero(d < -reset_s) if st.fs > 0 else ()
        for i in back[:MAX_EVENTS_PER_STREAM]:
            self._event("xdf.clock_reset", f"stream {st.name!r}: timestamps went back {-d[i]:.3f} s",
                        t=float(ts[i + 1]), source=src, stream=st.name, via="timestamps",
                        sample=int(i + 1))
        if st.fs > 0:
            gaps = np.flatnonzero(d > max(gap_k / st.fs, gap_min_s))
            for i in gaps[:MAX_EVENTS_PER_STREAM]:
                self._event("xdf.gap", f"stream {st.name!r}: {d[i]:.3f} s gap", t=float(ts[i]),
                            source=src, stream=st.name, gap_s=float(d[i]), sample=int(i + 1))
            if len(gaps) > MAX_EVENTS_PER_STREAM:
                self._event("xdf.gap", f"stream {st.name!r}: {len(gaps) - MAX_EVENTS_PER_STREAM} "
                            "more gaps not listed", source=src, stream=st.name,
                            n_gaps=int(len(gaps)), total_gap_s=float(d[gaps].sum()))
        if st.role in ROLE_RATES:
            lo, hi = ROLE_RATES[st.role]
            if not lo <= st.fs <= hi or (st.role == "ecg" and st.fs < ECG_MIN_GOOD_FS):
                self._event("xdf.rate", f"role {st.role!r}: stream {st.name!r} at {st.fs:g} Hz "
                            f"(contract {lo:g} to {hi:g} Hz"
                            + (f", R-peak timing coarse below {ECG_MIN_GOOD_FS:g} Hz)" if st.role == "ecg" else ")"),
                            source=src, fs=st.fs)

    # -- access -----------------------------------------------------------------------------
    def recorded(self, name: str) -> tuple[np.ndarray, np.ndarray | list] | None:
        """(timestamps, data) of a stream by name, e.g. the recorded `vnsloop-command`: data
        (n, channels) float64, or a list of str (one channel) / list of lists for strings."""
        for s, st in zip(self._raw, self.streams):
            if st.name == name:
                ts = np.asarray(s["time_stamps"], dtype=np.float64)
                if st.channel_format == "string":
                    rows = s["time_series"]
                    return ts, [r[0] for r in rows] if st.channel_count == 1 else [list(r) for r in rows]
                return ts, np.asarray(s["time_series"], dtype=np.float64).reshape(len(ts), -1)
        return None

    def chunks(self) -> list[Chunk]:
        """Each role's whole recording as one chunk (offline processing)."""
        return [Chunk(role, data, ts) for role, (ts, _, data) in self._data.items() if len(ts)]

    def replay(self, clock: VirtualClock, chunk_s: float = 0.1) -> Iterator[tuple[list[Chunk], list[Event]]]:
        """Steps of `chunk_s` through the recording, as fast as the consumer goes: before each
        yield the clock is advanced to the step's end, and the step holds every sample stamped
        in (previous end, end]. Stamps that go back stay in file order (the running maximum
        decides the step), so every sample is yielded once, in order."""
        if chunk_s <= 0:
            raise ValueError("chunk_s must be positive")
        n_steps = max(1, int(np.ceil(self.duration_s / chunk_s)))
        pos = dict.fromkeys(self._data, 0)
        ev_i = 0
        for step in range(1, n_steps + 1):
            t_end = self.t_end if step == n_steps else self.t_start + step * chunk_s
            clock.advance_to(t_end)
            out = []
            for role, (ts, env, data) in self._data.items():
                i0, i1 = pos[role], int(np.searchsorted(env, t_end, side="right"))
                if i1 > i0:
                    out.append(Chunk(role, data[i0:i1] if isinstance(data, list) else data[i0:i1].copy(),
                                     ts[i0:i1].copy()))
                    pos[role] = i1
            ev_j = ev_i
            while ev_j < len(self.events) and self.events[ev_j].t <= t_end:
                ev_j += 1
            yield out, self.events[ev_i:ev_j]
            ev_i = ev_j


class XDFRestreamer:
    """Plays a recording back as LSL outlets in real time (`vnsloop replay --realtime`).

    Names and source_ids get `suffix` so that the copies never bind in place of a live device;
    stamps are shifted into the local clock so that recording start maps to `run()` start.
    The controller's own recorded outputs are left out (the replayed controller makes new ones).
    """

    def __init__(self, path: str | Path, *, suffix: str = "-replay", chunk_s: float = 0.02):
        self.source = XDFSource(path)
        self.chunk_s = chunk_s
        self._stop = threading.Event()
        self._streams = []
        for s, st in zip(self.source._raw, self.source.streams):
            if st.n_samples == 0 or st.name in CONTROLLER_OUTPUTS:
                continue
            info = pylsl.StreamInfo(st.name + suffix, st.type, st.channel_count, st.fs,
                                    st.channel_format, (st.source_id or st.name) + suffix)
            ts = np.asarray(s["time_stamps"], dtype=np.float64)
            data = s["time_series"]
            if st.channel_format != "string":
                data = np.ascontiguousarray(np.asarray(data).reshape(len(ts), -1))
            self._streams.append((pylsl.StreamOutlet(info), ts, np.maximum.accumulate(ts), data))

    def run(self, seconds: float | None = None) -> None:
        """Push samples as their (shifted) time comes; returns at the end, after `seconds`,
        or when `stop()` is called from another thread."""
        t0_local = pylsl.local_clock()
        shift = t0_local - self.source.t_start
        t_stop = self.source.duration_s if seconds is None else min(seconds, self.source.duration_s)
        pos = [0] * len(self._streams)
        while not self._stop.is_set():
            elapsed = pylsl.local_clock() - t0_local
            t_rec = self.source.t_start + min(elapsed, t_stop)
            for j, (outlet, ts, env, data) in enumerate(self._streams):
                i0, i1 = pos[j], int(np.searchsorted(env, t_rec, side="right"))
                if i1 > i0:
                    outlet.push_chunk(data[i0:i1], (ts[i0:i1] + shift).tolist())
                    pos[j] = i1
            if elapsed >= t_stop:
                return
            time.sleep(self.chunk_s)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._streams = []


def _field(info: dict, key: str) -> str:
    v = info.get(key)
    return (v[0] if isinstance(v, list) and v else v) or ""


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".xdfz" or path.suffixes[-2:] == [".xdf", ".gz"]:
        with gzip.open(path, "rb") as f:
            try:
                return f.read()
            except EOFError:   # truncated gzip: nothing trustworthy to salvage cheaply
                return b"XDF:"
    return path.read_bytes()


def _complete_prefix(blob: bytes) -> tuple[int, str]:
    """Length of the run of whole chunks at the start, and why the rest is dropped ("" if none).

    Each XDF chunk is [NumLengthBytes (1, 4 or 8)][Length][Tag (2 bytes) + content]."""
    pos, n = 4, len(blob)
    while pos < n:
        nlb = blob[pos]
        if nlb not in (1, 4, 8):
            return pos, f"invalid chunk header at byte {pos}"
        if pos + 1 + nlb > n:
            break
        length = int.from_bytes(blob[pos + 1:pos + 1 + nlb], "little")
        end = pos + 1 + nlb + length
        if length < 2 or end > n:
            break
        pos = end
    else:
        return pos, ""
    return pos, f"file truncated inside the chunk at byte {pos}"


class _PyxdfErrors(logging.Handler):
    """Collects pyxdf's error log lines (it logs, then skips, damaged chunks)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self._logger = logging.getLogger("pyxdf.pyxdf")

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _PyxdfErrors:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
