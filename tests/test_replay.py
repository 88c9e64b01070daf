"""`vnsloop replay`: every shared XDF file replays without a crash, messy recordings become
events, a LabRecorder recording replays far faster than real time with the right beats, and
the decision comparison counts what it should."""
from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pylsl
import pytest

from controller.config import default_config
from controller.replay import (compare_decisions, parse_role_map, replay_batch, replay_file,
                               run_replay_command, summarize, write_outputs)
from controller.types import COMMAND_CHANNELS, STATE_CHANNELS

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"duration_s", "wall_s", "realtime_factor", "beats", "gaps", "commands", "events",
        "decision_mismatches", "report", "commands_csv", "states_csv", "events_jsonl"}


def _cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "controller.cli", "replay", *map(str, args)],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    return out, json.loads(out.stdout.strip().splitlines()[-1])


# ---- a small XDF writer for messy files (the format: XDF specification 1.0) ----------------

def _chunk(tag: int, content: bytes) -> bytes:
    n = len(content) + 2
    return struct.pack("<BI", 4, n) + struct.pack("<H", tag) + content


def _varlen(n: int) -> bytes:
    return struct.pack("<BI", 4, n)


def write_xdf(path: Path, streams: list[dict]) -> Path:
    """streams: dicts with name, type, fs, fmt ('float32', 'double64' or 'string'), ts, data ((n, ch) or
    list of str); optional offsets [(collection_time, offset)]."""
    out = [b"XDF:", _chunk(1, b'<?xml version="1.0"?><info><version>1.0</version></info>')]
    for sid, s in enumerate(streams, start=1):
        ch = 1 if s["fmt"] == "string" or not len(s["ts"]) else \
            np.asarray(s["data"]).reshape(len(s["ts"]), -1).shape[1]
        xml = (f'<?xml version="1.0"?><info><name>{s["name"]}</name><type>{s["type"]}</type>'
               f'<channel_count>{ch}</channel_count><nominal_srate>{s["fs"]}</nominal_srate>'
               f'<channel_format>{s["fmt"]}</channel_format><source_id>{s["name"]}-sid</source_id>'
               f'<created_at>0</created_at></info>')
        out.append(_chunk(2, struct.pack("<I", sid) + xml.encode()))
    for sid, s in enumerate(streams, start=1):
        ts = np.asarray(s["ts"], float)
        for a in range(0, len(ts), 100):
            b = min(a + 100, len(ts))
            body = bytearray(struct.pack("<I", sid) + _varlen(b - a))
            for i in range(a, b):
                body += struct.pack("<Bd", 8, ts[i])
                if s["fmt"] == "string":
                    v = s["data"][i].encode()
                    body += _varlen(len(v)) + v
                else:
                    dtype = np.float64 if s["fmt"] == "double64" else np.float32
                    body += np.asarray(s["data"][i], dtype).tobytes()
            out.append(_chunk(3, bytes(body)))
        for ct, off in s.get("offsets", []):
            out.append(_chunk(4, struct.pack("<Idd", sid, ct, off)))
    path.write_bytes(b"".join(out))
    return path


def _synth_ecg(fs: float, seconds: float, seed: int = 1, t0: float = 1000.0):
    from sim.ecg_synth import ECGSynthesizer

    rng = np.random.default_rng(seed)
    rr = 800.0 + 50.0 * np.sin(np.arange(int(seconds) * 2) * 0.5) + 15 * rng.standard_normal(int(seconds) * 2)
    beats = t0 + np.cumsum(rr) / 1000.0
    keep = beats < t0 + seconds
    beats, rr = beats[keep], rr[keep]
    syn = ECGSynthesizer(fs, seed, lead_off_per_hour=0.0, emg_per_min=0.0)
    t, x = syn.render(t0, t0 + seconds + 1.0, beats, rr)
    return t, x, beats


# ---- every shared file, through the command line --------------------------------------------

def test_every_shared_xdf_replays_via_cli(shared_data, tmp_path):
    files = sorted((shared_data / "xdf").glob("*.xdf"))
    assert files
    for f in files:
        out, res = _cli(f, "--json", "--out", tmp_path)
        assert out.returncode == 0, out.stderr
        assert KEYS <= res.keys(), f
        assert res["decision_mismatches"] is None     # no recorded vnsloop-command stream
        for k in ("report", "commands_csv", "states_csv", "events_jsonl"):
            assert Path(res[k]).is_file()
        with open(res["commands_csv"]) as fh:
            assert next(csv.reader(fh)) == ["t", *COMMAND_CHANNELS]
        with open(res["states_csv"]) as fh:
            assert next(csv.reader(fh)) == ["t", *STATE_CHANNELS]
        lines = Path(res["events_jsonl"]).read_text().splitlines()
        assert len(lines) == res["events"] and all("kind" in json.loads(x) for x in lines)
    # clock_resets.xdf: its gap and resets are events, not a crash
    lines = Path(tmp_path / "clock_resets-replay-events.jsonl").read_text().splitlines()
    kinds = {json.loads(x)["kind"] for x in lines}
    assert {"xdf.clock_reset", "xdf.gap", "loop.started"} <= kinds


def test_missing_and_non_xdf_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        replay_file(tmp_path / "nope.xdf")
    bad = tmp_path / "bad.xdf"
    bad.write_bytes(b"not xdf at all")
    with pytest.raises(ValueError, match="not an XDF"):
        replay_file(bad)
    out, res = _cli(bad, "--json")
    assert out.returncode == 2 and res["ok"] is False and "bad.xdf" in res["error"]
    with pytest.raises(ValueError):
        parse_role_map(["ecg"])


# ---- messy recordings ---------------------------------------------------------------------

def test_messy_recording_becomes_events_not_a_crash(tmp_path):
    fs = 128.0
    t, x, beats = _synth_ecg(fs, 120.0)
    keep = ~(((t > 1030) & (t < 1035)))               # a 5 s gap
    t, x = t[keep], x[keep]
    t = np.where(t > 1060, t + 180.0, t)              # a 3 min gap
    t = np.where(t > 1250, t - 2.0, t)                 # a clock reset: stamps go back 2 s
    two = np.column_stack([-x, 0.1 * x])               # inverted lead first, two channels
    two[500:510, 0] = np.nan                           # a few bad samples
    ops = [(1010.0, "STOP"), (1012.0, "RESUME"), (1014.0, "gibberish")]
    path = write_xdf(tmp_path / "messy.xdf", [
        {"name": "ECG-chest", "type": "ECG", "fs": fs, "fmt": "float32", "ts": t, "data": two},
        {"name": "operator-ctl", "type": "Markers", "fs": 0, "fmt": "string",
         "ts": [a for a, _ in ops], "data": [b for _, b in ops]},
        {"name": "RR-empty", "type": "RR", "fs": 0, "fmt": "float32", "ts": [], "data": []},
    ])
    res = replay_file(path)
    kinds = {e.kind for e in res.log.events}
    assert {"xdf.gap", "xdf.clock_reset", "xdf.rate", "xdf.multichannel", "xdf.empty_stream",
            "replay.ecg_inverted", "safety.operator"} <= kinds, kinds
    assert res.errors == 0
    s = summarize(res)
    assert s["gaps"] >= 2 and s["beats"] > 50
    files = write_outputs(res, tmp_path / "out")
    assert all(Path(v).is_file() for v in files.values())

    # the same file cut short and damaged in the middle: still no crash
    blob = path.read_bytes()
    (tmp_path / "cut.xdf").write_bytes(blob[: len(blob) // 2])
    dmg = bytearray(blob)
    dmg[len(blob) // 3: len(blob) // 3 + 64] = b"\xff" * 64
    (tmp_path / "dmg.xdf").write_bytes(bytes(dmg))
    r = replay_file(tmp_path / "cut.xdf")
    assert "xdf.corrupt" in {e.kind for e in r.log.events}
    r = replay_file(tmp_path / "dmg.xdf")        # garbage inside sample data: stamps may be NaN
    assert r.errors == 0 and len(r.log.commands) > 100
    out, res_cli = _cli(tmp_path / "dmg.xdf", "--json", "--out", tmp_path / "o2")
    assert out.returncode == 0 and KEYS <= res_cli.keys()


# ---- a real LabRecorder recording ----------------------------------------------------------

@pytest.mark.lsl
def test_labrecorder_session_replays_fast_with_the_true_beats(tmp_path, uid):
    from controller.recording import Recorder

    fs, seconds = 250.0, 600.0
    now = pylsl.local_clock()
    t, x, beats = _synth_ecg(fs, seconds, seed=3, t0=now - seconds - 5.0)
    sid = f"ecg-{uid}"
    info = pylsl.StreamInfo(f"ECG-{uid}", "ECG", 1, fs, "float32", sid)
    outlet = pylsl.StreamOutlet(info, 0, 3600)
    path = tmp_path / "session.xdf"
    rec = Recorder(path, [sid])
    rec.start()
    try:
        # ten minutes of data in about 9 s: 10 s per push, slow enough that LabRecorder's
        # inlet buffer (360 s at the nominal rate) does not overflow between its reads even
        # when the machine is busy (at 3 s it once lost a stretch, seen as a gap)
        step = int(10 * fs)
        for a in range(0, len(t), step):
            outlet.push_chunk(x[a:a + step, None].astype(np.float32).tolist(), t[a:a + step].tolist())
            time.sleep(0.15)
        time.sleep(1.0)
    finally:
        rec.stop()
        del outlet
    res = replay_file(path)
    s = summarize(res)
    true_n = int(np.sum((beats > t[0] + 2.5) & (beats < t[-1])))   # after the detector's learning
    print(f"\nreplay of {s['duration_s']:.0f} s at 250 Hz: {s['realtime_factor']:.0f}x real time "
          f"(wall {s['wall_s'] * 1000:.0f} ms), beats {s['beats']} of {true_n}")
    assert s["duration_s"] > 590
    assert s["gaps"] == 0, [e for e in res.source.events if e.kind == "xdf.gap"]
    assert abs(s["beats"] - true_n) <= max(3, 0.01 * true_n)
    assert s["realtime_factor"] >= 50
    assert s["decision_mismatches"] is None


# ---- batches: a week of recordings ------------------------------------------------------

def _csv_rows(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_a_folder_replays_as_a_batch_and_an_unreadable_file_is_one_row(tmp_path, shared_data):
    bogus = tmp_path / "bogus.xdf"
    bogus.write_text("not an xdf file")
    out, res = _cli(shared_data / "xdf", bogus, "--workers", "2", "--json", "--out", tmp_path / "o")
    shared = sorted((shared_data / "xdf").glob("*.xdf"))
    assert out.returncode == 1 and res["ok"] is False     # one file failed, the rest is there
    assert res["n_files"] == len(shared) + 1 and res["workers"] == 2
    assert [f["file"] for f in res["failed"]] == [str(bogus)]
    assert "not an XDF file" in res["failed"][0]["error"]
    assert "bogus.xdf" in out.stdout and "error" in out.stdout      # the per-file table
    rows = {Path(r["file"]).name: r for r in res["files"] if "error" not in r}
    assert set(rows) == {p.name for p in shared}
    for k in ("duration_s", "beats", "gaps", "commands", "events", "errors"):
        assert res[k] == pytest.approx(sum(r[k] for r in rows.values())), k
    assert res["gaps"] >= 1 and res["decision_mismatches"] is None
    # a batch member, replayed in a worker process, decides exactly as the file alone
    alone = replay_file(shared_data / "xdf" / "clock_resets.xdf")
    files = write_outputs(alone, tmp_path / "alone")
    got = rows["clock_resets.xdf"]
    assert got["commands"] == len(alone.log.commands) > 100
    assert _csv_rows(got["commands_csv"]) == _csv_rows(files["commands_csv"])
    assert all(Path(r["report"]).is_file() for r in rows.values())


def test_files_of_one_name_in_a_batch_keep_their_own_outputs(tmp_path, shared_data):
    src = shared_data / "xdf" / "minimal.xdf"
    for day in ("mon", "tue"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "minimal.xdf").symlink_to(src)
    res = replay_batch(sorted(tmp_path.rglob("*.xdf")), default_config(), {}, tmp_path / "o",
                       workers=1)
    paths = [Path(r["commands_csv"]) for r in res["files"]]
    assert len(set(paths)) == 2 and all(p.is_file() for p in paths)
    assert _csv_rows(paths[0]) == _csv_rows(paths[1])
    assert res["n_files"] == 2 and not res["failed"]


def test_a_batch_refuses_bad_workers_and_empty_folders(tmp_path):
    out, res = _cli(tmp_path, "--json")
    assert out.returncode == 2 and "no .xdf files" in res["error"]
    out, res = _cli(tmp_path, "--workers", "0", "--json")
    assert out.returncode == 2 and "--workers" in res["error"]


# ---- the decision comparison ---------------------------------------------------------------

def _cmds(rows):
    return np.array([[i, *r] for i, r in enumerate(rows)], float)


def test_compare_decisions_counts_differences():
    on = [1.0, 20.0, 250.0, 30.0, 300.0, 1.0]
    off = [0.0, 20.0, 250.0, 30.0, 300.0, 0.0]
    t = np.arange(6) * 0.25
    rec = _cmds([on, on, off, on, on, on])
    assert compare_decisions(t, rec, t, rec) == 0
    rep = rec.copy()
    rep[3, 2] += 0.01                                  # amplitude within tolerance
    rep[4, 2] += 0.5                                   # amplitude off
    rep[5, -1] = 0.0                                   # enabled differs
    assert compare_decisions(t, rec, t, rep) == 2
    # a disabled command's settings do not matter; seq is not compared
    rep2 = rec.copy()
    rep2[2, 2] = 3.0
    rep2[:, 0] += 100
    assert compare_decisions(t, rec, t, rep2) == 0
    # an immediate STOP stamped a little earlier in the replay is in effect at the recorded time
    rec3 = _cmds([on, off, off])
    t3 = np.array([0.0, 0.1012, 0.25])
    rep3 = _cmds([on, off, off])
    assert compare_decisions(t3, rec3, np.array([0.0, 0.1007, 0.25]), rep3) == 0
    # nothing replayed yet at a recorded time
    assert compare_decisions(t3, rec3, t3 + 0.5, rep3) == 3
    assert compare_decisions([], np.zeros((0, 7)), t3, rep3) == 0


def _recorded_session(path: Path, cfg, ecg_clock_offset_s: float = 0.0):
    """A vnsloop session over a synthetic ECG, fed tick by tick as the live loop feeds, written
    as XDF: (path, the loop's commands (t, rows), its states (t, rows), ECG sample rate)."""
    from controller.outlets import OutputLog
    from controller.runtime import ControlLoop
    from signals.chunk import Chunk

    fs = 250.0
    t, x, beats = _synth_ecg(fs, 90.0, seed=5, t0=500.0)
    log = OutputLog()
    t0 = 500.0 - 0.013
    loop = ControlLoop(cfg, log, t0)
    loop.set_input_rate("ecg", fs)
    ticks = t0 + 0.25 * np.arange(1, int(90 / 0.25))
    i = 0
    for tk in ticks:   # feed what was stamped by the tick, then tick, as the live loop does
        j = int(np.searchsorted(t, tk, side="right"))
        if j > i:
            loop.feed(Chunk("ecg", x[i:j, None].copy(), t[i:j].copy()))
            i = j
        loop.tick(float(tk))
    ct, c = log.command_array()
    st, s = log.state_array()
    ev = [e.to_json() for e in log.events]
    # LabRecorder's offsets for the ECG stream: pyxdf moves its stamps by this much
    offsets = [(t[0], ecg_clock_offset_s), (t[-1], ecg_clock_offset_s)] if ecg_clock_offset_s else []
    write_xdf(path, [
        {"name": "ECG-x", "type": "ECG", "fs": fs, "fmt": "float32", "ts": t, "data": x[:, None],
         "offsets": offsets},
        {"name": "vnsloop-command", "type": "Stimulation", "fs": 0, "fmt": "double64", "ts": ct, "data": c},
        {"name": "vnsloop-state", "type": "State", "fs": 4.0, "fmt": "double64", "ts": st, "data": s},
        {"name": "vnsloop-events", "type": "Markers", "fs": 0, "fmt": "string",
         "ts": [e.t for e in log.events], "data": ev},
    ])
    return path, (ct, c), (st, s), fs


def test_recorded_session_replays_with_matching_decisions(tmp_path):
    """A vnsloop session (inputs + the controller's outputs) written by the same loop on the
    same data: ticking at the recorded tick times reproduces its decisions exactly."""
    from dataclasses import replace

    from controller.config import Config

    cfg = Config.from_dict({"estimation": {"baseline_s": 30.0}})
    path, (ct, c), _, _ = _recorded_session(tmp_path / "session.xdf", cfg)
    res = replay_file(path, cfg)
    assert res.tick_times == "recorded"
    assert res.recorded_commands is not None and len(res.recorded_commands[0]) == len(ct)
    assert res.decision_mismatches == 0
    assert not any(e.kind == "replay.config_differs" for e in res.log.events)
    # another policy is named as the cause of the differences it makes
    res_pid = replay_file(path, replace(cfg, policy=replace(cfg.policy, kind="pid")))
    differs = [e for e in res_pid.log.events if e.kind == "replay.config_differs"]
    assert len(differs) == 1 and differs[0].data["recorded_policy"] == "open"
    assert differs[0].data["policy"] == "pid" and "--config" in differs[0].message
    # the CLI takes the session's configuration from beside the recording, as the demo saves it
    import argparse

    from controller.config import save_config
    args = argparse.Namespace(file=str(path), config=None, policy=None, realtime=False, map=None,
                              out=str(tmp_path / "out"), json=True)
    assert run_replay_command(args)["decision_mismatches"] > 0   # defaults: another baseline
    save_config(cfg, path.with_suffix(".toml"))
    assert run_replay_command(args)["decision_mismatches"] == 0
    # a different policy gives different decisions, and the count says so
    cfg2 = replace(cfg, policy=replace(cfg.policy, open=replace(cfg.policy.open, amplitude_mA=0.5)))
    if np.any(c[:, -1] > 0.5):
        res2 = replay_file(path, cfg2)
        assert res2.decision_mismatches > 0


@pytest.mark.parametrize("offset_us", [-60.0, 60.0])
def test_replay_feeds_what_the_live_loop_fed_when_clock_sync_moves_the_stamps(tmp_path, offset_us):
    """pyxdf's clock sync moves each recorded stream by its fitted offset (tens of us on
    loopback, either sign), so the live loop's watermarks no longer equal the stamps read
    back: the replay must still cut each input after the sample the live loop fed last."""
    from controller.config import Config

    cfg = Config.from_dict({"estimation": {"baseline_s": 30.0}})
    path, _, (st, s), fs = _recorded_session(tmp_path / "session.xdf", cfg, offset_us * 1e-6)
    res = replay_file(path, cfg)
    assert res.tick_times == "recorded"
    col = STATE_CHANNELS.index("fed_t_ecg")
    live = s[:, col]
    _, rs = res.log.state_array()
    replayed = rs[:, col]
    assert len(replayed) == len(live)
    fed = np.isfinite(live)
    assert fed.sum() > 300
    assert np.array_equal(np.isfinite(replayed), fed)
    # the same sample at every tick: its stamp moved by the offset, never by a sample period
    np.testing.assert_allclose(replayed[fed] - live[fed], offset_us * 1e-6, atol=2e-6)
    assert res.decision_mismatches == 0


def test_run_replay_command_namespace(tmp_path, shared_data):
    import argparse

    args = argparse.Namespace(file=str(shared_data / "xdf" / "muse_ppg_P001.xdf"), config=None,
                              policy="pid", realtime=False, map=["ecg=Muse"], out=str(tmp_path),
                              json=True)
    res = run_replay_command(args)
    assert KEYS <= res.keys() and res["roles"] == {"ecg": "Muse"}


@pytest.mark.lsl
def test_realtime_restream_reports_what_it_streamed(shared_data):
    import argparse

    args = argparse.Namespace(file=str(shared_data / "xdf" / "minimal.xdf"), config=None,
                              policy=None, realtime=True, map=[], out="reports", json=True)
    t0 = time.monotonic()
    res = run_replay_command(args)
    assert 0.8 <= time.monotonic() - t0 < 10
    assert res["realtime"] and not res["interrupted"]
    names = {s["name"] for s in res["streams"]}
    assert names == {"SendDataC" + res["suffix"], "SendDataString" + res["suffix"]}
