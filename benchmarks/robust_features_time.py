"""Cold time of a study on the CPU: a fresh model store, the whole run (training, derived
sets, evaluation, checks, probes, report), as the issue's budget for
``studies/robust_features.yaml`` asks (at most 5 minutes on 2 cores).

    python benchmarks/robust_features_time.py [STUDY (default studies/robust_features.yaml)] [--threads N] [--out DIR]

Prints the wall time of the whole command, its CPU time (user + system) and run.json's
per-part timings. Say whether the machine was idle when quoting the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study", nargs="?", default="studies/robust_features.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the workbench's)")
    ap.add_argument("--out", default=None, help="keep the run folder here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, WORKBENCH_STORE=str(Path(tmp) / "store"))
        out = Path(args.out) if args.out else Path(tmp) / "run"
        cmd = [sys.executable, "-m", "workbench.cli", "run", args.study, "--out", str(out), "-q"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        # CPU seconds of the run (user + system): on a loaded machine the wall time measures the
        # load as much as the work; with one torch thread the CPU time is what an idle core needs
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime
        timings = json.loads((out / "run.json").read_text())["timings"]
    print(f"{args.study}: cold run {wall:.1f} s wall, {cpu:.1f} s CPU (user + system), fresh store, "
          f"{os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f} at the end")
    for k, v in timings.items():
        print(f"  {k:24s} {v:8.1f} s")


if __name__ == "__main__":
    main()
