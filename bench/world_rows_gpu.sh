#!/usr/bin/env bash
# World benchmark rows, one process per row, all at once: the world model leaves an H200 mostly
# idle (dispatch-bound), so the rows share it. Each process starts from a copy of the committed
# results (docs/world_results/bench/results.json, --append) and writes its row as soon as it is
# scored, so a row cut by the time budget loses only itself. $SIDE, when set, runs beside them
# (e.g. a memory benchmark, whose figures sharing does not change; its timings become upper
# bounds). Merge what comes back with
#   python -m jaxvedit.world.bench --merge docs/world_results/bench/results.json results_*.json \
#       --output-dir docs/world_results/bench
# Usage (repository root): ROWS="lora-edit tokenflow+latent" OUT=runs/rows bash bench/world_rows_gpu.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/world-rows}; BUDGET=${BUDGET:-560}; FRAC=${FRAC:-0.08}; SUITE=${SUITE:-world}
ROWS=${ROWS:?name the rows, e.g. ROWS="lora-edit tokenflow+latent"}
mkdir -p "$OUT" /tmp/logs; : > /tmp/logs/rc.txt
T0=$(date +%s)
i=0
for row in $ROWS; do
  i=$((i + 1)); d=/tmp/bench_rows_$i; mkdir -p "$d"; cp "${BASE:-docs/world_results/bench/results.json}" "$d/results.json"
  # xla attention: the world model's heads are too small for the fused kernels' tiles
  ( JAXVEDIT_ATTENTION=xla XLA_PYTHON_CLIENT_MEM_FRACTION=$FRAC timeout "$BUDGET" \
      python3 -m jaxvedit.world.bench --suite "$SUITE" --append --no-progress --workers 4 \
      --output-dir "$d" --rows "$row" ${BENCH_ARGS:-} > "/tmp/logs/row_$i.log" 2>&1
    echo "$row: rc $? after $(( $(date +%s) - T0 )) s" >> /tmp/logs/rc.txt ) &
done
if [ -n "${SIDE:-}" ]; then
  ( timeout "$BUDGET" bash -c "$SIDE" > /tmp/logs/side.log 2>&1
    echo "side: rc $? after $(( $(date +%s) - T0 )) s" >> /tmp/logs/rc.txt ) &
fi
wait
cat /tmp/logs/rc.txt
for f in /tmp/logs/row_*.log; do grep -v -i warn "$f" | grep "^\[" | tail -3; done
[ -n "${SIDE:-}" ] && grep -v -i warn /tmp/logs/side.log | tail -30
i=0
for row in $ROWS; do
  i=$((i + 1)); [ -f /tmp/bench_rows_$i/results.json ] && cp /tmp/bench_rows_$i/results.json "$OUT/results_$i.json"
done
tar cf "$OUT/logs.tar" -C /tmp/logs .
