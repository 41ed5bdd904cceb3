#!/usr/bin/env bash
# The GPU run behind the shipped world GE adapter and the committed world benchmark
# (docs/world.md): render 500 training videos, train the gated LoRA + prompt tokens with
# `python -m jaxvedit.train` on them, then edit the full world suite with every method.
# Usage (from the repository root, on a GPU machine): OUT=runs/world-gpu bash bench/world_gpu.sh
set -u
export PYTHONUNBUFFERED=1 JAXVEDIT_ATTENTION=xla   # small model, short sequences: XLA attention
OUT=${OUT:-runs/world-gpu}; BUDGET=${BUDGET:-520}; mkdir -p "$OUT"
W=jaxvedit/world/pretrained/world-v1
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
python3 -c "from jaxvedit.world.data import write_dataset, training_scenes; \
write_dataset('/tmp/wd', training_scenes(500, start=1_000_000), depth=False, video_format='frames')"
echo "dataset: 500 videos at $(el) s"
timeout 150 python3 -m jaxvedit.train --model $W --data /tmp/wd --output-dir /tmp/ge \
  --resolution 128 --frames 4 --max-frames 16 --steps 1200 --accumulate 1 --batch-size 8 \
  --learning-rate 1e-4 --warmup-steps 100 --checkpoint-every 100000 --log-every 20 --no-progress \
  --feature-taps "up_blocks.1.attentions.*.transformer_blocks.0.attn1" \
                 "up_blocks.2.attentions.*.transformer_blocks.0.attn1" > "$OUT/ge_train.log" 2>&1
echo "GE adapter: rc $? at $(el) s"; grep -v -i warn "$OUT/ge_train.log" | tail -4
tar cf "$OUT/ge.tar" -C /tmp/ge adapter metrics.jsonl loss_curve.png config.json
timeout $(( BUDGET - $(el) )) python3 -m jaxvedit.world.bench --suite world --adapter /tmp/ge/adapter \
  --output-dir /tmp/bench --no-progress > "$OUT/bench.log" 2>&1
echo "bench: rc $? at $(el) s"; grep -v -i warn "$OUT/bench.log" | grep "^\[" | tail -14
tar cf "$OUT/bench.tar" -C /tmp bench
