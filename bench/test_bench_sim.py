"""Throughput of the virtual patient.

One 24 h advance at beat level, with respiration at 25 Hz (the lowest rate of the stream
contract, and the most the respiration processor needs) and EDA at 4 Hz: goal >= 1e6 x real
time. And the lockstep path: one advance per 0.25 s control tick (goal: overhead < 20 µs)."""

from sim.command import Stimulation
from sim.patient import VirtualPatient, warmup

OPEN = Stimulation(1.5, 20.0, 250.0, 30.0, 300.0, True)
DAY = 86400.0


def test_bench_24h_one_advance(benchmark):
    warmup()

    def day():
        p = VirtualPatient("fibromyalgia", 1)
        return p.advance(DAY, OPEN)

    out = benchmark.pedantic(day, rounds=5, iterations=1, warmup_rounds=1)
    best = benchmark.stats.stats.min
    print(f"\n24 h in {best * 1e3:.1f} ms: {DAY / best:,.0f}x real time "
          f"({len(out.beat_t)} beats, {len(out.resp)} resp samples)")
    assert len(out.beat_t) > 80_000


def test_bench_lockstep_ticks(benchmark):
    warmup()
    p = VirtualPatient("fibromyalgia", 1)
    n = 4000

    def ticks():
        t = p.t
        for k in range(1, n + 1):
            p.advance(t + 0.25 * k, OPEN)

    benchmark.pedantic(ticks, rounds=3, iterations=1)
    per = benchmark.stats.stats.min / n
    print(f"\nper 0.25 s tick: {per * 1e6:.1f} µs, {0.25 / per:,.0f}x real time")


def test_bench_supervised_oracle_candidate(benchmark):
    """One oracle candidate over a day held through the supervisor (`run_supervised`), against
    the same candidate on the patient alone (`run_fixed`) measured in the same run. Fibromyalgia
    seed 2 at its oracle setting: stopped by the bradycardia interlock every night."""
    import time

    from controller.oracle import run_fixed, run_supervised
    from controller.safety import SafetyLimits
    warmup()
    stim = Stimulation(1.75, 14.0, 250.0, 30.0, 300.0, True)
    alone = []
    for _ in range(3):
        t = time.perf_counter()
        run_fixed("fibromyalgia", 2, stim, DAY)
        alone.append(time.perf_counter() - t)
    run = benchmark.pedantic(lambda: run_supervised("fibromyalgia", 2, stim, DAY, SafetyLimits()),
                             rounds=3, iterations=1, warmup_rounds=1)
    best = benchmark.stats.stats.min
    print(f"\n1 day supervised in {best * 1e3:.0f} ms ({DAY / best:,.0f}x real time), "
          f"{best / min(alone):.1f}x the patient alone; {run.counters['interlock_stops']} "
          f"interlock stops")
    assert run.counters["interlock_stops"] > 0

