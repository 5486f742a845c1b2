"""Two trainings at once on the same cores: how much slower is each than when it runs alone?

    python benchmarks/concurrent_training.py --steps 150            # prints a table; pin cores with taskset -c 0,1

A fair share of 2 cores between 2 runs makes each about 2x slower. Far worse than that means the runs fight:
each asks for as many threads as there are cores (oversubscription) and OpenMP threads spin while they wait for
work, burning the time the other run needed. Each setting below is measured alone and as a pair. Measured on
the 2-core development machine, 2026-11-26, 100 demo steps (seconds; slowdown = pair / alone):

    threads=2 (torch's default, before)   alone 16.0   pair 128.7 / 128.9   8.06x
    OMP_WAIT_POLICY=PASSIVE               alone 19.0   pair  77.3 /  77.5   4.08x
    threads=1                             alone 25.1   pair  25.1 /  25.4   1.01x
    default now (cpu_share.py)            alone 16.6   pair  29.5 /  27.2   1.78x
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "default": {},                                               # what a user gets with no flags (cpu_share.py)
    "threads=2": {"__threads": "2"},                             # torch's own default before cpu_share: 8x slower
    "spin-off": {"OMP_WAIT_POLICY": "PASSIVE"},                  # OpenMP threads sleep instead of spinning
    "threads=1": {"__threads": "1"},                             # each run keeps to one thread
}


def train_once(data: Path, out: Path, steps: int, env: dict) -> subprocess.Popen:
    threads = env.pop("__threads", None)
    cmd = [sys.executable, "-m", "nanovlm.cli", "train", "--preset", "demo", "--data", str(data), "--out", str(out),
           "--steps", str(steps), "--quiet", "--json", "--overwrite", "--device", "cpu", "--set", f"eval_every={steps}",
           "--set", "eval_batches=1", "--set", "warmup_steps=10"]
    if threads:
        cmd += ["--threads", threads]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def seconds(process: subprocess.Popen) -> float:
    stdout, stderr = process.communicate()
    if process.returncode:
        raise SystemExit(f"training failed:\n{stderr}")
    return json.loads(stdout)["train_time_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="training steps per run (default 150)")
    parser.add_argument("--scenes", type=int, default=2000, help="scenes to draw (default 2000)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="which settings to measure")
    args = parser.parse_args()
    from nanovlm.data.synth import make_scenes

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "data", n=args.scenes, style="short", image_size=64, seed=0)
        print(f"cores: {len(os.sched_getaffinity(0))}, steps per run: {args.steps}, {time.strftime('%Y-%m-%d')}")
        print(f"{'setting':<12}{'alone s':>10}{'pair s (each)':>22}{'slowdown':>12}")
        for name in args.settings.split(","):
            alone = seconds(train_once(tmp / "data", tmp / "alone", args.steps, dict(SETTINGS[name])))
            pair = [train_once(tmp / "data", tmp / f"pair{i}", args.steps, dict(SETTINGS[name])) for i in range(2)]
            together = [seconds(p) for p in pair]
            slowdown = max(together) / alone
            print(f"{name:<12}{alone:>10.1f}{together[0]:>11.1f}{together[1]:>11.1f}{slowdown:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
