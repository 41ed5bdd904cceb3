#!/usr/bin/env bash
# Which part of the GE adapter changes the world edits: the world benchmark's `plain` and `adapter`
# rows under five adapter inference settings (--adapter-tokens all|shared|none, --lora-tau,
# --lora-ratio), one run each, then one table of the `adapter` rows (table.md, from the runs'
# results.json). Usage (repository root): SUITE=world-mini OUT=docs/world_results/adapter_ablation_mini \
#   bash bench/world_adapter_ablation.sh      # about 15 minutes on 2 CPU cores
set -eu
export JAXVEDIT_ATTENTION=xla
SUITE=${SUITE:-world-mini}; OUT=${OUT:-runs/adapter-ablation}
VARIANTS=${VARIANTS:-"all:0.9:0.5 none:0.9:0.5 shared:0.9:0.5 all:0.9:0.0 all:0.0:1.0"}
mkdir -p "$OUT"
for v in $VARIANTS; do
  IFS=: read -r tok tau ratio <<< "$v"
  d="$OUT/tokens-$tok-tau$tau-ratio$ratio"
  [ -f "$d/results.json" ] || python -m jaxvedit.world.bench --suite "$SUITE" --rows plain adapter \
    --adapter-tokens "$tok" --lora-tau "$tau" --lora-ratio "$ratio" --workers 1 --no-progress \
    --output-dir "$d"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
cols = [("psnr", "PSNR"), ("object_iou", "subject IoU"), ("colour_attribute_accuracy", "colour right"),
        ("shape_attribute_accuracy", "shape right"), ("background_attribute_accuracy", "background right"),
        ("background_psnr", "bg PSNR"), ("warp_error_gt", "warp err (GT flow)"), ("flicker", "flicker"),
        ("clip_t", "CLIP-T")]
lines, plain = [], None
for d in sorted(out.glob("tokens-*/results.json")):
    rep = json.loads(d.read_text())
    plain = plain or rep["rows"]["plain"]["summary"]
    a = rep["rows"]["adapter"]
    st = a["adapter_settings"]
    lines.append(f"| adapter, tokens {st['adapter_tokens']}, LoRA t >= {st['lora_tau']} T at ratio {st['lora_ratio']} | "
                 + " | ".join(f"{a['summary'][c]:.3g}" for c, _ in cols) + " |")
head = ["| row | " + " | ".join(n for _, n in cols) + " |", "|" + "---|" * (len(cols) + 1),
        "| plain | " + " | ".join(f"{plain[c]:.3g}" for c, _ in cols) + " |"]
(out / "table.md").write_text(f"World suite `{rep['suite']}` ({rep['videos']} videos x 3 edits, "
                              f"{rep['frames']} frames, {rep['steps']} steps), one run each:\n\n"
                              + "\n".join(head + lines) + "\n")
print((out / "table.md").read_text())
PY
