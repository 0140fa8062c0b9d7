#!/usr/bin/env bash
# The GPU paths in one short script: the paper preset's model on CIFAR-shaped data (bf16 and fp32),
# the paper study's classification runs with their attack evaluation, and NCCL DDP under torchrun.
# Every step has its own time limit and logs to $OUT/gpu_check.log; a failing step does not stop
# the others. Runs on a machine whose python3 holds torch, timm, rich, scipy and matplotlib;
# torchattacks, pytorch-msssim and submitit come as wheels in .whl/ (see the README).
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh          # on the GPU machine
#   SMOKE=1 OUT=/tmp/gpu bash scripts/gpu_check.sh  # a seconds-long dry run of every step (any machine)
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PY:-python3}
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:/tmp/site:${PYTHONPATH:-}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
DATA=${DATA:-/tmp/fashion_as_cifar}
FASHION=${FASHION:-.gpudata/fashion-mnist}
WORK=${WORK:-/tmp/gpu_runs}
rm -rf "$WORK"; mkdir -p "$WORK"

if [ "${SMOKE:-0}" = 1 ]; then   # tiny sizes: checks the script, not the numbers
  SUB="--train-subset 512 --test-subset 256"; EPOCHS=1; BENCH_SUB="--train-subset 512 --test-subset 256"
  ATTACK="--n-examples 64 --reference-examples 16 --square-queries 20 --eps 0,8/255"
else
  SUB=""; EPOCHS=${EPOCHS:-8}; BENCH_SUB=""
  ATTACK="--n-examples 1000 --batch-size 1000 --targets 3 --reference-examples 200 --reference-targets 9 \
          --square-queries 1000 --eps 0,1/255,2/255,4/255,8/255"
fi
DEADLINE=${DEADLINE:-530}   # seconds for all steps; the archive at the end needs a few more
step() {  # step NAME SECONDS COMMAND...: time-limited (and within DEADLINE), logged, never fatal
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - SECONDS)); [ "$left" -lt "$limit" ] && limit=$left
  [ "$limit" -le 5 ] && { echo "=== $name: skipped, out of time"; return; }
  echo; echo "=== $name (limit ${limit}s) $(date +%T)"
  local start=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  echo "=== $name: rc $rc in $((SECONDS - start)) s"
}
SM="$PY -m spatialmix.cli"

step environment 60 bash -c "nvidia-smi -L; $PY -c 'import torch, timm; print(\"torch\", torch.__version__, \"timm\", timm.__version__, \"cuda\", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else \"\")'"
step data 120 $PY scripts/fashion_as_cifar.py "$FASHION" "$DATA"
COMMON="--dataset cifar10 --data-dir $DATA --no-download --model convmixer-256/8 --no-progress"

# bf16 against fp32: one epoch of each mode of the paper model (the first epoch includes warm-up).
for amp in bf16 none; do
  for mode in full chans space; do
    step "train $mode amp=$amp" 120 $SM train $COMMON $BENCH_SUB --mode $mode --amp $amp --epochs 1 \
      --batch-size 512 --lr 0.01 --out "$WORK/speed-$amp-$mode"
  done
done

# NCCL DDP through torchrun (one process per GPU on this machine).
NGPU=$($PY -c 'import torch; print(max(torch.cuda.device_count(), 1))')
step "torchrun nccl ddp ($NGPU processes)" 180 $PY -m torch.distributed.run --standalone --nproc-per-node "$NGPU" \
  -m spatialmix.cli train $COMMON $BENCH_SUB --mode chans --epochs 2 --batch-size 512 --out "$WORK/ddp"

# K seeds of the paper model trained one at a time against one batched model (grouped convolutions).
if [ "${SMOKE:-0}" = 1 ]; then KSEEDS="--models 2 --steps 2 --repeats 1 --width 16 --depth 1 --batch-size 8"
else KSEEDS="--models 2,4,8 --steps 20 --repeats 3 --width 256 --depth 8 --batch-size 512"; fi
step "K seeds batched" 120 $PY benchmarks/batched_models.py --device cuda --in-chans 3 --image-size 32 $KSEEDS

# The paper study's classification runs (fewer epochs and seeds than the preset's 100 x 3).
step "reproduce paper classification" 270 $SM reproduce --preset paper $COMMON $SUB --epochs "$EPOCHS" \
  --seeds 0 1 --studies classification --processes 1 --out "$WORK/paper"
RUNS=$(find "$WORK/paper" -name summary.json -printf '%h\n' 2>/dev/null | sort | head -6)
[ -n "$RUNS" ] && step "attack paper runs" 150 $SM attack $RUNS $ATTACK --data-dir "$DATA" --no-progress
step "verdicts and report" 60 $SM report "$WORK/paper" -o "$WORK/paper/report.html"

# What comes back: the log, and every run's small files (no checkpoints) in one archive.
(cd "$WORK" && find . \( -name '*.json' -o -name '*.md' -o -name '*.png' -o -name '*.html' -o -name '*.log' \) \
  -print0 | tar --null -czf "$OUT/gpu_runs.tar.gz" -T -)
echo "done $(date +%T)"
