"""End-to-end latency over LSL between processes: `vnsloop bench [--samples N]`.

The bench process is producer and consumer on one clock (`pylsl.local_clock()`); the
controller runs in another process (`python -m controller.latency --serve SPEC.json`, which
calls `controller.rig.run_realtime` on a Config whose inputs are the bench's RR and operator
outlets), and a raw echo runs in a third (`--echo`). A receiving thread per inlet blocks in
`pull_sample` and stamps each arrival with `local_clock()` at once.

Paths, each as push-to-arrival in microseconds:
- floor: a marker pushed to the echo process and a command-shaped sample pushed back (blocking
  pull_sample + push_sample, the stream formats of the STOP path: a string marker in, seven
  doubles out): what LSL itself costs for those two hops between processes, in the same run;
- STOP: "STOP" on the operator stream while stimulating, to the first command with
  enabled = 0; then "RESUME" and wait until enabled again before the next trial;
- bradycardia: an RR sample of 1500 ms (40 bpm) while stimulating, to the first command with
  enabled = 0. The supervisor then locks out for at least 10 min (`safety.lockout_s` may only
  be lengthened), so each trial needs a fresh controller: the serving process restarts its
  `run_realtime` (new outlets, new source_id) after each one; fewer trials than the others;
- control: an ordinary RR beat (pushed every ~0.8 s in the background, so that the input is
  never stale) to the next command, i.e. the next control tick; dominated by the tick phase
  (uniform over one tick period), reported for completeness.

Floor and STOP trials alternate, each after its own random pause of 0 to 10 ms, so that both
start from the same idle state (a push after idle costs more than one right after another).

The bench's controller config: open loop without waiting for the HRV baseline
(`policy.open.wait_for_baseline = false`), so that it stimulates from the first tick, at a
10 Hz tick; `sys.setswitchinterval` may be lowered (`switch_interval_s`; off by default: 5e-4
and 5e-5 s made no difference beyond the noise on the shared 2-core machines).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl

from controller.summary import progress
from controller.types import COMMAND_CHANNELS

BRADY_RR_MS = 1500.0
NORMAL_RR_MS = 800.0
ROOT = Path(__file__).resolve().parents[1]
CMD_ENABLED = COMMAND_CHANNELS.index("enabled")


# ---- helpers for the three processes -------------------------------------------------------

def _resolve_one(source_id: str, timeout: float) -> pylsl.StreamInfo:
    found = pylsl.resolve_bypred(f"source_id='{source_id}'", 1, timeout)
    if not found:
        raise RuntimeError(f"no LSL stream with source_id {source_id!r} within {timeout:g} s")
    return found[0]


class Collector(threading.Thread):
    """Blocks in pull_sample on one inlet; stamps each arrival with local_clock() at once."""

    def __init__(self, info: pylsl.StreamInfo, name: str):
        super().__init__(daemon=True, name=f"collect-{name}")
        self.inlet = pylsl.StreamInlet(info, max_buflen=30, processing_flags=pylsl.proc_none)
        self.inlet.open_stream(timeout=5.0)
        self.items: list[tuple[float, list]] = []
        self.cond = threading.Condition()
        self._halt = threading.Event()

    def run(self) -> None:
        inlet = self.inlet
        clock = pylsl.local_clock
        while not self._halt.is_set():
            try:
                sample, _ts = inlet.pull_sample(timeout=0.2)
            except pylsl.LostError:
                break
            if sample is None:
                continue
            t = clock()
            with self.cond:
                self.items.append((t, sample))
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.items)

    def wait_for(self, start: int, pred, timeout: float) -> tuple[int, float, list] | None:
        """The first item at index >= start with pred(sample), waiting up to timeout."""
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.items):
                    t, s = self.items[i]
                    if pred(s):
                        return i, t, s
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        self._halt.set()
        self.join(1.0)
        inlet, self.inlet = self.inlet, None
        del inlet


def _stdin_eof_watch(on_eof) -> None:
    def run():
        try:
            while sys.stdin.readline():
                pass
        except (OSError, ValueError):
            pass
        on_eof()
    threading.Thread(target=run, daemon=True, name="stdin-watch").start()


def serve_echo(in_sid: str, out_sid: str) -> None:
    """The floor: blocking pull_sample, push_sample at once; ends when stdin closes."""
    quit_ = threading.Event()
    _stdin_eof_watch(quit_.set)
    info = _resolve_one(in_sid, 20.0)
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(f"bench-echo-out-{out_sid}", "Bench",
                                                 len(COMMAND_CHANNELS), pylsl.IRREGULAR_RATE,
                                                 "double64", out_sid))
    inlet = pylsl.StreamInlet(info, max_buflen=30, processing_flags=pylsl.proc_none)
    inlet.open_stream(timeout=5.0)
    print("READY", flush=True)
    reply = [0.0] * len(COMMAND_CHANNELS)
    while not quit_.is_set():
        sample, _ = inlet.pull_sample(timeout=0.2)
        if sample is not None:
            reply[0] = float(sample[0])
            outlet.push_sample(reply, 0.0, True)
    del inlet
    del outlet


def serve_controller(spec_path: str) -> None:
    """`run_realtime` on the bench's inputs, restarted (new source_id `<base>-c<k>`) whenever
    it is stopped by SIGINT; ends when stdin closes."""
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("switch_interval_s"):
        sys.setswitchinterval(float(spec["switch_interval_s"]))
    from controller.config import Config
    from controller.rig import run_realtime

    config = Config.from_dict(spec["config"])
    quit_ = threading.Event()

    def on_eof():
        quit_.set()
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGINT, lambda *_: None)   # between cycles a SIGINT only ends waits
    _stdin_eof_watch(on_eof)
    k = 0
    while not quit_.is_set():
        sid = f"{spec['source_id']}-c{k}"
        res = run_realtime(config, seconds=spec.get("seconds"), source_id=sid, resolve_timeout=20.0)
        loop = res["loop"]
        print(json.dumps({"cycle": k, "source_id": sid, "stop_reason": res["stop_reason"],
                          "commands": loop.n_commands, "beats": loop.beats,
                          "tick_us": loop.tick_stats_us()},
                         default=float), flush=True)
        res["outputs"].close()
        k += 1


# ---- the bench -----------------------------------------------------------------------------

def _stats(us: list[float]) -> dict:
    a = np.asarray(us, float)
    if a.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "p999": float("nan"),
                "max": float("nan"), "n": 0}
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "p999": float(np.percentile(a, 99.9)), "max": float(a.max()), "n": int(a.size)}


class _Proc:
    def __init__(self, argv: list[str], name: str):
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.name = name
        self.p = subprocess.Popen([sys.executable, "-m", "controller.latency", *argv],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=str(ROOT), env=env)
        self.lines: list[str] = []
        self.err: list[str] = []
        threading.Thread(target=self._read, args=(self.p.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True).start()

    @staticmethod
    def _read(fh, sink):
        for line in fh:
            sink.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self.p.poll() is None

    def interrupt(self) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGINT)

    def close(self, timeout: float = 5.0) -> None:
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()

    def tail(self) -> str:
        return " | ".join((self.err + self.lines)[-6:])


def _enabled(s) -> bool:
    return s[CMD_ENABLED] > 0.5


def run_bench(samples: int = 300, *, brady: int | None = None, out: str | Path | None = "reports",
              switch_interval_s: float | None = None, tick_hz: float = 10.0,
              start_timeout: float = 60.0) -> dict:
    """Measure the four paths (module doc); returns the figures and the histogram path."""
    if samples < 1:
        raise ValueError("--samples must be at least 1")
    n_brady = brady if brady is not None else max(3, min(20, samples // 100))
    uid = uuid.uuid4().hex[:10]
    rr_sid, op_sid = f"bench-rr-{uid}", f"bench-op-{uid}"
    ein_sid, eout_sid = f"bench-echo-in-{uid}", f"bench-echo-out-{uid}"
    ctl_sid = f"bench-ctl-{uid}"
    rr_out = pylsl.StreamOutlet(pylsl.StreamInfo(f"bench-RR-{uid}", "RR", 1, pylsl.IRREGULAR_RATE,
                                                 "float32", rr_sid))
    op_out = pylsl.StreamOutlet(pylsl.StreamInfo(f"bench-operator-{uid}", "Markers", 1,
                                                 pylsl.IRREGULAR_RATE, "string", op_sid))
    echo_out = pylsl.StreamOutlet(pylsl.StreamInfo(f"bench-echo-in-{uid}", "Markers", 1,
                                                   pylsl.IRREGULAR_RATE, "string", ein_sid))
    rr_lock = threading.Lock()
    beat_pushes: list[float] = []
    stop_feed = threading.Event()

    def push_rr(rr_ms: float) -> float:
        with rr_lock:
            t = pylsl.local_clock()
            rr_out.push_sample([rr_ms], t, True)
            return t

    def feeder():
        rng = np.random.default_rng(0)
        while not stop_feed.is_set():
            rr = NORMAL_RR_MS + 30.0 * rng.standard_normal()
            beat_pushes.append(push_rr(rr))
            stop_feed.wait(rr / 1000.0)

    cfg = {"loop": {"tick_hz": tick_hz},
           "streams": {"rr": {"type": "RR", "source_id": rr_sid},
                       "operator": {"type": "Markers", "source_id": op_sid}},
           "policy": {"kind": "open", "open": {"amplitude_mA": 1.0, "train_on_s": 30.0,
                                               "train_off_s": 30.0,
                                               "wait_for_baseline": False}}}
    out_dir = Path(out) if out else Path(".")
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / f"bench-serve-{uid}.json"
    spec_path.write_text(json.dumps({"config": cfg, "source_id": ctl_sid,
                                     "switch_interval_s": switch_interval_s}))
    procs: list[_Proc] = []
    collectors: list[Collector] = []
    feed_th = threading.Thread(target=feeder, daemon=True, name="rr-feeder")
    floor, stop_lat, brady_lat, control = [], [], [], []
    missed_stop = missed_brady = resume_timeouts = 0
    cycles = 0
    t_begin = time.monotonic()
    try:
        feed_th.start()
        echo = _Proc(["--echo", ein_sid, eout_sid], "echo")
        ctl = _Proc(["--serve", str(spec_path)], "controller")
        procs += [echo, ctl]
        echo_c = Collector(_resolve_one(eout_sid, start_timeout), "echo")
        echo_c.start()
        collectors.append(echo_c)

        def connect(k: int) -> Collector:
            try:
                info = _resolve_one(f"{ctl_sid}-c{k}-command", start_timeout)
            except RuntimeError:
                raise RuntimeError(f"the bench controller did not come up (cycle {k}): "
                                   f"{ctl.tail()}") from None
            c = Collector(info, f"cmd{k}")
            c.start()
            collectors.append(c)
            if c.wait_for(0, _enabled, 15.0) is None:
                raise RuntimeError(f"the bench controller (cycle {k}) did not enable stimulation "
                                   f"within 15 s: {ctl.tail()}")
            return c

        cmd = connect(0)
        # the echo process must be listening before the first floor trial
        for _ in range(100):
            if echo_c.wait_for(echo_c.mark(), lambda s: True, 0.0) is None and "READY" in echo.lines:
                break
            time.sleep(0.05)
        progress(f"bench: controller and echo up after {time.monotonic() - t_begin:.1f} s; "
                 f"{samples} STOP and floor trials, {n_brady} bradycardia trials")
        rng = np.random.default_rng(1)
        first_beat = len(beat_pushes)
        t_cmd_start = pylsl.local_clock()
        for i in range(samples):
            time.sleep(float(rng.uniform(0.0, 0.01)))
            m0 = echo_c.mark()
            t0 = pylsl.local_clock()
            echo_out.push_sample([str(i)], t0, True)
            got = echo_c.wait_for(m0, lambda s, v=float(i): s[0] == v, 2.0)
            if got is not None:
                floor.append((got[1] - t0) * 1e6)
            # stimulating now (the last command received was enabled)
            time.sleep(float(rng.uniform(0.0, 0.01)))
            n0 = cmd.mark()
            t0 = pylsl.local_clock()
            op_out.push_sample(["STOP"], t0, True)
            got = cmd.wait_for(n0, lambda s: not _enabled(s), 2.0)
            if got is None:
                missed_stop += 1
            else:
                stop_lat.append((got[1] - t0) * 1e6)
            n0 = cmd.mark()
            op_out.push_sample(["RESUME"], pylsl.local_clock(), True)
            if cmd.wait_for(n0, _enabled, 5.0) is None:
                resume_timeouts += 1
                if cmd.wait_for(cmd.mark(), _enabled, 10.0) is None:
                    raise RuntimeError(f"stimulation did not resume after trial {i}: {ctl.tail()}")
            if (i + 1) % 200 == 0:
                progress(f"  trial {i + 1}/{samples}: STOP p50 {np.median(stop_lat):.0f} us, "
                         f"floor p50 {np.median(floor):.0f} us")
        # control path: each background beat to the next command that arrived after it
        with cmd.cond:
            arrivals = np.array([t for t, _ in cmd.items])
        pushes = np.array(beat_pushes[first_beat:])
        pushes = pushes[pushes > t_cmd_start]
        j = np.searchsorted(arrivals, pushes, side="right")
        ok = j < len(arrivals)
        control = ((arrivals[j[ok]] - pushes[ok]) * 1e6).tolist()

        for b in range(n_brady):
            time.sleep(float(rng.uniform(0.0, 0.05)))
            n0 = cmd.mark()
            t0 = push_rr(BRADY_RR_MS)
            got = cmd.wait_for(n0, lambda s: not _enabled(s), 2.0)
            if got is None:
                missed_brady += 1
            else:
                brady_lat.append((got[1] - t0) * 1e6)
            if b + 1 < n_brady:   # locked out for >= 10 min: a fresh controller for the next
                ctl.interrupt()
                cycles += 1
                old, cmd = cmd, connect(cycles)
                old.close()
                collectors.remove(old)
    finally:
        stop_feed.set()
        for c in collectors:     # inlets first, then the processes that own the outlets
            c.close()
        for p in procs:
            p.close()
        feed_th.join(2.0)
        del rr_out, op_out, echo_out
        try:
            spec_path.unlink()
        except OSError:
            pass
    wall = time.monotonic() - t_begin
    res = {"floor_us": _stats(floor), "stop_us": _stats(stop_lat), "brady_us": _stats(brady_lat),
           "control_us": _stats(control)}
    f, s = res["floor_us"], res["stop_us"]
    res["ratio_p50"] = s["p50"] / f["p50"] if f["n"] and s["n"] else float("nan")
    res["ratio_p99"] = s["p99"] / f["p99"] if f["n"] and s["n"] else float("nan")
    res.update({"samples": samples, "missed_stop": missed_stop, "missed_brady": missed_brady,
                "resume_timeouts": resume_timeouts, "brady_trials": n_brady,
                "controller_restarts": cycles, "tick_hz": tick_hz,
                "switch_interval_s": switch_interval_s, "wall_s": wall,
                "goal_met": bool(res["ratio_p50"] <= 1.25 and res["ratio_p99"] <= 1.5)})
    if out:
        res["histogram"] = str(plot_histogram(
            {"floor (echo)": floor, "STOP": stop_lat, "bradycardia": brady_lat},
            control, out_dir / f"bench-latency-{uid}.png", res))
    else:
        res["histogram"] = None
    return res


def plot_histogram(paths: dict[str, list[float]], control: list[float], png: Path,
                   res: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    vals = [v for v in paths.values() if len(v)]
    if vals:
        lo = max(1.0, min(min(v) for v in vals) * 0.8)
        hi = max(max(v) for v in vals) * 1.2
        bins = np.geomspace(lo, max(hi, lo * 2), 60)
        for name, v in paths.items():
            if len(v):
                st = _stats(v)
                ax[0].hist(v, bins=bins, histtype="step", lw=1.5,
                           label=f"{name}: p50 {st['p50']:.0f}, p99 {st['p99']:.0f} us (n={st['n']})")
        ax[0].set_xscale("log")
    ax[0].set_xlabel("push to arrival (us)")
    ax[0].set_ylabel("trials")
    ax[0].legend(fontsize=8)
    ax[0].set_title(f"STOP / floor: p50 x{res['ratio_p50']:.2f}, p99 x{res['ratio_p99']:.2f}",
                    fontsize=10)
    if control:
        ax[1].hist(np.asarray(control) / 1000.0, bins=30)
    ax[1].set_xlabel("input beat to next command (ms)")
    ax[1].set_title(f"control path (tick {res['tick_hz']:g} Hz)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def run_bench_command(args) -> dict:
    res = run_bench(int(args.samples), out=getattr(args, "out", "reports") or "reports")
    rows = []
    for k in ("floor_us", "stop_us", "brady_us", "control_us"):
        st = res[k]
        res[f"{k[:-3]}_p50_us"] = st["p50"]
        res[f"{k[:-3]}_p99_us"] = st["p99"]
        rows += [f"{k[:-3]}_p50_us", f"{k[:-3]}_p99_us"]
    res["_table_keys"] = [*rows, "ratio_p50", "ratio_p99", "missed_stop", "missed_brady",
                          "brady_trials", "wall_s", "histogram"]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="vnsloop latency bench helpers")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--serve", metavar="SPEC.json", help="run the bench controller")
    g.add_argument("--echo", nargs=2, metavar=("IN_SOURCE_ID", "OUT_SOURCE_ID"),
                   help="raw LSL echo (the floor)")
    a = p.parse_args(argv)
    if a.serve:
        serve_controller(a.serve)
    else:
        serve_echo(*a.echo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
