"""Figures for the note on issue 5 (not a test): the Bayesian policy on a fibromyalgia cohort,
14 days per patient, against the best safe fixed setting (the oracle) and the clinical
titration schedule.

    .venv/bin/python bench/bayes_cohort.py --seeds 1-20 --days 14 --workers 2 --out reports/bayes_cohort

Writes results.json (one dict per run, appended as runs finish, so a stopped run keeps what
it did) and bayes_cohort.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.compare import run_one  # noqa: E402


def seeds_from(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bayes = {r["seed"]: r for r in results if r["policy"] == "bayes"}
    titr = {r["seed"]: r for r in results if r["policy"] == "titration"}
    seeds = sorted(bayes)
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2))
    frac = [bayes[s].get("oracle_fraction") for s in seeds]
    ax[0].bar(range(len(seeds)), [f if f is not None else np.nan for f in frac], color="C0")
    ax[0].axhline(0.9, color="C3", ls="--", lw=1, label="goal 0.9")
    ax[0].set_xticks(range(len(seeds)), seeds, fontsize=7)
    ax[0].set_xlabel("seed")
    ax[0].set_ylabel("pain reduction / oracle's")
    ax[0].set_title("oracle fraction (bayes, 14 days)")
    ax[0].legend()
    ax[1].bar(range(len(seeds)), [bayes[s]["unsafe_trials"] for s in seeds], color="C1")
    ax[1].set_xticks(range(len(seeds)), seeds, fontsize=7)
    ax[1].set_xlabel("seed")
    ax[1].set_title("unsafe trials (epochs with a side effect)")
    both = [s for s in seeds if s in titr]
    x = np.arange(len(both))
    ax[2].bar(x - 0.2, [bayes[s]["discomfort_events"] for s in both], 0.4, label="bayes")
    ax[2].bar(x + 0.2, [titr[s]["discomfort_events"] for s in both], 0.4, label="titration")
    ax[2].set_xticks(x, both, fontsize=7)
    ax[2].set_xlabel("seed")
    ax[2].set_title("discomfort events")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1-20")
    ap.add_argument("--days", type=float, default=14.0)
    ap.add_argument("--profile", default="fibromyalgia")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="reports/bayes_cohort")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for s in seeds_from(args.seeds):
        tasks.append({"profile": args.profile, "policy": "bayes", "seed": s,
                      "days": args.days, "oracle": True})
        tasks.append({"profile": args.profile, "policy": "titration", "seed": s,
                      "days": args.days})
    results = []
    t0 = time.perf_counter()
    log = out / "results.jsonl"
    log.write_text("")
    with ProcessPoolExecutor(args.workers) as pool:
        for fut in as_completed([pool.submit(run_one, t) for t in tasks]):
            r = fut.result()
            results.append(r)
            with log.open("a") as fh:
                fh.write(json.dumps(r, default=str) + "\n")
            print(f"{time.perf_counter() - t0:6.0f} s  {r['policy']:9s} seed {r['seed']:3d}  "
                  f"red {r['pain_reduction']:.2f}  frac {r.get('oracle_fraction')}  "
                  f"unsafe {r.get('unsafe_trials')}  disc {r['discomfort_events']}  "
                  f"nonresp {r.get('non_responder')}", flush=True)
            plot(results, out / "bayes_cohort.png")


if __name__ == "__main__":
    main()
