#!/usr/bin/env bash
# Whole-run timing of the quickstart, two commits side by side (issue 10's "no slower" goal):
#   bash benchmarks/quickstart_timing.sh OLD_COMMIT [NEW_COMMIT (default HEAD)] [STUDY (default quickstart)]
# Each commit is checked out with `git archive` into a temporary folder and runs on its own
# fresh model store: first run, then two reruns with nothing changed, interleaved old/new so
# that machine noise hits both; prints wall seconds, run.json's total and the new/old ratios.
# Run it on an otherwise idle machine; it takes about three first runs' time per commit pair.
set -u
OLD=${1:?usage: quickstart_timing.sh OLD_COMMIT [NEW_COMMIT] [STUDY]}; NEW=${2:-HEAD}; STUDY=${3:-quickstart}
PY=${PYTHON:-python}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
for C in "$OLD" "$NEW"; do mkdir -p "$T/$C" && git archive "$C" workbench studies | tar -x -C "$T/$C"; done
wall() { local s e; s=$(date +%s.%N); "$@" > /dev/null 2>&1 || echo "FAILED: $*" >&2; e=$(date +%s.%N); echo "$e - $s" | bc; }
declare -A W
for L in first rerun1 rerun2; do
  for C in "$OLD" "$NEW"; do
    W[$C,$L]=$(cd "$T/$C" && PYTHONPATH=. WORKBENCH_STORE="$T/store-$C" wall "$PY" -m workbench.cli run "studies/$STUDY.yaml" --out "$T/run-$C" -q)
    total=$("$PY" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['timings']['total'], 2))" "$T/run-$C/run.json")
    printf "%-10s %-7s wall %7.1f s   run.json total %6.2f s\n" "$C" "$L" "${W[$C,$L]}" "$total"
  done
  printf "%-10s %-7s new/old wall ratio %.2f\n" "" "$L" "$(echo "${W[$NEW,$L]} / ${W[$OLD,$L]}" | bc -l)"
done
printf "python -c 'import torch': %.2f s\n" "$(wall "$PY" -c 'import torch')"
