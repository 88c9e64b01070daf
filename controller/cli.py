"""The `vnsloop` command line. Each command lives in its own module and returns a result dict;
this file only parses arguments and hands over."""
from __future__ import annotations

import argparse
import importlib
import sys

from controller.summary import emit

# command -> (module, function); imported lazily so that `vnsloop --help` stays instant.
COMMANDS = {
    "patient": ("sim.lsl_patient", "run_patient_command"),
    "sim": ("controller.simulate", "run_sim_command"),
    "run": ("controller.rig", "run_rig_command"),
    "demo": ("controller.demo", "run_demo_command"),
    "replay": ("controller.replay", "run_replay_command"),
    "bench": ("controller.latency", "run_bench_command"),
    "compare": ("controller.compare", "run_compare_command"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vnsloop", description=(
        "Closed-loop adaptive vagus nerve stimulation controller for chronic-pain research. "
        "A research tool, not a medical device."))
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line of output")
        return sp

    profiles = ["fibromyalgia", "migraine", "non_responder", "cardiac_sensitive"]

    sp = add("patient", "the virtual patient in real time over LSL")
    sp.add_argument("--profile", choices=profiles, default="fibromyalgia")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--ecg-fs", type=float, default=500.0, help="ECG rate in Hz (0: RR only)")
    sp.add_argument("--seconds", type=float, default=None, help="stop after this long")
    sp.add_argument("--prefix", default="vnsloop-patient",
                    help="stream name prefix (streams are PREFIX-ECG, PREFIX-RR, ...)")
    sp.add_argument("--command-source-id", default=None,
                    help="listen only to the vnsloop-command stream with this source_id")

    sp = add("sim", "the controller in lockstep with the virtual patient, faster than real time")
    sp.add_argument("--profile", choices=profiles, default="fibromyalgia")
    sp.add_argument("--policy", choices=["open", "pid", "bayes"], default="open")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--hours", type=float, default=None)
    g.add_argument("--days", type=float, default=None)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--ecg", action="store_true", help="simulate the ECG waveform (500 Hz)")
    sp.add_argument("--config", default=None, help="TOML configuration")
    sp.add_argument("--out", default="reports", help="folder for the report")

    sp = add("run", "the live controller for a bench rig")
    sp.add_argument("--config", required=True, help="TOML configuration (rig.toml)")
    sp.add_argument("--record", default=None, help="record all streams to this XDF file")
    sp.add_argument("--seconds", type=float, default=None, help="stop after this long")
    sp.add_argument("--out", default="reports", help="folder for the report")

    sp = add("demo", "closed loop against the virtual patient over real LSL, recorded to XDF")
    sp.add_argument("--seconds", type=float, default=60.0)
    sp.add_argument("--policy", choices=["open", "pid", "bayes"], default="pid")
    sp.add_argument("--profile", choices=profiles, default="fibromyalgia")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default="reports", help="folder for the XDF file and report")

    sp = add("replay", "run the controller over recorded XDF sessions")
    sp.add_argument("files", nargs="+", metavar="FILE",
                    help="XDF file, or a folder of them (several replay as a batch)")
    sp.add_argument("--workers", type=int, default=None,
                    help="processes for a batch (default: cores)")
    sp.add_argument("--config", default=None)
    sp.add_argument("--policy", choices=["open", "pid", "bayes"], default=None)
    sp.add_argument("--realtime", action="store_true", help="re-stream as LSL in real time")
    sp.add_argument("--map", action="append", default=[], metavar="ROLE=STREAM",
                    help="choose the stream for a role, e.g. ecg=ECG-lead-II (repeatable)")
    sp.add_argument("--out", default="reports")

    sp = add("bench", "end-to-end latency over LSL between processes")
    sp.add_argument("--samples", type=int, default=500, help="trials per path")
    sp.add_argument("--out", default="reports")

    sp = add("compare", "compare policies on a virtual cohort")
    sp.add_argument("--profiles", default="fibromyalgia,non_responder")
    sp.add_argument("--policies", default="open,pid,bayes")
    sp.add_argument("--patients", type=int, default=4)
    sp.add_argument("--days", type=float, default=14.0)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--workers", type=int, default=None, help="local processes (default: cores)")
    sp.add_argument("--scheduler", default=None, help="Dask scheduler address")
    sp.add_argument("--out", default="reports")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, func = COMMANDS[args.command]
    run = getattr(importlib.import_module(module), func)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # A clear one-line error for bad input; with --json also as the last line.
        print(f"vnsloop {args.command}: error: {e}", file=sys.stderr)
        if args.json:
            emit({"command": args.command, "ok": False, "error": str(e)}, True, table_keys=[])
        return 2
    emit(result, args.json, title=f"vnsloop {args.command}",
         table_keys=result.pop("_table_keys", None))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
