"""RR correction (Lipponen & Tarvainen 2019, streaming) against known truth."""
from __future__ import annotations

import numpy as np

from signals.rr import ECTOPIC, LOOKAHEAD, RRCorrector, correct_rr


def _sinus(n, seed):
    """Beat times of a sinus rhythm with LF and respiratory modulation and jitter."""
    rng = np.random.default_rng(seed)
    t, out = 0.0, []
    for _ in range(n):
        rr = 0.85 + 0.04 * np.sin(2 * np.pi * 0.1 * t) + 0.03 * np.sin(2 * np.pi * 0.25 * t)
        t += rr + rng.normal(0, 0.01)
        out.append(t)
    return np.asarray(out)


def _with_artefacts(truth, seed, n_art=40):
    """Ectopic (30% premature), missed (dropped) and extra (spurious) beats, well apart."""
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(np.arange(20, truth.size - 20, 10), n_art, replace=False))
    kinds = rng.integers(0, 3, n_art)
    beats, drop, extra = truth.copy(), [], []
    for p, k in zip(pos, kinds):
        if k == 0:
            beats[p] -= 0.3 * (truth[p] - truth[p - 1])
        elif k == 1:
            drop.append(p)
        else:
            extra.append(truth[p] + 0.4 * (truth[p + 1] - truth[p]))
    beats = np.sort(np.concatenate([np.delete(beats, drop), extra]))
    return beats, truth[pos]


def _rr_on_grid(t_beats, rr_ms, grid):
    return np.interp(grid, t_beats, rr_ms)


def test_synthetic_artefacts_corrected_and_flagged():
    for seed in range(3):
        truth = _sinus(700, seed)
        beats, where = _with_artefacts(truth, seed + 10)
        t, rr, flags = correct_rr(beats)
        grid = np.arange(truth[5], truth[-5], 0.25)
        ref = _rr_on_grid(truth[1:], 1000 * np.diff(truth), grid)
        raw = _rr_on_grid(beats[1:], 1000 * np.diff(beats), grid)
        cor = _rr_on_grid(t, rr, grid)
        err_raw = np.sqrt(np.mean((raw - ref) ** 2))
        err_cor = np.sqrt(np.mean((cor - ref) ** 2))
        flagged = t[flags > 0]
        hit = np.mean([np.any(np.abs(flagged - w) < 1.5) for w in where])
        clean = np.array([np.min(np.abs(where - x)) > 3.0 for x in t])
        false_rate = np.mean(flags[clean] > 0)
        print(f"\nseed {seed}: RR rmse raw {err_raw:.1f} ms -> corrected {err_cor:.1f} ms, "
              f"flag sensitivity {hit:.3f}, false flags {false_rate:.4f}, "
              f"counts {np.bincount(flags, minlength=5).tolist()}")
        assert err_cor < 0.2 * err_raw
        assert hit >= 0.9
        assert false_rate <= 0.01
        assert abs(t.size - truth.size) <= 3


def test_clean_rhythm_untouched():
    truth = _sinus(400, 7)
    t, rr, flags = correct_rr(truth)
    assert np.all(flags == 0)
    assert np.allclose(t, truth[1:])
    assert np.allclose(rr, 1000 * np.diff(truth))


def test_streaming_same_as_whole_and_lookahead():
    truth = _sinus(300, 1)
    beats, _ = _with_artefacts(truth, 5, n_art=15)
    whole = correct_rr(beats)
    for step in (1, 3, 50):
        c = RRCorrector()
        parts = [c.process(beats[i:i + step]) for i in range(0, beats.size, step)]
        if step == 1:  # the second beat (first RR) is final after LOOKAHEAD more beats
            assert sum(p[0].size for p in parts[: LOOKAHEAD + 1]) == 0
            assert parts[LOOKAHEAD + 1][0].size == 1
        parts.append(c.flush())
        for k in range(3):
            assert np.array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_data_gap_not_filled():
    truth = _sinus(200, 2)
    beats = np.concatenate([truth[:100], truth[100:] + 10.0])  # 10 s without beats
    t, rr, flags = correct_rr(beats)
    assert rr.max() < 1500 and np.all(flags == 0)
    assert t.size == beats.size - 2


def test_mitdb_106_pvcs(shared_data):
    """Frequent PVCs (bigeminy, trigeminy) in the cardiologists' beats: what is flagged
    ectopic must be PVC-related, and correction must reduce beat-to-beat jumps."""
    d = np.load(shared_data / "mitdb" / "106.npz")
    fs = float(d["fs"])
    beats, pvc = d["beats"] / fs, d["pvc"] / fs
    t, rr, flags = correct_rr(beats)
    ect = t[flags == ECTOPIC]
    near_pvc = np.mean([np.min(np.abs(pvc - x)) < 1.5 for x in ect])
    jumps_raw = np.sqrt(np.mean(np.diff(1000 * np.diff(beats)) ** 2))
    jumps_cor = np.sqrt(np.mean(np.diff(rr) ** 2))
    print(f"\n106: {ect.size} ectopic flags, {near_pvc:.3f} near a PVC; successive RR "
          f"differences rms {jumps_raw:.0f} -> {jumps_cor:.0f} ms")
    assert ect.size >= 50 and near_pvc >= 0.95
    assert jumps_cor < jumps_raw
