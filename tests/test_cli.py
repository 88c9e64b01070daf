import json
import subprocess
import sys

from controller.cli import COMMANDS, build_parser
from controller.summary import emit


def test_every_command_takes_json():
    parser = build_parser()
    for name in COMMANDS:
        extra = {"replay": ["x.xdf"], "run": ["--config", "x.toml"]}.get(name, [])
        args = parser.parse_args([name, *extra, "--json"])
        assert args.json is True


def test_json_is_last_line_and_nan_becomes_null(capsys):
    emit({"a": 1.5, "b": float("nan"), "c": [1, float("inf")]}, True, title="t")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == {"a": 1.5, "b": None, "c": [1, None]}


def test_bad_input_gives_one_json_error_line():
    out = subprocess.run([sys.executable, "-m", "controller.cli", "replay",
                          "/nonexistent/file.xdf", "--json"], capture_output=True, text=True)
    assert out.returncode == 2
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ok"] is False and "file.xdf" in res["error"]
