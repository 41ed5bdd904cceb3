#!/usr/bin/env bash
# The GPU run behind the shipped world depth ControlNet and world inpainting UNet
# (jaxvedit/world/pretrained/world-v1-depth-controlnet, world-v1-inpaint/unet) and the world
# benchmark rows measured with them, plus the remaining rows of the committed table:
#   job A: fine-tune both from the world pipeline (python -m jaxvedit.world.train_conditioned),
#          then the rows controlnet, lora-edit, adapter+controlnet;
#   job B: the built-in rows in $ROWS_B;   job C: the TokenFlow rows in $ROWS_C.
# The three jobs share the GPU (the world model leaves it mostly idle: dispatch-bound), each in
# its own process with a share of its memory; each appends to its own copy of the committed
# results (docs/world_results/bench/results.json) and writes every row as soon as it is scored,
# so a job cut by the time budget keeps the rows it finished. Merge the three results with
# python -m jaxvedit.world.bench --merge A.json B.json C.json --output-dir docs/world_results/bench
# Usage (repository root, GPU machine): OUT=runs/world-gpu2 bash bench/world_conditioned_gpu.sh
set -u
export PYTHONUNBUFFERED=1 JAXVEDIT_ATTENTION=xla XLA_PYTHON_CLIENT_MEM_FRACTION=0.3
OUT=${OUT:-runs/world-gpu2}; BUDGET=${BUDGET:-575}; mkdir -p "$OUT" /tmp/logs
ROWS_B=${ROWS_B:-"adapter adapter+latent bilateral-features cross-frame adapter+features adapter+cross-frame adapter+latent+cross-frame dape+latent"}
ROWS_C=${ROWS_C:-"tokenflow adapter+tokenflow tokenflow+latent adapter+tokenflow+latent"}
W=$PWD/jaxvedit/world/pretrained/world-v1
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(el) )); }
bench() {  # bench <dir> <log> <args...>
  local d=$1 log=$2; shift 2
  mkdir -p "$d" && cp docs/world_results/bench/results.json "$d/"
  timeout $(left) python3 -m jaxvedit.world.bench --suite world --append --no-progress --workers 5 \
    --output-dir "$d" "$@" > "$log" 2>&1
  echo "bench $d: rc $? at $(el) s"; grep -v -i warn "$log" | grep "^\[" | tail -12
}
job_a() {
  [ -n "${TRAINED:-}" ] || train
  mkdir -p /tmp/inp && cp -r /tmp/cond/export/inpaint/unet /tmp/inp/unet
  for c in vae text_encoder tokenizer scheduler image_encoder; do ln -sfn "$W/$c" /tmp/inp/$c; done
  python3 -c "import json; d=json.load(open('$W/model_index.json')); d['_class_name']='StableDiffusionInpaintPipeline'; json.dump(d, open('/tmp/inp/model_index.json','w'))"
  bench /tmp/bench_a /tmp/logs/bench_a.log --rows controlnet lora-edit adapter+controlnet \
    --controlnet /tmp/cond/export/controlnet --inpaint-model /tmp/inp
}
train() {
  timeout $(( $(left) - 150 )) python3 -m jaxvedit.world.train_conditioned --output-dir /tmp/cond \
    --no-progress --controlnet-seconds ${CN_S:-120} --inpaint-seconds ${IN_S:-140} > /tmp/logs/train.log 2>&1
  echo "train: rc $? at $(el) s"; grep -v -i warn /tmp/logs/train.log | grep "^\[" | tail -8
}
if [ "${TRAIN_FIRST:-0}" = 1 ]; then  # training alone on the GPU (compilation is slow when shared)
  train; TRAINED=1
fi
job_a > /tmp/logs/job_a.txt 2>&1 &
[ -n "$ROWS_B" ] && bench /tmp/bench_b /tmp/logs/bench_b.log --rows $ROWS_B > /tmp/logs/job_b.txt 2>&1 &
[ -n "$ROWS_C" ] && bench /tmp/bench_c /tmp/logs/bench_c.log --rows $ROWS_C > /tmp/logs/job_c.txt 2>&1 &
wait
cat /tmp/logs/job_*.txt; nvidia-smi --query-gpu=name --format=csv,noheader
tar cf "$OUT/controlnet.tar" -C /tmp/cond/export controlnet
tar cf - -C /tmp/cond/export inpaint | split -b 15M - "$OUT/inpaint.tar.part"
(cd /tmp/cond && tar cf /tmp/logs/cond.tar config.json summary.json */metrics.jsonl */loss_curve.png */plan.json)
tar cf "$OUT/logs.tar" -C /tmp/logs .
for j in a b c; do [ -f /tmp/bench_$j/results.json ] && cp /tmp/bench_$j/results.json "$OUT/results_$j.json"; done
