#!/usr/bin/env bash
# Issue 6's GPU measurements in one run, for a session that is lent a GPU (about 8 minutes on an
# H100; the device tool's 15 minutes leave room for one rerun):
#   1. the ResNet50 model-only ceiling at 224 px, batch 256, eager bf16 and torch.compile'd
#      (published: about 12,700 and 20,000 img/s on an H100);
#   2. indexing the 9,583 fashion-products photos end to end against that ceiling, with JPEGs
#      decoded in worker processes and on the GPU (nvJPEG), eager and compiled.
# Tables go to stdout and JSON to $OUT. SMOKE=1 runs every step tiny on the CPU, to check the script.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-var/bench/gpu}
IMAGES=${IMAGES:-../shared/data/fashion-products/images}
mkdir -p "$OUT"

if [ "${SMOKE:-0}" = 1 ]; then
  common=(--device cpu --limit 64 --large 0 --workers 1 --batch-size 16)
  resnet=(--model resnet18:none --large 0)
else
  common=(--device cuda --batch-size 256 --workers "$(nproc)" --large 1024 --large-limit 2000)
  resnet=(--model resnet50:none --large 0)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"
fi

step() {  # name, then bench_encode arguments; a failed step is reported and the others still run
  local name=$1; shift
  echo "== $name"
  timeout 300 "$PY" bench/bench_encode.py --images "$IMAGES" "${common[@]}" "$@" --json "$OUT/$name.json"
  local rc=$?
  [ "$rc" -eq 0 ] || echo "!! $name failed (exit $rc)"
}

step resnet50-eager "${resnet[@]}"
step resnet50-compiled "${resnet[@]}" --compile
step lite0-worker-decode
step lite0-device-decode --jpeg-decode device
step lite0-device-decode-compiled --jpeg-decode device --compile
echo "JSON in $OUT"
