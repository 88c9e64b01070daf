"""Signal-path throughput: the streaming R-peak detector fed 32-sample chunks (a typical LSL
chunk) against NeuroKit2's offline clean + peaks on the same record, in the same run."""
from __future__ import annotations

import time

import numpy as np
import pytest

from signals.ecg import RPeakDetector

CHUNK = 32


@pytest.fixture(scope="module")
def record_100(shared_data):
    d = np.load(shared_data / "mitdb" / "100.npz")
    return d["ecg"].astype(np.float64), float(d["fs"])


def _best_of(fn, rounds=3):
    fn()  # warm-up (JIT, caches)
    best = np.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_bench_detector_vs_neurokit(benchmark, record_100):
    nk = pytest.importorskip("neurokit2")
    x, fs = record_100
    chunks = [x[i:i + CHUNK] for i in range(0, x.size, CHUNK)]

    def ours():
        det = RPeakDetector(fs)
        for c in chunks:
            det.process(c)

    def theirs():
        nk.ecg_peaks(nk.ecg_clean(x, sampling_rate=fs), sampling_rate=fs)

    t_nk = _best_of(theirs)
    ours()  # JIT warm-up outside the measurement
    benchmark.pedantic(ours, rounds=5, iterations=1)
    t_ours = benchmark.stats.stats.min
    ratio = t_nk / t_ours
    per_chunk_us = 1e6 * t_ours / len(chunks)
    benchmark.extra_info.update(samples_per_s=x.size / t_ours, nk_samples_per_s=x.size / t_nk,
                                ratio_vs_neurokit=ratio, us_per_chunk=per_chunk_us)
    print(f"\ndetector, chunks of {CHUNK}: {x.size / t_ours / 1e6:.2f} Msamples/s, "
          f"{per_chunk_us:.2f} us per chunk ({1e6 * CHUNK / fs:.0f} us of signal); NeuroKit2 "
          f"clean+peaks (offline): {x.size / t_nk / 1e6:.2f} Msamples/s; ratio {ratio:.2f}x")
    assert per_chunk_us < 1e6 * CHUNK / fs / 100  # at least 100x faster than real time
