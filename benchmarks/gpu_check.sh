#!/usr/bin/env bash
# Every GPU figure of the project in one command (run from the repository root on a CUDA machine):
#
#   bash benchmarks/gpu_check.sh [CIFAR10_DATA]      # default data: ../shared/data/cifar10-jpg.tar.gz
#
# 1. studies/cifar10_fast.yaml: FGSM-RS PreActResNet-18, 15 epochs, one-cycle, bf16 + channels_last:
#    training wall time, images/s, clean and PGD-50-10 accuracy at 8/255   (issues 2 and 5)
# 2. benchmarks/attacks.py on that model: workbench PGD-20 / FGSM (bf16) vs torchattacks (fp32),
#    robust accuracy of both, and bf16 vs fp32 robust accuracy on the same examples       (issue 5)
# 3. benchmarks/probes.py: the probes of studies/cifar10.yaml on 1,000 test images next to one
#    PGD-10 evaluation pass on the same images                                           (issue 3)
#
# CIFAR10_DATA is the JPEG tarball (or its extracted folder); for torchvision's copy use
# DATA_NAME=cifar10 and a torchvision root. Logs go to $OUT (default gpu-check/).
# Packages the machine lacks (captum, pydantic, torchattacks) are installed from wheels in
# .device/ when present: pip download them there first on a machine with internet.
set -uo pipefail
DATA=${1:-../shared/data/cifar10-jpg.tar.gz}
DATA_NAME=${DATA_NAME:-imagefolder}
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export WORKBENCH_STORE=${WORKBENCH_STORE:-$OUT/store} PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import captum, pydantic, torchattacks" 2>/dev/null && ls .device/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/wb-site .device/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/wb-site"
fi
# EXTRA: more --set overrides for every step (a CPU dry run shrinks the work with them)
eval "EXTRA=(${EXTRA:-})"
SETS=(--set "data.name=$DATA_NAME" --set "data.root=$DATA" --set "recipes=[{name: fgsm_rs, eps: 8/255}]" "${EXTRA[@]}")
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
t0=$(date +%s)

echo "== 1. cifar10_fast: FGSM-RS training and PGD-50-10 evaluation"
timeout ${T1:-230} $PY -m workbench.cli run studies/cifar10_fast.yaml "${SETS[@]}" --out "$OUT/fast" \
  --device "$DEVICE" -q 2>&1 | tee "$OUT/fast.log" | tail -n 5
$PY benchmarks/summarize_run.py "$OUT/fast" 2>&1 | tee "$OUT/fast-summary.txt"
echo "   ($(( $(date +%s) - t0 )) s so far)"

echo "== 2. attacks: workbench (bf16) vs torchattacks (fp32) on the trained model"
timeout ${T2:-60} $PY benchmarks/attacks.py --study studies/cifar10_fast.yaml "${SETS[@]}" \
  --model preact_resnet18/fgsm_rs --device "$DEVICE" --examples ${ATTACK_EXAMPLES:-2048} --batch ${ATTACK_BATCH:-1024} \
  --precision bf16 --reps ${REPS:-5} 2>&1 | tee "$OUT/attacks.txt"
echo "   ($(( $(date +%s) - t0 )) s so far)"

echo "== 3. probes of studies/cifar10.yaml on ${PROBE_EXAMPLES:-1000} test images vs one PGD-10 pass"
timeout ${T3:-110} $PY benchmarks/probes.py --study studies/cifar10_fast.yaml "${SETS[@]}" \
  --probes-from studies/cifar10.yaml --examples ${PROBE_EXAMPLES:-1000} --device "$DEVICE" --quick 2>&1 | tee "$OUT/probes.txt"
echo "== done in $(( $(date +%s) - t0 )) s"
