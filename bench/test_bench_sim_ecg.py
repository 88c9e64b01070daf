"""Throughput of the synthetic ECG, and the virtual patient's real-time factor with the ECG on.

Goal: the whole patient with ECG at 500 Hz runs at least 10,000 times faster than real time.
"""
import time

import numpy as np
import pytest

from sim.ecg_synth import ECGSynthesizer
from sim.ecg_synth import warmup as ecg_warmup
from sim.patient import VirtualPatient, warmup

FS = 500.0


@pytest.fixture(scope="module", autouse=True)
def compiled():
    warmup()
    ecg_warmup()


def _show(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


@pytest.mark.parametrize("chunk_s", [1.0, 60.0])
def test_ecg_synthesis_throughput(benchmark, capsys, chunk_s):
    rng = np.random.default_rng(0)
    rr = rng.normal(800.0, 50.0, 200_000)
    bt = np.cumsum(rr) / 1000.0
    synth = ECGSynthesizer(FS, 0)
    span = 600.0
    clock = {"t": 0.0}

    def render_span():
        t0 = clock["t"]
        edges = np.arange(t0, t0 + span + chunk_s / 2, chunk_s)
        idx = np.searchsorted(bt, edges, side="right")
        for a, b, i, j in zip(edges[:-1], edges[1:], idx[:-1], idx[1:]):
            synth.render(a, b, bt[i:j], rr[i:j])
        clock["t"] = edges[-1]

    benchmark.pedantic(render_span, rounds=5, iterations=1, warmup_rounds=1)
    rate = span * FS / benchmark.stats.stats.min
    benchmark.extra_info["samples_per_s"] = rate
    _show(capsys, f"ECG synthesis at {FS:g} Hz, {chunk_s:g} s chunks: {rate:.3g} samples/s "
                  f"({rate / FS:.3g}x real time)")
    assert rate > 5e6


@pytest.mark.parametrize("step_s", [1.0, 10.0])
def test_patient_realtime_factor_with_ecg(benchmark, capsys, step_s):
    hours = 1.0
    seconds = hours * 3600.0

    def run():
        p = VirtualPatient("fibromyalgia", 0, ecg_fs=FS)
        for t in np.arange(step_s, seconds + step_s / 2, step_s):
            p.advance(float(t))

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    factor = seconds / benchmark.stats.stats.min
    t0 = time.perf_counter()
    p = VirtualPatient("fibromyalgia", 0)
    for t in np.arange(step_s, seconds + step_s / 2, step_s):
        p.advance(float(t))
    factor_no_ecg = seconds / (time.perf_counter() - t0)
    benchmark.extra_info.update(realtime_factor=factor, realtime_factor_without_ecg=factor_no_ecg)
    _show(capsys, f"patient with ECG at {FS:g} Hz, {step_s:g} s steps: {factor:,.0f}x real time "
                  f"(without ECG: {factor_no_ecg:,.0f}x)")
    assert factor >= 10_000
