"""The live controller on LSL: `vnsloop run --config rig.toml [--record FILE.xdf]`.

`run_realtime` drives a `ControlLoop` from LSL inlets on the LSL clock. Operator markers get
their own thread blocked on the inlet, so that a STOP leaves as a command within the time LSL
itself needs, not at the next poll. Whatever ends the run (its duration, Ctrl-C, a lost
stream, an exception), the last command sent is "off" and the recording is closed cleanly.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path

import pylsl

from controller.config import Config, load_config
from controller.outlets import LSLOutputs
from controller.recording import Recorder
from controller.runtime import ControlLoop
from controller.summary import progress
from signals.clock import LSLClock
from signals.lsl_source import LSLSource, StreamSpec

POLL_S = 0.002


class OperatorWatcher(threading.Thread):
    """Blocks on the operator marker inlet and hands each marker to the loop at once."""

    def __init__(self, inlet: pylsl.StreamInlet, handle, stop: threading.Event):
        super().__init__(daemon=True, name="operator-watcher")
        self.inlet, self.handle, self.stop_flag = inlet, handle, stop

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                sample, ts = self.inlet.pull_sample(timeout=0.2)
            except pylsl.LostError:
                continue
            if sample is not None:
                self.handle(float(ts), str(sample[0]))


def run_realtime(config: Config, *, seconds: float | None, record: str | None = None,
                 extra_record_ids: list[str] | None = None,
                 source_id: str | None = None, resolve_timeout: float = 5.0) -> dict:
    clock = LSLClock()
    specs = [StreamSpec(role=role, **spec) for role, spec in config.stream_specs().items()]
    source = LSLSource(specs, clock, resolve_timeout=resolve_timeout)
    outputs = LSLOutputs(source_id=source_id, tick_hz=config.tick_hz)
    input_ids = [inlet.source_id for inlet in source.inlets.values()]
    ControlLoop.warm_up(config, {role: inlet.fs for role, inlet in source.inlets.items()})
    recorder = None
    if record:
        ids = [*input_ids, *outputs.stream_source_ids.values(), *(extra_record_ids or [])]
        recorder = Recorder(record, ids)
        recorder.start()
        # What arrived before LabRecorder subscribed is not in the file: start the loop on
        # data the recording also holds, so that a replay sees the same inputs. One pull is
        # bounded by the inlet's chunk size, so drain until nothing is left.
        while source.poll()[0]:
            pass
    t0 = clock.now()
    loop = ControlLoop(config, outputs, t0)
    for role, inlet in source.inlets.items():
        if inlet.fs > 0:
            loop.set_input_rate(role, inlet.fs)
    lock = threading.Lock()
    stop = threading.Event()

    def on_operator(t: float, text: str) -> None:
        with lock:
            loop.operator(t + operator.offset, text)

    watcher = None
    operator = source.inlets.pop("operator", None)  # served by its own thread, not by poll()
    if operator is not None:
        watcher = OperatorWatcher(operator.inlet, on_operator, stop)
        watcher.start()


    interrupted = {"sig": None}

    def on_signal(signum, _frame):
        interrupted["sig"] = signum
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    tick_s = 1.0 / config.tick_hz
    next_tick = t0 + tick_s
    next_progress = t0 + 10.0
    end = t0 + seconds if seconds else float("inf")
    stop_reason = "duration"
    try:
        while not stop.is_set():
            now = clock.now()
            if now >= end:
                break
            chunks, events = source.poll()
            with lock:
                # A lost ECG/RR stream needs no branch here: the supervisor's stale-input
                # rule holds, then stops, from the beat times alone.
                for ev in events:
                    loop.event(ev)
                for chunk in chunks:
                    loop.feed(chunk)
                if now >= next_tick:
                    loop.tick(now)
                    next_tick += tick_s
                    if next_tick < now:  # we fell behind: do not burst ticks to catch up
                        next_tick = now + tick_s
            if now >= next_progress:
                progress(f"  t={now - t0:6.1f} s  beats={loop.beats}  commands={loop.n_commands}"
                         f"  amp={loop.supervisor.last.stim.amplitude_mA:.2f} mA"
                         f"  pain={loop.state.pain_mean:.2f}±{loop.state.pain_sd:.2f}")
                next_progress += 10.0
            clock.sleep_until(min(next_tick, now + POLL_S))
        if interrupted["sig"] is not None:
            stop_reason = "interrupted"
    except Exception as e:  # stop safely, keep the recording, then let the error out
        stop_reason = f"error: {e}"
        raise
    finally:
        stop.set()
        with lock:
            t_end = clock.now()
            loop.stop(t_end, stop_reason)
        if watcher is not None:
            watcher.join(1.0)
        # Give LabRecorder a moment to receive the final samples before closing the file.
        if recorder is not None:
            threading.Event().wait(0.5)
            recorder.stop()
        for s, h in old.items():
            signal.signal(s, h)
        source.close()
        if operator is not None:
            operator.close()
    return {"loop": loop, "outputs": outputs, "t0": t0, "t_end": t_end,
            "stop_reason": stop_reason, "xdf": str(record) if record else None}


def run_rig_command(args) -> dict:
    config = load_config(args.config)
    res = run_realtime(config, seconds=args.seconds, record=args.record)
    loop: ControlLoop = res["loop"]
    ticks = loop.tick_stats_us()
    out = {"seconds": res["t_end"] - res["t0"], "commands": loop.n_commands,
           "beats": loop.beats, "safety_interventions": sum(
               e.kind.startswith("safety.") for e in res["outputs"].events),
           "stop_reason": res["stop_reason"], "xdf": res["xdf"],
           "tick_p50_us": ticks["p50"], "tick_p99_us": ticks["p99"]}
    if args.record:
        from controller.session_report import plot_session_report
        out["report"] = str(plot_session_report(Path(args.record), Path(args.out)))
    return out

