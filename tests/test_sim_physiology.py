"""The virtual patient against physiology: resting heart rate and HRV in adult ranges (checked
with NeuroKit2), RSA at the breathing rate, the neural fulcrum, analgesia over days, side
effects, reports, and bit-for-bit reproducibility."""
import dataclasses

import numpy as np
import pytest
from scipy.signal import welch

from sim.command import OFF, Stimulation
from sim.envelope import check_command
from sim.patient import VirtualPatient
from sim.profiles import PROFILES, patient_params

OPEN = Stimulation(1.5, 20.0, 250.0, 30.0, 300.0, True)
DAY = 86400.0


def run(profile, seed, seconds, stim=OFF, **kw):
    p = VirtualPatient(profile, seed, **kw)
    return p, p.advance(seconds, stim)


def hrv_nk(beat_t):
    nk = pytest.importorskip("neurokit2")
    peaks = np.round((beat_t - beat_t[0]) * 1000.0).astype(int) + 1000
    t = nk.hrv_time(peaks, sampling_rate=1000)
    f = nk.hrv_frequency(peaks, sampling_rate=1000)
    return float(t["HRV_RMSSD"].iloc[0]), float(f["HRV_LFHF"].iloc[0]), float(f["HRV_HF"].iloc[0])


@pytest.mark.parametrize("profile", ["fibromyalgia", "migraine", "non_responder",
                                     "cardiac_sensitive", "healthy"])
def test_resting_heart_rate_is_adult(profile):
    for seed in (0, 1, 2):
        _, o = run(profile, seed, 300.0)
        hr = 60000.0 / np.mean(o.rr_ms)
        assert 55.0 <= hr <= 90.0, (profile, seed, hr)


@pytest.mark.parametrize("profile,seed", [("healthy", 0), ("healthy", 3), ("fibromyalgia", 2)])
def test_hf_peak_sits_at_the_breathing_rate(profile, seed):
    _, o = run(profile, seed, 900.0)
    fs = 4.0
    tg = np.arange(o.beat_t[1], o.beat_t[-1], 1.0 / fs)
    rr = np.interp(tg, o.beat_t, o.rr_ms)
    f, pxx = welch(rr - rr.mean(), fs=fs, nperseg=512)
    band = (f >= 0.15) & (f <= 0.4)
    f_peak = f[band][np.argmax(pxx[band])]
    f_resp = np.mean(o.truth["resp_rate_bpm"]) / 60.0
    assert abs(f_peak - f_resp) <= 0.03, (f_peak, f_resp)
    # the true exhalation onsets come at the breathing rate too
    assert abs(1.0 / np.median(np.diff(o.exhalation_onsets)) - f_resp) < 0.03


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hrv_in_normal_adult_ranges_by_neurokit(seed):
    _, o = run("healthy", seed, 360.0)
    rmssd, lfhf, _ = hrv_nk(o.beat_t)
    assert 15.0 <= rmssd <= 80.0, rmssd
    assert 0.3 <= lfhf <= 6.0, lfhf


def test_fibromyalgia_has_lower_hrv_than_healthy():
    for seed in (0, 1):
        _, fib = run("fibromyalgia", seed, 360.0)
        _, hea = run("healthy", seed, 360.0)
        r_f, _, hf_f = hrv_nk(fib.beat_t)
        r_h, _, hf_h = hrv_nk(hea.beat_t)
        assert r_f < 0.8 * r_h, (r_f, r_h)
        assert hf_f < hf_h
        assert np.mean(fib.truth["vagal"]) < np.mean(hea.truth["vagal"])
        assert np.mean(fib.truth["pain"]) > np.mean(hea.truth["pain"]) + 4.0


def on_off_hr_change(profile, seed, amp, seconds=1800.0):
    """Acute HR change of ON trains (60 s on / 60 s off, 20 Hz, 250 µs): ON minus OFF beats,
    minus the same for the unstimulated twin (which removes the slow analgesic effect)."""
    stim = Stimulation(amp, 20.0, 250.0, 60.0, 60.0, True)
    _, s = run(profile, seed, seconds, stim)
    _, b = run(profile, seed, seconds)

    def on_minus_off(o):
        phase = np.mod(o.beat_t, 120.0)
        hr = 60000.0 / o.rr_ms
        return (np.mean(hr[(phase > 3.0) & (phase < 60.0)])
                - np.mean(hr[(phase > 63.0) & (phase < 120.0)]))
    return on_minus_off(s) - on_minus_off(b)


def test_neural_fulcrum():
    d = {a: on_off_hr_change("fibromyalgia", 0, a) for a in (1.0, 2.0, 3.0, 3.5)}
    assert 0.3 < d[1.0] < 4.0, d         # small afferent tachycardia below the fulcrum
    assert d[3.0] < -3.0, d               # growing efferent bradycardia above it
    assert d[3.5] < d[3.0] < d[2.0] < d[1.0], d
    # a cardiac-sensitive patient crosses the fulcrum at a lower amplitude
    assert on_off_hr_change("cardiac_sensitive", 0, 2.0) < d[2.0] - 3.0


def test_efferent_effect_grows_with_frequency():
    d5 = on_off_hr_change_f(5.0)
    d30 = on_off_hr_change_f(30.0)
    assert d30 < d5 - 2.0, (d5, d30)


def on_off_hr_change_f(freq):
    stim = Stimulation(3.0, freq, 250.0, 60.0, 60.0, True)
    _, s = run("fibromyalgia", 0, 1200.0, stim)
    on = s.truth["stim_on"] > 0.5
    return np.mean(s.truth["hr_bpm"][on]) - np.mean(s.truth["hr_bpm"][~on])


def relief(profile, seed, days=4.0):
    ps, s = run(profile, seed, days * DAY, OPEN, resp_fs=0.0, eda_fs=0.0, truth_dt=10.0)
    pb, b = run(profile, seed, days * DAY, OFF, resp_fs=0.0, eda_fs=0.0, truth_dt=10.0)
    return s, b, ps, pb


def pain_reduction(s, b):
    return np.mean(b.truth["pain"]) - np.mean(s.truth["pain"])


def test_open_loop_relieves_fibromyalgia_over_days():
    s, b, ps, pb = relief("fibromyalgia", 0)
    assert pain_reduction(s, b) > 0.6
    # lasting relief builds up: the last day is better than the first
    n = len(s.truth_t) // 4
    red_first = np.mean(b.truth["pain"][:n]) - np.mean(s.truth["pain"][:n])
    red_last = np.mean(b.truth["pain"][-n:]) - np.mean(s.truth["pain"][-n:])
    assert red_last > red_first + 0.2
    # mood improves slowly with relief
    assert np.mean(s.truth["mood"][-n:]) > np.mean(b.truth["mood"][-n:]) + 0.3
    assert abs(np.mean(s.truth["mood"][:n // 8]) - np.mean(b.truth["mood"][:n // 8])) < 0.2
    assert ps.rescue_doses < pb.rescue_doses
    assert ps.counters["limit_violations"] == 0 and ps.discomfort_events == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_non_responder_gets_clearly_less_relief(seed):
    red = pain_reduction(*relief("fibromyalgia", seed)[:2])
    red_nr = pain_reduction(*relief("non_responder", seed)[:2])
    assert red > 0.4 and red_nr < 0.4 * red, (red, red_nr)


def test_migraine_is_low_between_attacks_of_hours():
    _, o = run("migraine", 0, 6 * DAY, resp_fs=0.0, eda_fs=0.0, truth_dt=60.0)
    pain = o.truth["pain"]
    assert np.median(pain) < 3.0
    high = pain > 5.0
    assert high.any()
    # an attack lasts hours: the longest run of high pain (1-min samples)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, high.astype(int), 0])))[::2]
    assert runs.max() >= 120


def test_same_seed_is_bit_identical_and_chunking_does_not_matter():
    a, oa = run("fibromyalgia", 7, 1200.0, OPEN)
    b = VirtualPatient("fibromyalgia", 7)
    parts = [b.advance(t, OPEN) for t in np.arange(0.25, 1200.01, 0.25)]
    for name in ("beat_t", "rr_ms", "resp_t", "resp", "eda_t", "eda", "exhalation_onsets",
                 "truth_t"):
        whole = getattr(oa, name)
        joined = np.concatenate([getattr(p, name) for p in parts])
        assert whole.tobytes() == joined.tobytes(), name
    for k in oa.truth:
        assert oa.truth[k].tobytes() == np.concatenate([p.truth[k] for p in parts]).tobytes()
    assert oa.ratings == [r for p in parts for r in p.ratings]
    _, oc = run("fibromyalgia", 7, 1200.0, OPEN)
    assert oc.rr_ms.tobytes() == oa.rr_ms.tobytes() and oc.eda.tobytes() == oa.eda.tobytes()
    _, od = run("fibromyalgia", 8, 1200.0, OPEN)
    assert len(od.rr_ms) != len(oa.rr_ms) or not np.array_equal(od.rr_ms, oa.rr_ms)
    assert not np.array_equal(od.resp, oa.resp)


def test_a_restored_checkpoint_replays_the_same_stretch():
    p = VirtualPatient("fibromyalgia", 5)
    p.advance(600.0, OPEN)
    saved = p.checkpoint()
    first = p.advance(1500.0, OFF)           # a switch, so the train restart is part of it
    counters = p.counters
    p.restore(saved)
    assert p.t == 600.0 and p.stim is OPEN
    again = p.advance(1500.0, OFF)
    for name in ("beat_t", "rr_ms", "resp", "eda", "truth_t"):
        assert getattr(first, name).tobytes() == getattr(again, name).tobytes(), name
    assert first.truth["pain"].tobytes() == again.truth["pain"].tobytes()
    assert first.ratings == again.ratings and p.counters == counters
    # and a different command from the checkpoint gives a different stretch
    p.restore(saved)
    other = p.advance(1500.0, OPEN)
    assert not np.array_equal(other.truth["pain"], first.truth["pain"])
    with pytest.raises(ValueError, match="ECG"):
        VirtualPatient("fibromyalgia", 5, ecg_fs=250.0).checkpoint()


def test_two_patients_in_one_process_do_not_interfere():
    a = VirtualPatient("fibromyalgia", 3)
    b = VirtualPatient("fibromyalgia", 3)
    c = VirtualPatient("migraine", 4)
    for t in np.arange(1.0, 301.0, 1.0):
        oa = a.advance(t, OPEN)
        c.advance(t, OFF)
        ob = b.advance(t, OPEN)
        assert oa.rr_ms.tobytes() == ob.rr_ms.tobytes()


def test_cohort_draws_around_the_profile():
    nominal = PROFILES["fibromyalgia"]
    assert patient_params("fibromyalgia", 0) == nominal
    draws = [patient_params("fibromyalgia", s) for s in range(1, 30)]
    assert patient_params("fibromyalgia", 5) == draws[4]
    base = np.array([d.pain_base for d in draws])
    assert base.min() >= 6.0 and base.max() <= 7.0 and base.std() > 0.1
    assert all(d.qa50 < d.qb50 < d.qc50 * 1.6 for d in draws)
    assert np.mean([d.aff_gain for d in draws]) > 5 * np.mean(
        [patient_params("non_responder", s).aff_gain for s in range(1, 30)])
    with pytest.raises(ValueError):
        patient_params("nobody", 1)


def test_duty_cycle_is_done_by_the_generator_and_restarts_on_enable_or_duty_change():
    p = VirtualPatient("fibromyalgia", 0)
    o = p.advance(700.0, OPEN)
    on = o.truth["stim_on"]
    assert on[:29].all() and not on[31:329].any() and on[331:359].all()
    o = p.advance(710.0, Stimulation(1.2, 20.0, 250.0, 30.0, 300.0, True))
    assert not o.truth["stim_on"].any()  # an amplitude change keeps the running cycle (OFF)
    o = p.advance(720.0, Stimulation(1.2, 20.0, 250.0, 20.0, 200.0, True))
    assert o.truth["stim_on"].all()  # a duty-cycle change starts a new train at once
    assert p.advance(730.0, OFF).truth["stim_on"].sum() == 0
    assert p.advance(740.0, OPEN).truth["stim_on"].all()  # so does switching on


def test_side_effects_and_their_counters():
    p, o = run("fibromyalgia", 0, 3600.0, Stimulation(2.5, 20.0, 250.0, 30.0, 60.0, True))
    side = [m for _, m in o.ratings if m.startswith("SIDE_EFFECT:")]
    assert side and set(side) <= {"SIDE_EFFECT:hoarseness", "SIDE_EFFECT:cough"}
    assert p.discomfort_events == len(side) == p.counters["discomfort_events"]
    t_side = [t for t, m in o.ratings if m.startswith("SIDE_EFFECT:")]
    phase = np.mod(t_side, 90.0)
    assert (phase < 31.0).all()  # reported during ON trains
    assert p.bradycardia_events == 0

    p, o = run("cardiac_sensitive", 0, 1800.0, Stimulation(3.5, 30.0, 500.0, 60.0, 60.0, True))
    assert p.bradycardia_events > 0
    assert p.asystole_events > 0 and o.rr_ms.max() > 2500.0
    # this bradycardia is the trains' doing: it begins during one or within seconds after
    assert p.counters["stim_bradycardia_events"] == p.bradycardia_events


def test_bradycardia_in_sleep_is_not_counted_as_the_stimulations():
    # A patient with a slow heart dips below 50 bpm at night with no stimulation at all ...
    slow = dataclasses.replace(patient_params("fibromyalgia", 0), hr0=52.0)
    p = VirtualPatient("fibromyalgia", 0, params=slow)
    p.advance(86400.0, OFF)
    assert p.bradycardia_events > 0 and p.counters["stim_bradycardia_events"] == 0
    # ... and with gentle trains (no efferent effect) the night dips are still not theirs
    q = VirtualPatient("fibromyalgia", 0, params=slow)
    q.advance(86400.0, Stimulation(0.5, 20.0, 250.0, 30.0, 300.0, True))
    assert q.bradycardia_events > 0
    assert q.counters["stim_bradycardia_events"] < q.bradycardia_events


def test_envelope_violations_are_counted():
    assert check_command(OPEN) == [] and check_command(OFF) == []
    assert check_command(Stimulation(4.0, 20.0, 250.0, 30.0, 300.0, True)) == [
        "amplitude 0-3.5 mA"]
    assert len(check_command(Stimulation(1.0, 50.0, 100.0, 90.0, 30.0, True))) == 4
    assert check_command(Stimulation(float("nan"), 20.0, 250.0, 30.0, 300.0, True))
    p = VirtualPatient("fibromyalgia", 0)
    p.advance(1.0, OPEN)
    p.advance(2.0, OPEN)
    p.advance(3.0, Stimulation(4.0, 20.0, 250.0, 30.0, 300.0, True))
    p.advance(4.0, Stimulation(1.0, 20.0, 250.0, 90.0, 300.0, True))
    assert p.counters["limit_violations"] == 2
    with pytest.raises(ValueError):
        p.advance(3.0, OFF)


def test_nrs_reports_every_30_to_60_min_while_awake():
    _, o = run("fibromyalgia", 2, 2 * DAY, resp_fs=0.0, eda_fs=0.0, truth_dt=60.0)
    t = np.array([t for t, m in o.ratings if m.startswith("NRS:")])
    v = np.array([int(m[4:]) for _, m in o.ratings if m.startswith("NRS:")])
    hours = np.mod(8.0 + t / 3600.0, 24.0)
    assert ((hours >= 7.0) & (hours < 23.5)).all()       # awake (sleep onset is gradual)
    gaps = np.diff(t)
    day_gaps = gaps[gaps < 4 * 3600]
    assert day_gaps.min() >= 1800.0 and day_gaps.max() <= 3600.0
    assert 40 <= len(t) <= 70
    true = np.interp(t, o.truth_t, o.truth["pain"])
    assert np.mean(np.abs(v - true)) < 1.5 and (v >= 0).all() and (v <= 10).all()


def test_skin_conductance_answers_pain_spikes_within_1_to_3_s():
    _, o = run("fibromyalgia", 0, 6 * 3600.0, truth_dt=0.25)
    pain = o.truth["pain"]
    jumps = np.flatnonzero(np.diff(pain) > 1.0)
    spikes = o.truth_t[jumps + 1]
    spikes = spikes[(spikes > 20) & (spikes < o.eda_t[-1] - 20)]
    assert len(spikes) >= 5
    # event-related average of the EDA slope: rises after 1 s, not before
    lags = np.arange(-4.0, 6.0, 0.25)
    slope = np.gradient(o.eda, o.eda_t)
    era = np.array([np.mean(np.interp(spikes + lag, o.eda_t, slope)) for lag in lags])
    assert era[(lags >= 1.5) & (lags <= 4.0)].max() > 3 * np.abs(era[lags <= 0.5]).max()
    assert o.eda.min() > 0.5 and o.eda.max() < 25.0


def test_ecg_only_when_asked_and_at_its_rate():
    _, o = run("fibromyalgia", 0, 20.0)
    assert len(o.ecg_t) == len(o.ecg) == 0
    p = VirtualPatient("fibromyalgia", 0, ecg_fs=250.0)
    o = p.advance(20.0, OPEN)
    assert abs(len(o.ecg_t) - 20.0 * 250.0) <= 2 and len(o.ecg) == len(o.ecg_t)
    # the synthesiser renders a fixed short delay behind the beats it has been given
    assert np.allclose(np.diff(o.ecg_t), 1 / 250.0) and -1.0 < o.ecg_t[0] and o.ecg_t[-1] <= 20.0
