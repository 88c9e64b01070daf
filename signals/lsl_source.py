"""Live inputs: LSL inlets that yield `Chunk`s and report what goes wrong as `Event`s.

Clock handling, chosen deliberately:
- No liblsl post-processing (`proc_none`). `proc_clocksync` makes a pull block (~0.6 s on
  loopback) whenever liblsl has no time-correction estimate yet, which would stall the control
  loop at start and after a reconnection. We instead poll `inlet.time_correction(0.0)` (never
  blocks) and add the last good estimate ourselves; a jump in it is reported as a clock reset.
- No `proc_dejitter`: it fits a line to the stamps of a regularly sampled stream and would
  smear a gap over the following samples; gap detection needs the stamps as sent.
- No `proc_monotonize`: it would hide a clock reset (stamps going back) instead of reporting it.
The timestamps of a `Chunk` are therefore the sender's stamps mapped into the local LSL clock
domain. A sender that stamps in its own clock (not `local_clock()`) cannot be corrected by LSL;
we report it as `clock.skew` and leave the stamps alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pylsl
from pylsl.util import LostError, TimeoutError as LSLTimeoutError

from .chunk import Chunk
from .events import Event


@dataclass(frozen=True)
class StreamSpec:
    """How the config names an input: by name and/or type, pinned by source_id if given."""

    role: str
    name: str | None = None
    type: str | None = None
    source_id: str | None = None
    channel: int = 0

    def predicate(self) -> str:
        """XPath predicate liblsl resolves against each stream's <info>."""
        parts = [f"{key}={_xpath_literal(value)}"
                 for key, value in (("name", self.name), ("type", self.type),
                                    ("source_id", self.source_id)) if value]
        if not parts:
            raise ValueError(f"input {self.role!r}: give at least a name, type or source_id")
        return " and ".join(parts)

    def describe(self) -> str:
        return (f"role={self.role!r} name={self.name!r} type={self.type!r}"
                + (f" source_id={self.source_id!r}" if self.source_id else ""))


def _xpath_literal(s: str) -> str:
    if "'" not in s:
        return f"'{s}'"
    if '"' not in s:
        return f'"{s}"'
    raise ValueError(f"stream property {s!r} has both quote kinds; XPath 1.0 cannot match it")


def resolve_stream(spec: StreamSpec, timeout: float = 2.0, settle_s: float = 0.3) -> pylsl.StreamInfo:
    """The one stream that fits `spec`; RuntimeError if none or several do.

    After the first match we keep listening `settle_s` for a second one: LSL has no
    authentication, so two streams fitting a spec is refused rather than picked from.
    """
    pred = spec.predicate()
    found = pylsl.resolve_bypred(pred, minimum=1, timeout=timeout)
    if not found:
        raise RuntimeError(f"input {spec.role!r}: no LSL stream found within {timeout:g} s for "
                           f"{spec.describe()} (predicate {pred})")
    found += pylsl.resolve_bypred(pred, minimum=2, timeout=settle_s)
    unique = {info.uid(): info for info in found}
    if len(unique) > 1:
        cands = "; ".join(f"source_id={i.source_id()!r} host={i.hostname()!r} uid={i.uid()}"
                          for i in sorted(unique.values(), key=lambda i: (i.source_id(), i.hostname())))
        hint = ("pin `source_id` for this input in the config" if not spec.source_id else
                "several hosts publish this source_id; stop the impostor or pin name and type too")
        raise RuntimeError(f"input {spec.role!r}: {len(unique)} LSL streams fit {spec.describe()}: "
                           f"{cands}. Refusing an ambiguous match: {hint}.")
    return next(iter(unique.values()))


class LSLInlet:
    """One input stream: non-blocking pulls, own clock correction, health events.

    States: "ok" -> "stall" (no data for `stall_s`) -> "lost" (no data for `lost_s`, or
    LostError) -> back to "ok" with `stream.recovered` when data flows again. Silence is only
    a symptom for regular streams; for irregular ones (markers, RR) loss is judged by whether
    the stream is still visible on the network (a ContinuousResolver).
    """

    def __init__(self, spec: StreamSpec, info: pylsl.StreamInfo, *, max_chunk: int = 4096,
                 max_buflen: int = 60, open_timeout: float = 2.0, recover: bool = True,
                 gap_k: float = 10.0, gap_min_s: float = 0.05, stall_s: float = 0.5,
                 lost_s: float = 2.0, reset_s: float = 0.05, skew_s: float = 1.0,
                 tc_interval_s: float = 1.0):
        self.spec = spec
        self.name = info.name()
        self.source_id = info.source_id()
        self.hostname = info.hostname()
        self.fs = info.nominal_srate()
        self.channel_count = info.channel_count()
        self.is_string = info.channel_format() == pylsl.cf_string
        if not 0 <= spec.channel < self.channel_count:
            raise ValueError(f"input {spec.role!r}: channel {spec.channel} out of range; stream "
                             f"{self.name!r} has {self.channel_count} channel(s)")
        self.gap_s = max(gap_k / self.fs, gap_min_s) if self.fs > 0 else None
        self.stall_s, self.lost_s, self.reset_s, self.skew_s = stall_s, lost_s, reset_s, skew_s
        self.tc_interval_s = tc_interval_s
        self.max_chunk = max_chunk
        self.recover = recover

        self.inlet = pylsl.StreamInlet(info, max_buflen=max_buflen, recover=recover,
                                       processing_flags=pylsl.proc_none)
        self.inlet.open_stream(timeout=open_timeout)
        # The first estimate may take a few hundred ms; pay it here, never inside pull().
        try:
            self.offset = self.inlet.time_correction(timeout=open_timeout)
        except LSLTimeoutError:
            self.offset = 0.0
        self._buf = None if self.is_string else np.empty((max_chunk, self.channel_count),
                                                         dtype=self.inlet.np_dtype)
        self._watch = (None if self.fs > 0 else
                       pylsl.ContinuousResolver(pred=spec.predicate(), forget_after=lost_s))
        self._seen_on_network = False
        self.state = "ok"
        self._dead = False           # LostError with recover=False: the inlet will not come back
        self._skewed = False
        self._t_ref: float | None = None   # local time of the last data (or of the first pull)
        self._t_tc = -np.inf
        self._t_watch = -np.inf
        self._last_ts: float | None = None
        self.n_samples = 0

    def _event(self, now: float, kind: str, message: str, **data) -> Event:
        data.update(stream=self.name, source_id=self.source_id)
        return Event(now, kind, self.spec.role, message, data)

    def pull(self, now: float) -> tuple[Chunk | None, list[Event]]:
        """Whatever arrived since the last pull (never waits), and what went wrong."""
        events: list[Event] = []
        if self._t_ref is None:
            self._t_ref = now
        if self._dead:
            return None, events
        try:
            self._update_offset(now, events)
            if self.is_string:
                samples, ts = self.inlet.pull_chunk(0.0, self.max_chunk)
                n = len(ts)
                data = [s[self.spec.channel] for s in samples]
            else:
                view, ts = self.inlet.pull_chunk(0.0, self.max_chunk, dest_obj=self._buf,
                                                 as_numpy=True)
                n = len(ts)
                data = view[:, self.spec.channel:self.spec.channel + 1].astype(np.float64)
        except LostError:
            self._dead = True
            if self.state != "lost":
                self.state = "lost"
                events.append(self._event(now, "stream.lost",
                                          f"{self.name!r} lost (source gone, no recovery)",
                                          reason="lost_error"))
            return None, events
        if n == 0:
            self._check_silence(now, events)
            return None, events
        ts = np.asarray(ts, dtype=np.float64) + self.offset
        self._check_data(now, ts, events)
        self._t_ref = now
        self._last_ts = float(ts[-1])
        self.n_samples += n
        return Chunk(self.spec.role, data, ts), events

    def _update_offset(self, now: float, events: list[Event]) -> None:
        if now - self._t_tc < self.tc_interval_s:
            return
        self._t_tc = now
        try:
            tc = self.inlet.time_correction(timeout=0.0)
        except LSLTimeoutError:
            return  # no estimate yet after a reconnection: keep the last one
        if abs(tc - self.offset) > self.reset_s:
            events.append(self._event(now, "clock.reset",
                                      f"{self.name!r}: time correction jumped by {tc - self.offset:+.3f} s",
                                      via="time_correction", old=self.offset, new=tc))
        self.offset = tc

    def _check_data(self, now: float, ts: np.ndarray, events: list[Event]) -> None:
        if self.state != "ok":
            events.append(self._event(now, "stream.recovered",
                                      f"{self.name!r} flows again after {now - self._t_ref:.2f} s",
                                      after=self.state, silent_s=now - self._t_ref))
            self.state = "ok"
        full = ts if self._last_ts is None else np.concatenate(([self._last_ts], ts))
        d = np.diff(full)
        for i in np.flatnonzero(d < -self.reset_s):
            events.append(self._event(now, "clock.reset",
                                      f"{self.name!r}: timestamps went back {-d[i]:.3f} s",
                                      via="timestamps", t_before=full[i], t_after=full[i + 1]))
        if self.gap_s is not None:
            for i in np.flatnonzero(d > self.gap_s):
                events.append(self._event(now, "stream.gap",
                                          f"{self.name!r}: {d[i]:.3f} s gap in the data",
                                          gap_s=d[i], t_before=full[i], t_after=full[i + 1]))
        skew = float(ts[-1] - now)
        if abs(skew) > self.skew_s:
            if not self._skewed:
                events.append(self._event(now, "clock.skew",
                                          f"{self.name!r}: newest sample stamped {skew:+.3f} s from now",
                                          skew_s=skew))
            self._skewed = True
        else:
            self._skewed = False

    def _check_silence(self, now: float, events: list[Event]) -> None:
        silent = now - self._t_ref
        if self._watch is not None:
            if now - self._t_watch < 0.25:
                return
            self._t_watch = now
            visible = bool(self._watch.results())
            self._seen_on_network |= visible
            if visible and self.state == "lost":
                events.append(self._event(now, "stream.recovered",
                                          f"{self.name!r} visible again", after="lost",
                                          silent_s=silent))
                self.state = "ok"
            elif not visible and self._seen_on_network and self.state != "lost":
                self.state = "lost"
                events.append(self._event(now, "stream.lost",
                                          f"{self.name!r} no longer on the network",
                                          reason="not_visible", silent_s=silent))
            return
        if silent > self.lost_s and self.state != "lost":
            self.state = "lost"
            events.append(self._event(now, "stream.lost", f"{self.name!r}: no data for {silent:.2f} s",
                                      reason="silent", silent_s=silent))
        elif silent > self.stall_s and self.state == "ok":
            self.state = "stall"
            events.append(self._event(now, "stream.stall", f"{self.name!r}: no data for {silent:.2f} s",
                                      silent_s=silent))

    def close(self) -> None:
        # Inlets go before outlets (liblsl can hang otherwise); the owner drops us first.
        self.inlet = None
        self._watch = None
        self._dead = True


class LSLSource:
    """All configured inputs: resolves and opens them, `poll()` drains them without waiting."""

    def __init__(self, specs: list[StreamSpec], clock, *, resolve_timeout: float = 2.0,
                 settle_s: float = 0.3, **inlet_kw):
        roles = [s.role for s in specs]
        if len(set(roles)) != len(roles):
            raise ValueError(f"each role may be configured once, got {roles}")
        self.clock = clock
        errors, infos = [], {}
        for spec in specs:
            try:
                infos[spec.role] = resolve_stream(spec, resolve_timeout, settle_s)
            except RuntimeError as e:
                errors.append(str(e))
        if errors:
            raise RuntimeError("cannot bind the inputs:\n  " + "\n  ".join(errors))
        self.inlets = {spec.role: LSLInlet(spec, infos[spec.role], **inlet_kw) for spec in specs}

    def poll(self) -> tuple[list[Chunk], list[Event]]:
        now = self.clock.now()
        chunks, events = [], []
        for inlet in self.inlets.values():
            chunk, ev = inlet.pull(now)
            if chunk is not None:
                chunks.append(chunk)
            events.extend(ev)
        return chunks, events

    def close(self) -> None:
        for inlet in self.inlets.values():
            inlet.close()
        self.inlets = {}

    def __enter__(self) -> LSLSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
