#!/usr/bin/env bash
# Every GPU figure of the project, run from the repository root on a CUDA machine:
#
#   bash benchmarks/gpu_check.sh [CIFAR10_DATA]      # default data: ../shared/data/cifar10-jpg.tar.gz
#   PART=2 bash benchmarks/gpu_check.sh [DATA]       # the precision experiment (see below)
#
# PART=1 (default), about 8-9 minutes on an H200:
# 1. studies/cifar10_fast.yaml: FGSM-RS PreActResNet-18, 15 epochs, cyclic lr, bf16 + channels_last:
#    training wall time, images/s, the learning curve, clean / FGSM / PGD-20 / PGD-50-10 accuracy
#    at 8/255 on EVAL_EXAMPLES test images (default 5000; the study itself evaluates all 10,000)
# 2. benchmarks/attacks.py on that model: workbench PGD-20 / FGSM (bf16) vs torchattacks (fp32),
#    robust accuracy of both, bf16 vs fp32 on the same examples; then again with --compile
# 3. benchmarks/probes.py: the probes of studies/cifar10.yaml on 1,000 test images next to one
#    PGD-10 evaluation pass on the same images
# PART=2: the same training in float32 (TF32 convolutions), evaluated on 2,000 images, to tell
#    whether bf16 costs accuracy (the first H200 run gave 76.4% clean against the published 83-86%).
# PART=3: streamed data (issue 13), about 4 minutes: the tarball is extracted to a folder, then
#    5. cifar10_fast trained with data.stream=true (DataLoader, WORKERS processes, augmentation on
#       the GPU): training time and images/s next to step 1's in-memory run (same model key? no:
#       a streamed folder is identified by its file bytes, so it trains anew);
#       (data.decode is auto: on a GPU whose torchvision has nvjpeg the JPEGs are decoded there; DECODE=cpu
#       decodes them in the workers instead);
#    6. benchmarks/data.py: images/s of PreActResNet-18 on streamed data decoded by the CPU workers vs
#       streamed data decoded on the GPU (nvjpeg) vs in-memory vs synthetic data
#       (goal: streamed at least 0.9x synthetic).
# PART=all: 1, 2 and 3, so one call gives clean, PGD-50-10 and training time in bf16 and in fp32
#    against the published 83-86% / 46% and the 60 s goal (H100-class GPU), and the streaming cost.
# CPU dry run of part 3 (tiny; about 5 minutes on 2 cores): DEVICE=cpu PART=3 EVAL_EXAMPLES=64 WORKERS=0 STREAM_ARGS="--arch small_cnn --batch 32 --steps 2
#    --rounds 1 --workers 0 --precision fp32" EXTRA="--set data.limit_train=256 --set train.epochs=1
#    --set evaluation.examples=64 --set 'architectures=[{name: small_cnn, options: {width: 4, fc: 16}}]'"
#    bash benchmarks/gpu_check.sh FOLDER_OR_TARBALL
#
# CIFAR10_DATA is the JPEG tarball (or its extracted folder); for torchvision's copy use
# DATA_NAME=cifar10 and a torchvision root. Logs go to $OUT (default gpu-check/).
# Packages the machine lacks (captum, pydantic, torchattacks) are installed from wheels in
# .device/ when present: pip download them there first on a machine with internet.
# Every step has its own timeout (T1..T5, seconds), so one slow step cannot eat the rest.
set -uo pipefail
DATA=${1:-../shared/data/cifar10-jpg.tar.gz}
DATA_NAME=${DATA_NAME:-imagefolder}
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PART=${PART:-1}
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
elapsed() { echo "   ($(( $(date +%s) - t0 )) s so far)"; }

if [[ $PART == 1 || $PART == all ]]; then
  echo "== 1. cifar10_fast: FGSM-RS training, evaluation on ${EVAL_EXAMPLES:-5000} test images"
  timeout ${T1:-300} $PY -m workbench.cli run studies/cifar10_fast.yaml "${SETS[@]}" \
    --set "evaluation.examples=${EVAL_EXAMPLES:-5000}" --out "$OUT/fast" --device "$DEVICE" -q 2>&1 \
    | tee "$OUT/fast.log" | tail -n 5
  $PY benchmarks/summarize_run.py "$OUT/fast" 2>&1 | tee "$OUT/fast-summary.txt"
  elapsed

  echo "== 2a. attacks: workbench (bf16) vs torchattacks (fp32) on the trained model"
  timeout ${T2:-70} $PY benchmarks/attacks.py --study studies/cifar10_fast.yaml "${SETS[@]}" \
    --model preact_resnet18/fgsm_rs --device "$DEVICE" --examples ${ATTACK_EXAMPLES:-2048} --batch ${ATTACK_BATCH:-1024} \
    --precision bf16 --reps ${REPS:-7} 2>&1 | tee "$OUT/attacks.txt"
  elapsed
  echo "== 2b. the same with evaluation.compile (torch.compile for crafting; compile time excluded by the warm-up)"
  timeout ${T3:-120} $PY benchmarks/attacks.py --study studies/cifar10_fast.yaml "${SETS[@]}" \
    --model preact_resnet18/fgsm_rs --device "$DEVICE" --examples ${ATTACK_EXAMPLES:-2048} --batch ${ATTACK_BATCH:-1024} \
    --precision bf16 --reps ${REPS:-7} --compile 2>&1 | tee "$OUT/attacks-compile.txt"
  elapsed

  echo "== 3. probes of studies/cifar10.yaml on ${PROBE_EXAMPLES:-1000} test images vs one PGD-10 pass"
  timeout ${T4:-100} $PY benchmarks/probes.py --study studies/cifar10_fast.yaml "${SETS[@]}" \
    --probes-from studies/cifar10.yaml --examples ${PROBE_EXAMPLES:-1000} --device "$DEVICE" --quick 2>&1 | tee "$OUT/probes.txt"
  elapsed
fi

if [[ $PART == 2 || $PART == all ]]; then
  echo "== 4. cifar10_fast trained in float32 (TF32 convolutions), evaluated on 2,000 test images"
  timeout ${T5:-400} $PY -m workbench.cli run studies/cifar10_fast.yaml "${SETS[@]}" \
    --set train.precision=fp32 --set evaluation.examples=2000 --out "$OUT/fast-fp32" --device "$DEVICE" -q 2>&1 \
    | tee "$OUT/fast-fp32.log" | tail -n 5
  $PY benchmarks/summarize_run.py "$OUT/fast-fp32" 2>&1 | tee "$OUT/fast-fp32-summary.txt"
  elapsed
fi
if [[ $PART == 3 || $PART == all ]]; then
  FOLDER=$DATA
  if [[ -f $DATA ]]; then  # streaming reads folders: extract the tarball once
    FOLDER=$OUT/data-folder
    [[ -d $FOLDER ]] || { mkdir -p "$FOLDER" && tar -xzf "$DATA" -C "$FOLDER"; }
  fi
  echo "== 5. cifar10_fast with data.stream=true (${WORKERS:-8} DataLoader workers), evaluation on ${EVAL_EXAMPLES:-2000} test images"
  timeout ${T6:-300} $PY -m workbench.cli run studies/cifar10_fast.yaml "${SETS[@]}" --set "data.root=$FOLDER" \
    --set data.stream=true --set "data.workers=${WORKERS:-8}" --set "data.decode=${DECODE:-auto}" --set "evaluation.examples=${EVAL_EXAMPLES:-2000}" \
    --out "$OUT/fast-stream" --device "$DEVICE" -q 2>&1 | tee "$OUT/fast-stream.log" | tail -n 5
  $PY benchmarks/summarize_run.py "$OUT/fast-stream" 2>&1 | tee "$OUT/fast-stream-summary.txt"
  [[ -f $OUT/fast-summary.txt ]] && { echo "   in memory (step 1):"; grep -i "images/s\|train" "$OUT/fast-summary.txt" | head -n 4; }
  elapsed
  echo "== 6. benchmarks/data.py: images/s streamed (CPU decode, GPU decode) vs in-memory vs synthetic"
  eval "STREAM_ARGS=(${STREAM_ARGS:-})"
  timeout ${T7:-240} $PY benchmarks/data.py --root "$FOLDER" --device "$DEVICE" --workers "${WORKERS:-8}" "${STREAM_ARGS[@]}" 2>&1 \
    | tee "$OUT/data.txt"
  elapsed
fi
echo "== done in $(( $(date +%s) - t0 )) s"
