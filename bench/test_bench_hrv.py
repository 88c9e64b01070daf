"""Per-beat and per-chunk costs of the HRV and respiration paths (pytest-benchmark)."""
import numpy as np
import pytest

from signals.eda import EDAProcessor
from signals.hrv import HFIndex, StreamingHRV
from signals.resp import RespirationProcessor

ROUNDS = 3000       # fixed rounds: the machines are shared, calibration would take most of the time


def _run(benchmark, fn, rounds=ROUNDS):
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=50)


def _beats(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    rr = 850.0 + 40.0 * np.sin(np.arange(n) * 0.6) + 10.0 * rng.standard_normal(n)
    return np.cumsum(rr) / 1000.0, rr


def _feeder(update, t, rr):
    state = {"i": 0, "offset": 0.0}
    span = t[-1] + 1.0

    def step():
        i = state["i"]
        update(t[i] + state["offset"], rr[i])
        state["i"] = i + 1
        if state["i"] == len(t):       # keep time monotonic across rounds
            state["i"] = 0
            state["offset"] += span
    return step


def test_streaming_hrv_update_per_beat(benchmark):
    t, rr = _beats()
    s = StreamingHRV()
    for a, r in zip(t[:400], rr[:400]):
        s.update(a, r)
    _run(benchmark, _feeder(s.update, t, rr))


def test_streaming_hrv_update_and_features_per_beat(benchmark):
    """A beat plus a read of all features; the spectrum is recomputed every 5 s of beats."""
    t, rr = _beats()
    s = StreamingHRV()
    step = _feeder(s.update, t, rr)

    def beat():
        step()
        return s.features()
    beat()
    _run(benchmark, beat)


def test_hf_index_update_per_beat(benchmark):
    t, rr = _beats()
    h = HFIndex()
    _run(benchmark, _feeder(h.update, t, rr), rounds=500)


@pytest.mark.parametrize("fs, chunk", [(125.0, 12), (500.0, 50), (500.0, 1)])
def test_respiration_per_chunk(benchmark, fs, chunk):
    n = int(120 * fs)
    t = np.arange(n) / fs
    x = np.sin(2 * np.pi * 0.3 * t) + 0.05 * np.random.default_rng(1).standard_normal(n)
    p = RespirationProcessor(fs)
    state = {"i": 0, "offset": 0.0}

    def one_chunk():
        i = state["i"]
        p.process(x[i:i + chunk], t[i:i + chunk] + state["offset"])
        state["i"] = i + chunk
        if state["i"] + chunk > n:
            state["i"] = 0
            state["offset"] += t[-1] + 1.0 / fs
    p.process(x[:1000], t[:1000])
    state["i"] = 1000
    _run(benchmark, one_chunk)


def test_eda_per_chunk(benchmark):
    fs, chunk = 32.0, 8
    n = int(600 * fs)
    t = np.arange(n) / fs
    x = 5.0 + 0.01 * np.random.default_rng(2).standard_normal(n)
    p = EDAProcessor(fs)
    state = {"i": 0, "offset": 0.0}

    def one_chunk():
        i = state["i"]
        p.process(x[i:i + chunk], t[i:i + chunk] + state["offset"])
        state["i"] = i + chunk
        if state["i"] + chunk > n:
            state["i"] = 0
            state["offset"] += t[-1] + 1.0 / fs
    _run(benchmark, one_chunk)
