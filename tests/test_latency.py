"""`vnsloop bench`: end-to-end latency over LSL between processes (small sample counts; the
real figures come from `vnsloop bench` with its default count)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("floor_us", "stop_us", "brady_us", "control_us")


@pytest.mark.lsl
def test_bench_cli_runs_and_every_stop_gets_an_off_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "controller.cli", "bench", "--samples", "30",
                          "--json", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=150, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for k in PATHS:
        st = res[k]
        assert set(st) == {"p50", "p99", "p999", "max", "n"}
        assert st["n"] > 0 and all(math.isfinite(st[q]) and st[q] > 0 for q in ("p50", "p99", "p999", "max"))
        assert st["p50"] <= st["p99"] <= st["p999"] <= st["max"]
    assert res["stop_us"]["n"] == 30 and res["missed_stop"] == 0     # every STOP switched off
    assert res["floor_us"]["n"] == 30
    assert res["brady_us"]["n"] == res["brady_trials"] and res["missed_brady"] == 0
    assert res["stop_us"]["p50"] < 50_000                                # loose: the machine is shared
    assert res["brady_us"]["p50"] < 100_000
    assert res["control_us"]["max"] < 1e6                                 # within a few ticks
    assert math.isfinite(res["ratio_p50"]) and math.isfinite(res["ratio_p99"])
    assert Path(res["histogram"]).is_file()
    print(f"\nfloor p50 {res['floor_us']['p50']:.0f} us, STOP p50 {res['stop_us']['p50']:.0f} us "
          f"(x{res['ratio_p50']:.2f}), p99 x{res['ratio_p99']:.2f}; brady p50 "
          f"{res['brady_us']['p50']:.0f} us; control p50 {res['control_us']['p50'] / 1000:.1f} ms")
